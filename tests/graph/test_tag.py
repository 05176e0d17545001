"""The mention-graph TAG: each mention rule on hand-made texts, determinism, splits, and a few
hand-checked edges of the embedded Wikipedia graph."""

import numpy as np
import pytest

from gmem.errors import GmemError
from gmem.graph import tag

TITLES = ["Academic art", "Paris", "Empire", "Roman Empire", "Mercury (planet)", "Fox",
          "Song", "Battle", "Lake Chad", "Chad"]
TEXTS = [
    "Academic art was taught in Paris. It is academic art.",            # -> Paris (no self)
    "Paris is a city. Its Academic art schools, and academic art too.",  # -> Academic art
    "The Roman Empire ruled. Empire is a word here.",                   # -> Roman Empire only
    "The Roman Empire was an empire in the Battle of Actium era.",      # none ("Battle of")
    "Mercury orbits. A Fox ran, a song played, a Song too.",            # none (rules 1, 2, 6)
    "A Battle took place near Lake Chad, not in Chad Smith's house.",   # -> Battle, Lake Chad
    "song song song Song. The lake Chad and Lake Chad.",                # -> Lake Chad
    "Battle.", "Lake Chad is in Africa.", "Chad borders Lake Chad and Paris.",  # -> Lake Chad, Paris
]
LABELS = ["Arts", "Geo", "History", "History", "Sci", "Bio", "Arts", "History", "Geo", "Geo"]
EXPECTED = {("Academic art", "Paris"), ("Paris", "Academic art"), ("Empire", "Roman Empire"),
            ("Fox", "Battle"), ("Fox", "Lake Chad"), ("Song", "Lake Chad"),
            ("Chad", "Lake Chad"), ("Chad", "Paris")}


def _edges(**rule):
    """Edges under a rule; the hub cap (2% by default) is off unless given: 10 texts."""
    g = tag.mention_graph(TITLES, TEXTS, LABELS, rule=tag.MentionRule(**{"max_fraction": 1.0, **rule}))
    return {(TITLES[a], TITLES[b]) for a, b in g.graph.edges()}, g


def test_mention_rules_on_hand_made_texts():
    """Rules 1-6 of gmem.graph.tag on texts where each one decides (comments in TEXTS):
    a parenthetical title, a short title, a common word ("Song": lower-case more often), a
    sentence-initial single word, a longer name ("Roman Empire", "Chad Smith", "Lake Chad"),
    "Battle of", first-letter case for multi-word titles."""
    edges, g = _edges()
    assert edges == EXPECTED
    i = g.graph.edges().index((TITLES.index("Chad"), TITLES.index("Paris")))
    assert g.graph.edge_texts[i] == "Chad mentions Paris."
    assert g.label_names == ("Arts", "Bio", "Geo", "History", "Sci")
    assert [g.label_names[k] for k in g.labels] == LABELS


def test_frequent_titles_are_dropped():
    """Lake Chad is mentioned by 3 of 10 texts: a cap of 25% drops every edge into it."""
    edges, _ = _edges(max_fraction=0.25)
    assert edges == {e for e in EXPECTED if e[1] != "Lake Chad"}


def test_short_titles_rule_is_configurable():
    edges, _ = _edges(min_chars=3)
    assert edges == EXPECTED | {("Mercury (planet)", "Fox")}


def test_deterministic_no_self_edges_and_seeded_disjoint_splits():
    a = tag.mention_graph(TITLES, TEXTS, LABELS, seed=3, fractions=(0.3, 0.3))
    b = tag.mention_graph(TITLES, TEXTS, LABELS, seed=3, fractions=(0.3, 0.3))
    assert a.graph.edges() == b.graph.edges() and a.graph.edge_texts == b.graph.edge_texts
    assert (a.split == b.split).all()
    assert all(s != r for s, r in a.graph.edges())
    parts = [set(a.nodes_in(s).tolist()) for s in tag.SPLITS]
    assert sum(map(len, parts)) == len(TITLES) and set().union(*parts) == set(range(len(TITLES)))
    others = [tag.mention_graph(TITLES, TEXTS, LABELS, seed=s, fractions=(0.3, 0.3)).split
              for s in range(4, 8)]
    assert any((o != a.split).any() for o in others)
    with pytest.raises(GmemError, match="not one of"):
        a.nodes_in("dev")
    with pytest.raises(GmemError, match="'Paris' appears more than once"):
        tag.mention_graph(["Paris", "Paris"], ["a", "b"], ["x", "y"])


@pytest.mark.slow
def test_embedded_wikipedia_graph():
    g = tag.wiki_tag()
    assert g.num_nodes == 9033 and len(g.label_names) == 11 and "Uncategorized" not in g.label_names
    assert 8000 < g.graph.num_edges < 14000
    edges = set(g.graph.edges())
    assert len(edges) == g.graph.num_edges and all(s != r for s, r in edges)
    # Hand-checked against the summaries: each left text names the right title.
    for a, b in [("Moby-Dick", "Herman Melville"), ("Tenzing Norgay", "Mount Everest"),
                 ("Stephen Hawking", "University of Cambridge"), ("Lithuania", "Latvia"),
                 ("Amsterdam", "Netherlands")]:
        ia, ib = g.node(a), g.node(b)
        assert b in g.texts[ia] and (ia, ib) in edges, (a, b)
        assert g.graph.edge_texts[g.graph.edges().index((ia, ib))] == f"{a} mentions {b}."
    # "Republic of Albania" does not mention the article "Republic".
    assert (g.node("Albania"), g.node("Republic")) not in edges
    # Splits: ~80/10/10, disjoint, the same for the same seed, different for another.
    sizes = [len(g.nodes_in(s)) for s in tag.SPLITS]
    assert sum(sizes) == g.num_nodes and all(abs(s / g.num_nodes - f) < 0.02
                                             for s, f in zip(sizes, (0.8, 0.1, 0.1)))
    assert tag.split_of("Moby-Dick", 0) == g.split[g.node("Moby-Dick")]
    other = np.asarray([tag.split_of(t, 1) for t in g.titles])
    assert (other != g.split).mean() > 0.1
