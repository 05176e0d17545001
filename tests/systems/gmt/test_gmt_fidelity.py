"""GMT options that follow the original: an original stage-1 folder as sgm_ckpt, the original
inference protocol beside gmem's, class-balanced max_eval subsets, relation texts and
definitions, the OpenKE triple file and column order, PyTorch-default initialisation."""

import json
import pathlib
import warnings

import jax
import numpy as np
import pytest
import torch

import gmt_reference as ref
from gmem import config as gconfig
from gmem.errors import GmemError
from gmem.graph import relations
from gmem.systems.gmt import GMTSystem
from gmem.systems.gmt import data as D
from gmem.systems.gmt import eval as E
from gmem.systems.gmt import graph as G

CONFIGS = pathlib.Path(__file__).resolve().parents[3] / "configs"


@pytest.fixture(scope="module")
def kg_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("kg")
    rng = np.random.default_rng(1)
    rows = sorted({(h, r, t) for h, r, t in zip(rng.integers(0, 8, 50), rng.integers(0, 3, 50), rng.integers(0, 8, 50))})
    for name, part in (("train", rows[:-10]), ("valid", rows[-10:-5]), ("test", rows[-5:])):
        (d / f"{name}.txt").write_text("".join(f"e{h}\tr_{r}\te{t}\n" for h, r, t in part))
    return d


def make(kg_dir, *over):
    cfg = gconfig.load_config(CONFIGS / "gmt_tiny.yaml", [f"system.kg={kg_dir}", "system.max_train=8",
                                                           "data.seq_len=300", *over])
    return GMTSystem(gconfig.to_object(cfg))


def test_original_stage1_folder(kg_dir, tmp_path):
    """pretrain_gmt.py's output (sgm_state.pth {"sgm": ...} in fp16 + sgm_config.json) as
    system.sgm_ckpt: its settings are applied and its SGM gives the edge states of the loop
    reference on the same weights (values O(1), compared at 1e-5)."""
    probe = make(kg_dir, "system.add_inverse=true")
    kg = probe.kg
    ridx = ref.RefKGIndex(kg.num_entities, kg.num_relations, kg.triples.tolist(), True)
    torch.manual_seed(0)
    sgm = ref.perturb(ref.RefSGM(ridx, 10, 16, 1, 2, 3), 0.3).eval()
    folder = tmp_path / "stage1"
    folder.mkdir()
    torch.save({"sgm": {k: v.half() for k, v in sgm.state_dict().items()}}, folder / "sgm_state.pth")
    (folder / "sgm_config.json").write_text(json.dumps({"graph_dim": 16, "sgm_layers": 1, "sgm_heads": 2, "top_k": 3,
                                                       "dropout": 0.0, "add_inverse": True, "triple_format": "htr"}))
    sgm.load_state_dict({k: v.half().float() for k, v in sgm.state_dict().items()})
    s = make(kg_dir, f"system.sgm_ckpt={folder}")
    assert (s.p.top_k, s.p.sgm_layers, s.p.add_inverse, s.p.graph_dropout, s.gcfg.rel_dim) == (3, 1, True, 0.0, 10)
    f = s.load_base()
    trip = np.asarray(s.splits["test"][:4])
    e = s.edges(trip)
    got = np.asarray(f["table"])[e["edge_rel"], e["edge_nbr"]]
    with torch.no_grad():
        want, mask = sgm(trip.tolist(), s.p.mask_query)
    m = e["edge_mask"].astype(bool)
    assert np.abs(want.numpy()).max() > 0.5
    for i in range(len(trip)):
        np.testing.assert_allclose(got[i][m[i]], want[i][mask[i]].numpy(), atol=1e-5, rtol=1e-5)
    (folder / "sgm_config.json").write_text(json.dumps({"graph_dim": 16, "top_k": 3}))
    with pytest.raises(GmemError, match="system.top_k: 5 here, 3 in the original run"):
        make(kg_dir, f"system.sgm_ckpt={folder}", "system.top_k=5")


def test_protocols(kg_dir, monkeypatch):
    """gmem: max_new_tokens (4 by default), EOS stops, LP misses count; original: 16 tokens, no
    EOS stop, 'true' anywhere, LP samples that parse to nothing skipped."""
    s = make(kg_dir)
    calls = []

    def fake(system, trainable, frozen, records, max_new_tokens, stop_at_eos=True):
        calls.append((max_new_tokens, stop_at_eos))
        return [("It is False, not true" if i % 3 == 0 else "no idea" if i % 3 == 1 else "True") for i in range(len(records))]
    monkeypatch.setattr(E, "generate_answers", fake)
    recs = s.records("test")[:6]
    for proto, n, eos in (("gmem", 4, True), ("original", 16, False)):
        s.p.eval_protocol = proto
        rows, m = E.classify(s, None, None, recs)
        assert calls[-1] == (n, eos)
        gold = [D.parse_classification(r["output"]) for r in recs]
        pred = [1, 0, 1, 1, 0, 1]                                # 'true' anywhere in both
        assert [r["pred"] for r in rows] == pred and m["unparsed"] == 2
        assert m["accuracy"] == pytest.approx(np.mean(np.asarray(pred) == np.asarray(gold)))
    s.p.max_new_tokens = 7
    E.classify(s, None, None, recs)
    assert calls[-1] == (7, False)
    s.p.max_new_tokens = 0
    names = [D.entity_text(n) for n in s.kg.entities]
    monkeypatch.setattr(E, "generate_answers", lambda *a, **k: [names[0], "nothing", names[1]])
    monkeypatch.setattr(E, "lp_records", lambda system, q, k: [
        {"input": "x", "candidates": names[:3], "answers": [names[i]]} for i in (0, 1, 1)])
    for proto, n, mrr in (("gmem", 3, 2 / 3), ("original", 2, 1.0)):   # "nothing": a miss, or skipped
        s.p.eval_protocol = proto
        _, m = E.link_prediction_generated(s, None, None, np.zeros((3, 3), int))
        assert m["n"] == n and m["skipped"] == 3 - n and m["mrr"] == pytest.approx(mrr)


