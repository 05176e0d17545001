"""KG files (OpenKE, label TSV) and the neighbourhood index against the reference's adjacency."""

import os

import numpy as np
import pytest

from gmem.errors import GmemError
from gmem.graph import kg

ENTS = ["alice", "bob", "carol", "dave", "erin"]
RELS = ["knows", "likes"]
# (h, r, t)
TRIPLES = [(0, 0, 1), (1, 1, 2), (0, 1, 2), (2, 0, 3), (0, 0, 1), (3, 1, 0), (1, 0, 0)]


def _write(path, lines):
    path.write_text("\n".join(str(x) for x in lines) + "\n")
    return str(path)


def _openke(tmp_path, fmt="htr", triples=TRIPLES):
    _write(tmp_path / "entity2id.txt", [len(ENTS)] + [f"{n}\t{i}" for i, n in enumerate(ENTS)])
    _write(tmp_path / "relation2id.txt", [len(RELS)] + [f"{n}\t{i}" for i, n in enumerate(RELS)])
    rows = [" ".join(str(dict(zip("hrt", t))[c]) for c in fmt) for t in triples]
    _write(tmp_path / "train2id.txt", [len(rows)] + rows)
    return str(tmp_path)


def _reference_adj(triples, n, r, add_inverse):
    """GMT's KGIndex.adj, written as the reference does (Python lists)."""
    adj = [[] for _ in range(n)]
    for h, rel, t in triples:
        adj[h].append((rel, t))
        adj[t].append((rel + r if add_inverse else rel, h))
    return adj


@pytest.mark.parametrize("fmt", ["htr", "hrt", "rth", "thr"])
def test_openke_formats(tmp_path, fmt):
    g = kg.load_openke(_openke(tmp_path, fmt), triple_format=fmt)
    assert g.entities == tuple(ENTS) and g.relations == tuple(RELS)
    np.testing.assert_array_equal(g.triples, np.asarray(TRIPLES))
    assert g.triples.dtype == np.int32


@pytest.mark.parametrize("add_inverse", [False, True])
def test_neighbourhood_matches_reference(tmp_path, add_inverse):
    g = kg.load_openke(_openke(tmp_path), add_inverse=add_inverse)
    idx = kg.NeighbourIndex.build(g)
    ref = _reference_adj(TRIPLES, len(ENTS), len(RELS), add_inverse)
    assert g.num_edge_relations == (4 if add_inverse else 2)
    for e in range(len(ENTS)):
        rel, nbr = idx.neighbours(e)
        assert list(zip(rel.tolist(), nbr.tolist())) == ref[e]
    np.testing.assert_array_equal(idx.degree, [len(a) for a in ref])
    rel, nbr, mask = idx.padded()
    assert rel.shape == (5, max(len(a) for a in ref))
    for e in range(5):
        assert list(zip(rel[e][mask[e]].tolist(), nbr[e][mask[e]].tolist())) == ref[e]
    hist = idx.relation_histogram(np.arange(5))
    for e in range(5):
        np.testing.assert_array_equal(hist[e], np.bincount([x[0] for x in ref[e]],
                                                           minlength=g.num_edge_relations))
    rel2, _, mask2 = idx.padded(max_degree=2)
    assert rel2.shape == (5, 2) and mask2.sum() == sum(min(len(a), 2) for a in ref)


def test_label_tsv(tmp_path):
    rows = [f"{ENTS[h]}\t{RELS[r]}\t{ENTS[t]}" for h, r, t in TRIPLES]
    _write(tmp_path / "train.txt", rows)
    _write(tmp_path / "test.txt", ["erin\tlikes\talice"])
    g, splits = kg.load_label_tsv(str(tmp_path), add_inverse=True)
    assert g.entities == tuple(sorted(ENTS)) and g.relations == tuple(sorted(RELS))
    assert set(splits) == {"train", "test"}
    np.testing.assert_array_equal(g.triples, splits["train"])
    back = [(g.entities[h], g.relations[r], g.entities[t]) for h, r, t in g.triples]
    assert back == [(ENTS[h], RELS[r], ENTS[t]) for h, r, t in TRIPLES]
    assert g.edge_relation_names()[2:] == ["inverse of knows", "inverse of likes"]


