"""GMT data: balanced/filtered/seeded triple-classification sets, records, packing (loss on the
response only vs train_on_inputs), answer parsing."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gmem.errors import GmemError
from gmem.graph.kg import KG
from gmem.systems.gmt import data as D
from gmem.systems.gmt import graph as G


def tiny_kg(n_ent=12, n_rel=3, n=40, seed=0, add_inverse=False):
    rng = np.random.default_rng(seed)
    trip = np.unique(np.stack([rng.integers(0, n_ent, n), rng.integers(0, n_rel, n),
                               rng.integers(0, n_ent, n)], 1), axis=0).astype(np.int32)
    kg = KG(tuple(f"ent_{i}" for i in range(n_ent)), tuple(f"rel_{j}" for j in range(n_rel)), trip, add_inverse)
    return kg, trip


def test_classification_set_balanced_filtered_seeded():
    kg, trip = tiny_kg()
    known = trip
    t1, y1 = D.classification_set(trip, kg.num_entities, known, seed=3, num_relations=3)
    t2, y2 = D.classification_set(trip, kg.num_entities, known, seed=3, num_relations=3)
    t3, _ = D.classification_set(trip, kg.num_entities, known, seed=4, num_relations=3)
    assert (y1 == 1).sum() == (y1 == 0).sum() == len(trip)
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(t1, t3)
    keys = {tuple(x) for x in known.tolist()}
    neg, pos = t1[y1 == 0], t1[y1 == 1]
    assert not any(tuple(x) in keys for x in neg.tolist())          # filtered
    np.testing.assert_array_equal(neg[:, 1], pos[:, 1])              # relation kept
    assert ((neg[:, 0] == pos[:, 0]) | (neg[:, 2] == pos[:, 2])).all()   # head or tail changed
    ts, ys = D.classification_set(trip, kg.num_entities, known, seed=3, num_relations=3, shuffle=True)
    assert sorted(map(tuple, ts.tolist())) == sorted(map(tuple, t1.tolist())) and ys.sum() == y1.sum()


def test_corrupt_unfiltered_keeps_known_sometimes():
    kg, trip = tiny_kg(n_ent=3, n=30)
    rng = np.random.default_rng(0)
    neg = D.corrupt(trip, 3, rng, k=64)
    keys = {tuple(x) for x in trip.tolist()}
    assert neg.shape == (len(trip), 64, 3)
    assert any(tuple(x) in keys for x in neg.reshape(-1, 3).tolist())   # GMT does not filter
    kg, trip = tiny_kg(n_ent=6, n=30)
    keys = {tuple(x) for x in trip.tolist()}
    negf = D.corrupt(trip, 6, np.random.default_rng(0), k=8, known=trip, num_relations=3)
    assert all(tuple(x) not in keys for x in negf.reshape(-1, 3).tolist())


def test_records_prompt_and_pack_masks():
    kg, trip = tiny_kg()
    recs = D.classification_records(kg, trip[:2], np.asarray([1, 0]))
    assert recs[0]["output"] == "True" and recs[1]["output"] == "False"
    assert recs[0]["embedding_ids"] == trip[0].tolist()
    text = D.prompt_text(recs[0])
    assert text.startswith("Below is an instruction") and text.endswith("### Response:\n")
    assert "( ent " in recs[0]["input"]

    class Tok:
        def encode(self, s, add_special_tokens=True):
            return [1] + [ord(c) for c in s]
    enc = D.encode_records(Tok(), recs)
    ids, att, lm = D.pack(enc, 512, 0, train_on_inputs=False)
    full, plen = enc[0]
    assert lm[0].sum() == len(full) - plen == len("True")
    assert att[0].sum() == len(full) and att[0, -1] == 1 and att[0, 0] == 0     # left padded
    _, _, lm2 = D.pack(enc, 512, 0, train_on_inputs=True)
    assert lm2[0].sum() == len(full) - 1            # the first token has no context
    np.testing.assert_array_equal(lm2 * lm, lm)


@pytest.mark.parametrize("prefix", [0, 3])
def test_trim_width_drops_only_shared_pad_columns(prefix):
    enc = [([1, 2, 3, 7, 8], 4), ([1, 2, 3, 9, 9, 9, 5], 6), ([1, 2, 3, 4], 3)]
    ids, att, lm = D.pack(enc, 16, 0, False, prefix)
    edges = np.arange(6).reshape(3, 2)
    out = D.trim_width({"input_ids": ids, "attention_mask": att, "loss_mask": lm, "edge_rel": edges}, 4, prefix)
    assert out["input_ids"].shape == (3, 8)                 # longest row 7 -> 8
    np.testing.assert_array_equal(out["edge_rel"], edges)
    # Every row keeps its real tokens and targets, in order; the prefix stays in front and
    # the rest at the right end (positions count real tokens, so they do not change).
    for i in range(3):
        keep_old, keep_new = att[i] == 1, out["attention_mask"][i] == 1
        np.testing.assert_array_equal(out["input_ids"][i][keep_new], ids[i][keep_old])
        np.testing.assert_array_equal(out["loss_mask"][i][keep_new], lm[i][keep_old])
        np.testing.assert_array_equal(out["input_ids"][i, -4:], ids[i, -4:])
    np.testing.assert_array_equal(out["input_ids"][:, :prefix], ids[:, :prefix])
    np.testing.assert_array_equal(np.sort(out["attention_mask"].sum(1)), np.sort(att.sum(1)))
    np.testing.assert_array_equal(out["loss_mask"].sum(1), lm.sum(1))
    assert D.trim_width({"attention_mask": att}, 32, prefix)["attention_mask"].shape == (3, 16)   # never wider


def test_load_records_json_jsonl_and_errors(tmp_path):
    rec = {"instruction": "i", "input": "x", "output": "True", "embedding_ids": [1, 0, 2]}
    (tmp_path / "a.json").write_text(json.dumps([rec, rec]))
    (tmp_path / "b.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps(rec) + "\n")
    assert D.load_records(str(tmp_path / "a.json")) == [rec, rec]
    assert D.load_records(str(tmp_path / "b.jsonl")) == [rec, rec]
    (tmp_path / "c.json").write_text(json.dumps([{"instruction": "i", "output": 1, "embedding_ids": [1]}]))
    with pytest.raises(GmemError, match="c.json.*output.*embedding_ids"):
        D.load_records(str(tmp_path / "c.json"))
    with pytest.raises(GmemError, match="out of range"):
        D.check_ids([rec], 2, 1, "x.json")


def test_parse_answers():
    assert D.parse_classification(" True") == 1
    assert D.parse_classification("false. it is not TRUE") == 1     # GMT's rule: 'true' anywhere
    assert D.parse_classification("False") == 0
    cands = ["Paris", "London", "New York"]
    assert D.parse_ranked_list("1. london\n2) \"Paris\"; new york city", cands) == ["London", "Paris", "New York"]
    assert D.parse_ranked_list("no idea", cands) == []
    assert D.rank_of([], ["Paris"]) == float("inf")
    assert D.rank_of(["London", "Paris"], ["paris"]) == 2
    m = D.ranking_metrics([1, 2, float("inf"), 11])
    assert m["n"] == 4 and m["hits@1"] == 0.25 and m["hits@3"] == 0.5 and m["hits@10"] == 0.5
    assert m["mrr"] == pytest.approx((1 + 0.5 + 0 + 1 / 11) / 4)
    c = D.classification_metrics([1, 1, 0, 0], [1, 0, 1, 0])
    assert c["accuracy"] == 0.5 and c["precision"] == 0.5 and c["recall"] == 0.5 and c["f1"] == 0.5


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["Paris", "London", "Rome"]), min_size=0, max_size=5),
       st.sampled_from(["\n", "; ", ", "]))
def test_parse_ranked_list_roundtrip(items, sep):
    text = sep.join(f"{i + 1}. {x}" for i, x in enumerate(items))
    want = list(dict.fromkeys(items))
    assert D.parse_ranked_list(text, ["Paris", "London", "Rome"]) == want


def test_distmult_checks_triples_at_trace_time():
    with pytest.raises(AssertionError, match="dimension"):                # triples are (h, r, t)
        G.distmult(np.zeros((4, 8)), np.zeros((3, 8)), np.zeros((2, 2), np.int32))
