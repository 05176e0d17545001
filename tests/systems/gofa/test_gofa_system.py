"""The gofa_compressor and gofa systems on tiny random LLaMAs through gmem.train: the
compressor run becomes GOFA's frozen compressor, a pretraining run resumes and seeds instruction
tuning, infer answers a user's graph file, batches are deterministic and bucketed, training
lowers the loss, bad graphs get one line."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gmem import config as gconfig
from gmem.errors import GmemError
from gmem.systems.gofa import GOFASystem
from gmem.systems.gofa import evaluation as E
from gmem.systems.gofa.base import read_run
from gmem.train.infer import run_inference
from gmem.train.loop import train

CONFIGS = pathlib.Path(__file__).resolve().parents[3] / "configs"
INSTRUCT = ["system.phase=instruct", "adapters=[{name: encadapt, rank: 4, alpha: 8.0}, "
            "{name: default, rank: 4, alpha: 8.0}]"]


def _cfg(name, *over):
    return gconfig.to_object(gconfig.load_config(CONFIGS / name, list(over)))


def _train(cfg, log=lambda *a: None):
    """One device: GOFA's batch is one graph (the suite runs on 8 virtual devices)."""
    from gmem.train.sharding import make_mesh
    return train(cfg, mesh=make_mesh(devices=jax.devices()[:1]), log=log)


