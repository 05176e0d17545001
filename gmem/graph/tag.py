"""Text-attributed graphs (TAGs): articles as nodes with text and a topic label, edges where one
article's text mentions another's title.

`wiki_tag()` builds one from the embedded Wikipedia lead summaries (gmem.assets
"wiki-summaries-en": 10,033 articles, 12 topics). `mention_graph()` builds one from any titled
texts. An edge A -> B with text "A mentions B." means A's text mentions B's title; messages then
flow from the mentioning article to the mentioned one (`TextGraph.with_reverse_edges` gives the
undirected view the task samplers use).

Mention rule (`MentionRule`; every part is there to drop generic or ambiguous matches):
 1. Titles with a parenthetical qualifier ("Mercury (planet)") are never matched: the bare word
    is ambiguous by definition.
 2. Titles shorter than `min_chars` (4) are never matched ("Ur", "Fox", "HIV").
 3. Matches are whole tokens (words and single punctuation marks): word boundaries both sides.
 4. Case-aware: a multi-word title matches with its first letter in either case and the rest
    exactly ("academic art" matches "Academic art"); a single-word title matches only in its own
    case and not at the start of a sentence, where capitals say nothing.
 5. Not part of a longer name: the token before the match (unless the match or that token
    starts a sentence) and the token after it must not be capitalised, and a single-word match followed by "of" is dropped
    ("Roman Empire", "Battle of Hastings", "Republic of Albania" do not mention "Empire",
    "Battle", "Republic").
 6. A single-word title whose lower-case form occurs (mid-sentence) more often in the corpus
    than its own form is a common word ("Song", "Father", "Apple") and is never matched.
 7. A title mentioned by more than `max_fraction` (2%) of all articles is a hub and dropped.
 8. The longest match wins: a word inside a matched multi-word title ("Chad" in "Lake Chad")
    is not also a mention of the shorter title.
 9. No self-mentions; one edge per ordered pair, however often it is mentioned.

Splits are by node: a seeded hash of the title puts each article in train/val/test, so an
article's split does not depend on the other articles.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import pathlib
import re
from typing import Sequence

import numpy as np

import gmem.assets
from gmem.errors import GmemError
from gmem.graph.text_graph import TextGraph

SPLITS = ("train", "val", "test")
_TOKEN = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
_SENTENCE_END = frozenset(".!?")
_QUOTES = frozenset("\"“‘'")


@dataclasses.dataclass(frozen=True)
class MentionRule:
    """Which title matches count as mentions (see the module docstring)."""

    min_chars: int = 4
    max_fraction: float = 0.02


@dataclasses.dataclass(frozen=True)
class TextAttributedGraph:
    """Articles with text and a label, and the mention graph over them.

    titles, texts, labels [N] (int ids into label_names), split [N] (0 train, 1 val, 2 test),
    graph: the TextGraph (node_texts = texts, directed mention edges with their texts).
    """

    titles: tuple[str, ...]
    texts: tuple[str, ...]
    labels: np.ndarray
    label_names: tuple[str, ...]
    split: np.ndarray
    graph: TextGraph

    @property
    def num_nodes(self) -> int:
        return len(self.titles)

    def nodes_in(self, split: str) -> np.ndarray:
        """Node ids of one split ('train', 'val' or 'test'), ascending."""
        if split not in SPLITS:
            raise GmemError(f"tag split: {split!r} is not one of {SPLITS}")
        return np.flatnonzero(self.split == SPLITS.index(split))

    def node(self, title: str) -> int:
        """Node id of an article by title."""
        try:
            return self.titles.index(title)
        except ValueError:
            raise GmemError(f"tag: no article titled {title!r}") from None


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _lower_first(w: str) -> str:
    return w[:1].lower() + w[1:]


def _capitalised(w: str) -> bool:
    return w[:1].isupper()


def _title_keys(titles: Sequence[str], corpus: list[list[str]], rule: MentionRule
                ) -> dict[tuple[str, ...], list[int]]:
    """Token key -> article ids, for the titles that rules 1, 2 and 6 allow."""
    mid = collections.Counter(w for tk in corpus for p, w in enumerate(tk)
                              if p > 0 and tk[p - 1] not in _SENTENCE_END)
    keys: dict[tuple[str, ...], list[int]] = {}
    for i, title in enumerate(titles):
        if "(" in title or len(title) < rule.min_chars:
            continue
        tk = tuple(tokens(title))
        if len(tk) == 1:
            w = tk[0]
            if w.lower() != w and mid[w.lower()] > mid[w]:
                continue
            key = tk
        else:
            key = (_lower_first(tk[0]),) + tk[1:]
        keys.setdefault(key, []).append(i)
    return keys


def _mentions_in(tk: list[str], keys: dict, first: set, longest: int) -> set[tuple[str, ...]]:
    """Title keys mentioned in one tokenised text (rules 3-5 and 8)."""
    starts = [p == 0 or tk[p - 1] in _SENTENCE_END or tk[p - 1] in _QUOTES for p in range(len(tk))]
    found = set()
    covered_to = 0   # tokens before this index lie inside a multi-word title match
    for p, w in enumerate(tk):
        start = starts[p]
        covered_to_before = covered_to
        # A capitalised word before the match makes it part of a longer name, unless that word
        # is capitalised only because it starts a sentence ("Its Academic art ...").
        if not start and _capitalised(tk[p - 1]) and not starts[p - 1]:
            continue
        cands = []
        w1 = _lower_first(w)
        if w1 in first:
            for n in range(2, min(longest, len(tk) - p) + 1):
                key = (w1,) + tuple(tk[p + 1:p + n])
                if key in keys:
                    cands.append(key)
                    covered_to = max(covered_to, p + n)
        if not start and (w,) in keys and p >= covered_to_before:
            cands.append((w,))
        for key in cands:
            after = tk[p + len(key)] if p + len(key) < len(tk) else ""
            if _capitalised(after) or (len(key) == 1 and after == "of"):
                continue
            found.add(key)
    return found


def mention_edges(titles: Sequence[str], texts: Sequence[str],
                  rule: MentionRule = MentionRule()) -> list[tuple[int, int]]:
    """Sorted (a, b) pairs: article a's text mentions article b's title (module docstring)."""
    corpus = [tokens(t) for t in texts]
    keys = _title_keys(titles, corpus, rule)
    first = {k[0] for k in keys if len(k) > 1}
    longest = max((len(k) for k in keys), default=1)
    mentioned_by: dict[int, set[int]] = collections.defaultdict(set)
    for a, tk in enumerate(corpus):
        for key in _mentions_in(tk, keys, first, longest):
            for b in keys[key]:
                if b != a:
                    mentioned_by[b].add(a)
    cap = rule.max_fraction * len(titles)
    return sorted((a, b) for b, srcs in mentioned_by.items() if len(srcs) <= cap for a in srcs)


def split_of(key: str, seed: int, fractions: tuple[float, float] = (0.1, 0.1)) -> int:
    """0 train / 1 val / 2 test from a seeded hash of key: u < test -> 2, u < test+val -> 1."""
    u = int.from_bytes(hashlib.sha256(f"{seed}/{key}".encode()).digest()[:8], "big") / 2.0 ** 64
    val, test = fractions
    return 2 if u < test else 1 if u < test + val else 0


def mention_graph(titles: Sequence[str], texts: Sequence[str], labels: Sequence[str],
                  seed: int = 0, rule: MentionRule = MentionRule(),
                  fractions: tuple[float, float] = (0.1, 0.1)) -> TextAttributedGraph:
    """A TAG from titled, labelled texts. fractions = (val, test) shares of the nodes."""
    if not (len(titles) == len(texts) == len(labels)):
        raise GmemError("mention_graph: titles, texts and labels differ in length")
    if len(set(titles)) != len(titles):
        dup = collections.Counter(titles).most_common(1)[0][0]
        raise GmemError(f"mention_graph: title {dup!r} appears more than once")
    names = tuple(sorted(set(labels)))
    edges = mention_edges(titles, texts, rule)
    graph = TextGraph.build(texts, edges if edges else np.zeros((0, 2), np.int64),
                            [f"{titles[a]} mentions {titles[b]}." for a, b in edges], "mention_graph")
    return TextAttributedGraph(
        titles=tuple(titles), texts=tuple(texts),
        labels=np.asarray([names.index(lab) for lab in labels], np.int64), label_names=names,
        split=np.asarray([split_of(t, seed, fractions) for t in titles], np.int8), graph=graph)


def load_wiki_summaries(drop_topics: Sequence[str] = ("Uncategorized",)
                        ) -> tuple[list[str], list[str], list[str]]:
    """(titles, texts, topics) of the embedded summaries with text and a topic, in file order.
    "Uncategorized" (1,000 articles) is not a topic, so it is dropped by default."""
    rows = json.loads(pathlib.Path(gmem.assets.path("wiki-summaries-en")).read_text()).values()
    rows = [r for r in rows if (r.get("extract") or "").strip() and r.get("topic")
            and r["topic"] not in drop_topics]
    return ([r["title"] for r in rows], [r["extract"].strip() for r in rows],
            [r["topic"] for r in rows])


@functools.lru_cache(maxsize=4)
def wiki_tag(seed: int = 0, rule: MentionRule = MentionRule(),
             fractions: tuple[float, float] = (0.1, 0.1)) -> TextAttributedGraph:
    """The TAG of the embedded Wikipedia summaries (9,033 articles, 11 topics; a few seconds
    to build, cached per process)."""
    titles, texts, topics = load_wiki_summaries()
    return mention_graph(titles, texts, topics, seed, rule, fractions)