@pytest.mark.slow
@pytest.mark.parametrize("name,counts", [("umls", (135, 46, 5216)), ("nations", (14, 55, 1592)),
                                         ("kinships", (104, 25, 8544))])
def test_pykeen_kgs(name, counts):
    import gmem.assets
    g, splits = kg.load_label_tsv(str(gmem.assets.path(name)))
    assert (g.num_entities, g.num_relations, len(g.triples)) == counts
    idx = kg.NeighbourIndex.build(g)
    assert idx.degree.sum() == 2 * counts[2]
    h, r, t = map(int, splits["train"][0])
    assert (r, t) in zip(*(x.tolist() for x in idx.neighbours(h)))


# --- bad files: every one a GmemError naming file and line ---------------------------------


def _bad(tmp_path, name, lines):
    d = _openke(tmp_path)
    _write(tmp_path / name, lines)
    return d


@pytest.mark.parametrize("name,lines,pattern", [
    ("train2id.txt", [2, "0 1 0", "0 1"], r"train2id.txt: line 3: expected 3 columns"),
    ("train2id.txt", [1, "0 7 0"], r"train2id.txt: line 2: tail id 7 out of range \[0, 5\)"),
    ("train2id.txt", [1, "0 1 5"], r"line 2: relation id 5 out of range \[0, 2\)"),
    ("train2id.txt", [1, "-1 1 0"], r"line 2: head id -1 out of range"),
    ("train2id.txt", [1, "0 x 0"], r"line 2: non-integer id"),
    ("train2id.txt", [3, "0 1 0"], r"train2id.txt: line 1: count says 3 triples but the file has 1"),
    ("train2id.txt", ["many", "0 1 0"], r"train2id.txt:1: expected the number of triples"),
    ("entity2id.txt", [2, "a\t0", "b\t2"], r"entity2id.txt: line 3: id 2 out of range \[0, 2\)"),
    ("entity2id.txt", [2, "a\t0", "b\t0"], r"entity2id.txt: line 3: id 0 given twice"),
    ("relation2id.txt", [2, "a\t0", "b c d"], r"relation2id.txt: line 3: expected 2 columns"),
])
def test_bad_openke_files(tmp_path, name, lines, pattern):
    d = _bad(tmp_path, name, lines)
    with pytest.raises(GmemError, match=pattern):
        kg.load_openke(d)


def test_bad_files_all_problems_listed_and_missing(tmp_path):
    d = _bad(tmp_path, "train2id.txt", [3, "0 9 0", "0 1", "0 1 7"])
    with pytest.raises(GmemError) as e:
        kg.load_openke(d)
    assert "line 2" in str(e.value) and "line 3" in str(e.value) and "line 4" in str(e.value)
    os.remove(tmp_path / "relation2id.txt")
    with pytest.raises(GmemError, match="relation2id.txt: file not found"):
        kg.load_openke(d)
    with pytest.raises(GmemError, match="triple_format"):
        kg.read_openke_triples(str(tmp_path / "train2id.txt"), 5, 2, "hxt")


def test_bad_label_files(tmp_path):
    p = _write(tmp_path / "t.tsv", ["alice\tknows\tbob", "alice\thates\tzed", "bob\tknows"])
    with pytest.raises(GmemError) as e:
        kg.read_label_triples(p, {"alice": 0, "bob": 1}, {"knows": 0})
    msg = str(e.value)
    assert msg.startswith(p) and "line 2: unknown relation 'hates', unknown entity 'zed'" in msg
    assert "line 3: expected 3 tab-separated columns" in msg
    with pytest.raises(GmemError, match="no train.txt"):
        kg.load_label_tsv(str(tmp_path))
    with pytest.raises(GmemError, match="folder not found"):
        kg.load_label_tsv(str(tmp_path / "nope"))