# infer.py's mesh takes every device; a batch size they divide (unused by inference itself).
INFER = ["data.batch_size=8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("gofa_runs")
    comp, pre = d / "compressor", d / "pretrain"
    _train(_cfg("gofa_compressor_tiny.yaml", f"train.run_dir={comp}", "train.steps=2", "checkpoint.every=2"))
    s = _train(_cfg("gofa_tiny.yaml", f"train.run_dir={pre}", f"system.compressor_ckpt={comp}", "train.steps=2",
                    "checkpoint.every=2"))
    return {"compressor": comp, "pretrain": pre, "losses": s["losses"], "dir": d}


def test_compressor_run_is_gofas_frozen_compressor(runs):
    _, want, _ = read_run(str(runs["compressor"]), "test")
    s = GOFASystem(_cfg("gofa_tiny.yaml", f"system.compressor_ckpt={runs['compressor']}"), load_data=False)
    base = s.load_base()
    np.testing.assert_array_equal(np.asarray(base["memory_table"]), want["memory_table"])
    got = jax.tree_util.tree_leaves(base["encadapt"])
    assert len(got) == len(jax.tree_util.tree_leaves(want["encadapt"])) > 0
    for a, b in zip(got, jax.tree_util.tree_leaves(want["encadapt"])):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert all(np.isfinite(runs["losses"]))
    with pytest.raises(GmemError, match="is a 'gofa' run, not gofa_compressor"):
        GOFASystem(_cfg("gofa_tiny.yaml", f"system.compressor_ckpt={runs['pretrain']}"), load_data=False).load_base()


def test_pretraining_resumes_and_seeds_instruction_tuning(runs):
    logs = []
    cfg = _cfg("gofa_tiny.yaml", f"train.run_dir={runs['pretrain']}", f"system.compressor_ckpt={runs['compressor']}",
               "train.steps=3", "checkpoint.every=2")
    s = _train(cfg, log=logs.append)
    assert s["step"] == 3 and any("resumed from" in m and "/2" in m for m in logs)
    _, pre, _ = read_run(str(runs["pretrain"]), "test")
    inst = GOFASystem(_cfg("gofa_tiny.yaml", f"system.init_ckpt={runs['pretrain']}",
                           f"system.compressor_ckpt={runs['compressor']}", *INSTRUCT), load_data=False)
    t = inst.init_trainable(inst.load_base(), jax.random.PRNGKey(3))
    for a, b in zip(jax.tree_util.tree_leaves(t["gnn"]), jax.tree_util.tree_leaves(pre["gnn"])):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert "default" in t and not np.asarray(jax.tree_util.tree_leaves(t["default"])[1]).any()   # fresh B = 0


SAMPLE = {"node": {"0": "Write a short note about the river Thames.",
                   "1": "The Thames flows through London into the North Sea.",
                   "2": "Which sea does it flow into?"},
          "edge": [{"source": 0, "target": 1, "relation": {"content": "Target sentence answer the instruction."}},
                   {"source": 0, "target": 2, "relation": {"content": "This edge connects the nodes in graph to a prompt node."}},
                   {"source": 1, "target": 2, "relation": {"content": "This edge connects the nodes in graph to a prompt node."}},
                   {"source": 2, "target": 0, "relation": {"content": "This edge connects the prompt node to a node in the graph."}},
                   {"source": 2, "target": 1, "relation": {"content": "This edge connects the prompt node to a node in the graph."}}],
          "question": [2], "complete": [1]}


def test_infer_answers_a_user_graph(runs, tmp_path):
    f = tmp_path / "sample_graph.json"
    f.write_text(json.dumps(SAMPLE))
    res = run_inference(runs["pretrain"], tmp_path / "out", [f"system.graph={f}", *INFER])
    rows = res["predictions"]
    assert [r["node"] for r in rows] == [2, 1] and rows[0]["prompt"] == SAMPLE["node"]["2"]
    assert rows[1]["prompt"] == "complete node 1" and all(isinstance(r["generation"], str) for r in rows)
    assert (tmp_path / "out" / "predictions.jsonl").is_file() and res["metrics"]["answers"] == 2.0
    big = dict(SAMPLE, node={str(i): f"text {i}" for i in range(12)}, edge=[], question=[0], complete=[])
    f.write_text(json.dumps(big))
    with pytest.raises(GmemError, match=r"sample_graph.json: 12 nodes exceed the largest bucket 8 \(buckets.nodes"):
        run_inference(runs["pretrain"], tmp_path / "out", [f"system.graph={f}", *INFER])


@pytest.fixture(scope="module")
def tiny():
    return GOFASystem(_cfg("gofa_tiny.yaml", *INSTRUCT))


def test_batches_are_deterministic_and_bucketed(tiny):
    a, b = tiny.batch(5), tiny.batch(5)
    assert sorted(a) == sorted(tiny.batch_shapes())
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert a[k].shape == tiny.batch_shapes()[k].shape, k        # the tiny config has one bucket a field
    assert not all(np.array_equal(a[k], tiny.batch(6)[k]) for k in a)
    recs = tiny.records(5)
    assert all(r.task in ("topic", "link") for r in recs) and all(t.node == r.graph.num_nodes - 1
                                                                 for r in recs for t in r.targets)


def test_training_lowers_the_loss(tiny):
    """Twenty Adam steps on one batch (GNN + decoder LoRA) bring its loss down, every step (a
    random 2-layer model over 260 byte ids: it starts at ~log 260 and moves slowly)."""
    base = tiny.load_base()
    t = tiny.init_trainable(base, jax.random.PRNGKey(0))
    batch = {k: jnp.asarray(v) for k, v in tiny.batch(0).items()}
    opt = optax.adam(3e-2)

    @jax.jit
    def step(t, s):
        (l, _), g = jax.value_and_grad(lambda t: tiny.loss(t, base, batch, None), has_aux=True)(t)
        u, s = opt.update(g, s, t)
        return optax.apply_updates(t, u), s, l
    s, losses = opt.init(t), []
    for _ in range(20):
        t, s, loss = step(t, s)
        losses.append(float(loss))
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0] - 0.2, losses


def test_baseline_prompts_hold_the_texts(tiny):
    rec = tiny.records(1)[0]
    tg = rec.targets[0]
    nodes = E.question_nodes(rec, tg.node)
    assert nodes and tg.node not in nodes
    tiny.p.baseline = "text"
    text = tiny.tokenizer.decode(E.baseline_prompt(tiny, rec, tg))
    tiny.p.baseline = "neighbours"
    full = tiny.tokenizer.decode(E.baseline_prompt(tiny, rec, tg))
    tiny.p.baseline = "none"
    assert rec.graph.node_texts[nodes[0]][:20] in text and tg.question[:40] in text and text.endswith("\n")
    assert all(t[:20] in full for v, t in enumerate(rec.graph.node_texts) if v != tg.node)