def test_balanced_max_eval_and_class_counts():
    recs = [{"output": "True", "i": i} for i in range(10)] + [{"output": "False", "i": i} for i in range(10, 14)]
    sub = E.balanced_subset(recs, 6, seed=3)
    assert [r["output"] for r in sub].count("True") == 3 and len(sub) == 6
    assert [r["i"] for r in sub] == sorted(r["i"] for r in sub)             # file order kept
    assert sub == E.balanced_subset(recs, 6, seed=3) and sub != E.balanced_subset(recs, 6, seed=4)
    assert [r["output"] for r in E.balanced_subset(recs, 12)].count("False") == 4   # all of the small class
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = E.class_counts(sub, {}, "test")
    assert (m["n_true"], m["n_false"]) == (3, 3)
    with pytest.warns(UserWarning, match="one class"):
        E.class_counts(recs[:5], {}, "test")


def test_relation_texts_definitions_and_opaque_ids(tmp_path, monkeypatch):
    names = ["process_of", "P1412", "member of\tx"]
    assert relations.relation_texts(names, "original") == ["process_of", "P1412", "member"]
    assert relations.relation_texts(names, "readable")[:2] == ["process of", "P1412"]
    (tmp_path / "d.json").write_text(json.dumps({"P1412": "languages spoken, written or signed"}))
    (tmp_path / "d.tsv").write_text("P1412\tlanguages spoken\nnot a row\n")
    assert relations.relation_texts(names, "original", str(tmp_path / "d.json"))[1] == "languages spoken, written or signed"
    assert relations.relation_texts(names, "original", str(tmp_path / "d.tsv"))[1] == "languages spoken"
    (tmp_path / "bad.json").write_text(json.dumps({"P9": "x"}))
    with pytest.raises(GmemError, match="unknown relations \\['P9'\\]"):
        relations.relation_texts(names, "original", str(tmp_path / "bad.json"))
    monkeypatch.setattr(relations, "encode_texts", lambda texts, batch_size=64: np.ones((len(texts), 4), np.float32))
    with pytest.warns(UserWarning, match="1 of 3 relation texts are ids"):
        relations.relation_semantics(relations.relation_texts(names, "original"), "bert")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        relations.relation_semantics(["knows", "likes"], "bert")


def test_triple_file_and_format(tmp_path):
    d = tmp_path / "openke"
    d.mkdir()
    (d / "entity2id.txt").write_text("3\na\t0\nb\t1\nc\t2\n")
    (d / "relation2id.txt").write_text("2\nr0\t0\nr1\t1\n")
    trip = [(0, 1, 2), (2, 0, 1)]                                       # (h, r, t)
    (d / "graph.txt").write_text("2\n" + "".join(f"{h} {r} {t}\n" for h, r, t in trip))         # hrt order
    (d / "test2id.txt").write_text("1\n1 1 0\n")
    kg, splits = D.load_kg(str(d), triple_file="graph.txt", triple_format="hrt")
    np.testing.assert_array_equal(kg.triples, trip)
    np.testing.assert_array_equal(splits["test"], [[1, 1, 0]])
    with pytest.raises(GmemError, match="triple_format"):
        gconfig.load_config(CONFIGS / "gmt_tiny.yaml", ["system.triple_format=hxt"])


def test_torch_default_init():
    """init=torch draws what PyTorch's constructors draw for the original's modules (bounds
    exact, spreads within 15% of the torch modules' own)."""
    cfg = G.GraphMemoryConfig(num_edge_relations=6, rel_dim=48, graph_dim=64, sgm_heads=4, num_memory_tokens=8,
                              memory_heads=4, llm_dim=96)
    enc = G.init_encoder(cfg, jax.random.key(0), 5, "torch")
    torch.manual_seed(0)
    tr = ref.RefEncoder(ref.RefKGIndex(5, 3, [], True), 48, 64, 2, 4, 8, 8, 4, 96)
    sd = {k: v.numpy() for k, v in tr.state_dict().items()}
    d = cfg.graph_dim
    pairs = {"sgm/rel_proj/kernel": sd["sgm.rel_proj.weight"], "proj/kernel": sd["proj.weight"],
             "proj/bias": sd["proj.bias"], "sgm/layers_0/linear2/kernel": sd["sgm.layers.0.linear2.weight"],
             "sgm/layers_0/linear1/bias": sd["sgm.layers.0.linear1.bias"],
             "sgm/layers_0/v_proj/kernel": sd["sgm.layers.0.attn.in_proj_weight"][2 * d:],
             "sgm/layers_0/out_proj/kernel": sd["sgm.layers.0.attn.out_proj.weight"],
             "tokenizer/q_proj/kernel": sd["tokenizer.attn.in_proj_weight"][:d],
             "tokenizer/out_proj/bias": sd["tokenizer.attn.out_proj.bias"]}
    for path, want in pairs.items():
        node = enc
        for k in path.split("/"):
            node = node[k]
        got = np.asarray(node)
        assert np.abs(got).max() <= np.abs(want).max() * 1.05 + 1e-12, path
        assert got.std() == pytest.approx(want.std(), rel=0.15, abs=1e-9), path
    np.testing.assert_array_equal(np.asarray(enc["sgm"]["layers_0"]["norm1"]["scale"]), 1.0)
    gm = G.init_encoder(cfg, jax.random.key(0), 5, "gmem")
    assert float(np.abs(np.asarray(gm["proj"]["bias"])).max()) == 0.0
