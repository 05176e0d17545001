"""GMT system on a tiny random LLaMA + a tiny KG: loss on the response only vs train_on_inputs
(against a brute-force CE over full logits), the system's graph memory vs the loop reference
(gmt_reference) with mask_query on and off,
candidate scoring vs a brute-force loop, stage-1 and stage-2 steps reduce the loss."""

import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gmem import config as gconfig
import gmt_reference as ref
from gmem.systems.gmt import eval as E
from gmem.systems.gmt import GMTStage1System, GMTSystem
from gmem.train import sharding as shd
from gmem.errors import GmemError
from gmem.train.loop import make_plan

CONFIGS = pathlib.Path(__file__).resolve().parents[3] / "configs"


@pytest.fixture(scope="module")
def kg_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("kg")
    rng = np.random.default_rng(0)
    ents, rels = [f"e{i}" for i in range(10)], ["likes", "part_of", "near"]
    rows = {tuple(x) for x in zip(rng.integers(0, 10, 60), rng.integers(0, 3, 60), rng.integers(0, 10, 60))}
    rows = sorted(rows)
    for name, part in (("train", rows[:-12]), ("valid", rows[-12:-6]), ("test", rows[-6:])):
        (d / f"{name}.txt").write_text("".join(f"{ents[h]}\t{rels[r]}\t{ents[t]}\n" for h, r, t in part))
    return str(d)


def make(kg_dir, *over):
    cfg = gconfig.load_config(CONFIGS / "gmt_tiny.yaml",
                              [f"system.kg={kg_dir}", "system.max_train=16",
                               "data.seq_len=300", "system.graph_dropout=0.0", *over])
    return GMTSystem(gconfig.to_object(cfg))


def setup(system):
    frozen = system.load_base()
    trainable = system.init_trainable(frozen, jax.random.PRNGKey(1))
    # Non-zero gate and LoRA B so the memory path is live in the checks below.
    trainable = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.3 if any(getattr(k, "key", None) in ("memory_gate", "lora_B") for k in p) else x,
        trainable)
    return trainable, frozen


def brute_loss(system, trainable, frozen, b, mask_key="loss_mask"):
    mem = system.memory(trainable, frozen, b)
    logits, _ = system.module.apply(system.variables(trainable, frozen), b["input_ids"],
                                    b["attention_mask"], hook_inputs={"memory": mem})
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], b["input_ids"][:, 1:])
    m = b[mask_key][:, 1:]
    return float((ce * m).sum() / m.sum())


@pytest.mark.parametrize("toi", [False, True])
def test_loss_response_only_vs_train_on_inputs(kg_dir, toi):
    s = make(kg_dir, f"system.train_on_inputs={str(toi).lower()}")
    t, f = setup(s)
    b = {k: jnp.asarray(v) for k, v in s.batch(0).items()}
    loss, aux = s.loss(t, f, b, jax.random.PRNGKey(0))
    np.testing.assert_allclose(float(loss), brute_loss(s, t, f, b), rtol=1e-5)
    real = float(b["attention_mask"].sum())
    if toi:
        assert float(aux["target_tokens"]) == pytest.approx(real - 0, abs=len(b["input_ids"]))
    else:
        assert float(aux["target_tokens"]) < 0.1 * real      # only "True"/"False" bytes


@pytest.mark.parametrize("mask_query", [False, True])
def test_system_memory_equals_reference(kg_dir, mask_query):
    """The system's memory (its KG, edges, cached table) = the loop reference's GMT encoder
    carrying the same weights, with mask_query on and off."""
    from gmem.systems.gmt import graph as G
    s = make(kg_dir, f"system.mask_query={str(mask_query).lower()}")
    t, f = setup(s)
    noise = lambda tree, seed: jax.tree.map(lambda x, k: x + 0.3 * jax.random.normal(k, x.shape), tree, _keys(tree, seed))
    t = dict(t, enc=noise(t["enc"], 1))                 # O(1) memories: weights off their small init
    f = dict(f, sgm=dict(noise(f["sgm"], 2), rel_semantic=f["sgm"]["rel_semantic"]))
    f["table"] = G.edge_table(s.gcfg, f["sgm"], f["hist"])
    trip = np.concatenate([s.splits["train"][:3], s.splits["test"][:3]])
    mem = np.asarray(s.memory(t, f, {k: jnp.asarray(v) for k, v in s.edges(trip).items()}))
    want = _reference_memory(s, f["sgm"], t["enc"], trip, mask_query)
    assert np.abs(want).max() > 0.5                                  # the scale compared at
    np.testing.assert_allclose(mem, want, atol=1e-5, rtol=1e-5)


def _keys(tree, seed):
    leaves, tdef = jax.tree_util.tree_flatten(tree)
    return jax.tree_util.tree_unflatten(tdef, list(jax.random.split(jax.random.PRNGKey(seed), len(leaves))))


def _reference_memory(s, sgm, enc, triples, mask_query):
    """gmt_reference.RefEncoder on the system's KG with the system's weights (torch layout)."""
    import torch
    c = s.gcfg
    ridx = ref.RefKGIndex(s.kg.num_entities, s.kg.num_relations, s.kg.triples.tolist(), s.kg.add_inverse)
    r = ref.RefEncoder(ridx, c.rel_dim, c.graph_dim, c.sgm_layers, c.sgm_heads, c.top_k,
                       c.num_memory_tokens, c.memory_heads, c.llm_dim).eval()
    T = lambda a: torch.tensor(np.asarray(a))
    mha = lambda m, p: _load_mha(m, T, p["q_proj"], p["k_proj"], p["v_proj"], p["out_proj"])
    with torch.no_grad():
        r.sgm.rel_semantic.weight.copy_(T(sgm["rel_semantic"]))
        if r.sgm.rel_proj is not None:
            r.sgm.rel_proj.weight.copy_(T(sgm["rel_proj"]["kernel"]).T)
            r.sgm.rel_proj.bias.copy_(T(sgm["rel_proj"]["bias"]))
        for i, layer in enumerate(r.sgm.layers):
            p = sgm[f"layers_{i}"]
            zero = {"kernel": np.zeros_like(p["v_proj"]["kernel"]), "bias": np.zeros_like(p["v_proj"]["bias"])}
            mha(layer.attn, {"q_proj": zero, "k_proj": zero, "v_proj": p["v_proj"], "out_proj": p["out_proj"]})
            for n in ("norm1", "norm2"):
                getattr(layer, n).weight.copy_(T(p[n]["scale"]))
                getattr(layer, n).bias.copy_(T(p[n]["bias"]))
            for n in ("linear1", "linear2"):
                getattr(layer, n).weight.copy_(T(p[n]["kernel"]).T)
                getattr(layer, n).bias.copy_(T(p[n]["bias"]))
        r.tokenizer.memory_queries.copy_(T(enc["tokenizer"]["memory_queries"]))
        mha(r.tokenizer.attn, enc["tokenizer"])
        r.proj.weight.copy_(T(enc["proj"]["kernel"]).T)
        r.proj.bias.copy_(T(enc["proj"]["bias"]))
        return r(triples.tolist(), mask_query).numpy()


def _load_mha(m, T, q, k, v, o):
    import torch
    m.in_proj_weight.copy_(torch.cat([T(x["kernel"]).T for x in (q, k, v)], 0))
    m.in_proj_bias.copy_(torch.cat([T(x["bias"]) for x in (q, k, v)], 0))
    m.out_proj.weight.copy_(T(o["kernel"]).T)
    m.out_proj.bias.copy_(T(o["bias"]))


def test_candidate_scoring_equals_brute_force(kg_dir):
    s = make(kg_dir, "system.lp_batch=8")
    t, f = setup(s)
    h, r, tt = (int(x) for x in s.splits["test"][0])
    rows, m = E.link_prediction_scoring(s, t, f, [[h, r, tt]])
    n = s.kg.num_entities
    batched = E.true_scores(s, t, f, np.stack([np.full(n, h), np.full(n, r), np.arange(n)], 1))
    brute = []
    for e in range(n):      # one prompt at a time, full logits, no window
        rec = {"instruction": E.D.TC_INSTRUCTION,
               "input": E.D.triple_input(s.kg.entities[h], s.kg.relations[r], s.kg.entities[e]),
               "output": "True", "embedding_ids": [h, r, e]}
        b = {k: jnp.asarray(v) for k, v in s.encode([rec], train_on_inputs=False).items()}
        brute.append(-brute_loss(s, t, f, b) * float(b["loss_mask"][:, 1:].sum()))
    brute = np.asarray(brute)
    np.testing.assert_allclose(batched, brute, atol=1e-4, rtol=1e-5)
    # The rank is exact: brute-force count over the filtered candidates (gaps here >> 1e-4).
    excl = E.known_tails(s).get((h, r), set()) - {tt}
    others = [e for e in range(n) if e != tt and e not in excl]
    gaps = np.abs(brute[others] - brute[tt])
    if (gaps > 1e-3).all():
        assert rows[0]["rank"] == 1 + sum(brute[e] > brute[tt] for e in others)
    assert rows[0]["rank"] == E.filtered_rank(batched, tt, excl)
    assert m["n"] == 1 and 0 < m["mrr"] <= 1


def _steps_reduce_loss(system, n=6):
    cfg = system.cfg
    plan = make_plan(cfg, system)
    with plan.context():
        frozen, state = plan.fresh_state(system)
        batch = shd.global_batch(plan.mesh, system.batch(0), plan.rules)
        losses = []
        for _ in range(n):
            state, met = plan.step(state, frozen, batch)
            losses.append(float(met["loss"]))
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0], losses
    return losses


def test_stage2_steps_reduce_loss(kg_dir):
    _steps_reduce_loss(make(kg_dir, "optim.lr=0.01", "optim.warmup_steps=0"))


def test_stage1_steps_reduce_loss(kg_dir):
    cfg = gconfig.load_config(CONFIGS / "gmt_stage1.yaml",
                              [f"system.kg={kg_dir}", "system.rel_semantics=random",
                               "system.graph_dim=16", "system.sgm_heads=2",
                               "system.num_negatives=8", "system.graph_dropout=0.0",
                               "data.batch_size=16", "optim.lr=0.01"])
    s = GMTStage1System(gconfig.to_object(cfg))
    b = s.batch(0)
    assert b["pos"].shape == (16, 3) and b["neg"].shape == (16, 8, 3)
    np.testing.assert_array_equal(b["neg"], s.batch(0)["neg"])        # seeded by step
    _steps_reduce_loss(s)
    sf = GMTStage1System(gconfig.to_object(gconfig.load_config(None, ["system.filtered_negatives=true"], base=gconfig.to_dict(cfg))))
    keys = {tuple(x) for x in sf.known.tolist()}
    assert not any(tuple(x) in keys for x in sf.batch(0)["neg"].reshape(-1, 3).tolist())


def test_classification_eval_and_modes(kg_dir):
    """infer.py's classification: each generation equals the reference's greedy loop (one
    prompt, full forward recomputed per token, memory from its triple), and the metrics are
    those of the parsed answers against the gold labels; max_eval is class-balanced."""
    s = make(kg_dir, "system.max_eval=4", "system.max_new_tokens=2")
    t, f = setup(s)
    rows, m = E.predict(s, t, f)
    assert m["tc/n"] == 4 and len(rows) == 4 and (m["tc/n_true"], m["tc/n_false"]) == (2, 2)
    recs = E._split_records(s, "test")
    variables = s.variables(t, f)
    for rec, row in zip(recs, rows):
        b = {k: jnp.asarray(v) for k, v in s.encode([dict(rec, output="")]).items()}
        real = np.asarray(b["attention_mask"][0]).astype(bool)
        ids = b["input_ids"][:, real]
        mem = s.memory(t, f, b)
        for _ in range(2):
            logits, _ = s.module.apply(variables, ids, jnp.ones_like(ids), hook_inputs={"memory": mem})
            ids = jnp.concatenate([ids, jnp.argmax(logits[:, -1], -1)[:, None].astype(ids.dtype)], 1)
        text = s.tokenizer.decode(np.asarray(ids[0, int(real.sum()):]).tolist(), skip_special_tokens=True).strip()
        assert row["generation"] == text and row["pred"] == int("true" in text.lower())
    pred = np.asarray([r["pred"] for r in rows])
    gold = np.asarray([E.D.parse_classification(r["output"]) for r in recs])
    assert m["tc/accuracy"] == pytest.approx(float((pred == gold).mean()))
    tp = int((pred & gold).sum())
    assert m["tc/precision"] == pytest.approx(tp / pred.sum() if pred.sum() else 0.0)
    assert m["tc/recall"] == pytest.approx(tp / gold.sum())
    base = make(kg_dir, "system.mode=base", "adapters=[]")
    fb = base.load_base()
    tb = base.init_trainable(fb, jax.random.PRNGKey(0))
    assert jax.tree_util.tree_leaves(tb) == [] and "sgm" not in fb
    b = {k: jnp.asarray(v) for k, v in base.batch(0).items()}
    assert np.isfinite(float(base.loss(tb, fb, b, jax.random.PRNGKey(0))[0]))


def test_stage2_reads_stage1_checkpoint(kg_dir, tmp_path):
    from gmem.train.loop import train
    over = [f"system.kg={kg_dir}", "system.rel_semantics=random", "system.graph_dim=16",
            "system.sgm_heads=2", "system.num_negatives=4", "data.batch_size=8",
            "train.steps=2", "train.progress=false", "eval.every=0", f"train.run_dir={tmp_path / 's1'}"]
    cfg1 = gconfig.to_object(gconfig.load_config(CONFIGS / "gmt_stage1.yaml", over))
    train(cfg1, log=lambda *a: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # a stage-1 SGM: no random-graph-module warning
        s2 = make(kg_dir, f"system.sgm_ckpt={tmp_path / 's1'}")
    with pytest.warns(UserWarning, match="graph module stays at its random init"):
        make(kg_dir)
    from gmem.train.infer import restore_run
    _, _, _, state, _, _ = restore_run(tmp_path / "s1")
    assert s2._stage1 is not None              # read at construction, never inside a trace
    s2.abstract_base()                         # train.py's plan: load_base under jax.eval_shape
    f = s2.load_base()
    np.testing.assert_array_equal(np.asarray(f["sgm"]["layers_0"]["linear1"]["kernel"]),
                                  np.asarray(state.trainable["layers_0"]["linear1"]["kernel"]))


def test_shared_prefix_packing_is_exact(kg_dir):
    # Rows fit in seq_len, so encode keeps the template's shared prefix at the front of each row
    # and the loss / generation take LlamaModel's shared-prefix path; the plain module on the
    # same packed rows (brute_loss) and plain packing (prefix_ids emptied) are the references.
    s = make(kg_dir, "data.seq_len=512")
    assert s.train_prefix > 0 and s.shared_len(s.batch(0)) == s.train_prefix
    assert s.prefix_split(s.load_base()["llm"]) == min(s.memory_layers)
    t, f = setup(s)
    b = {k: jnp.asarray(v) for k, v in s.batch(0).items()}
    loss, _ = s.loss(t, f, b, jax.random.PRNGKey(0))
    np.testing.assert_allclose(float(loss), brute_loss(s, t, f, b), rtol=1e-5)
    recs = s.records("test")[:4]
    shared_scores = E._record_scores(s, t, f, recs)
    shared_text = E.generate_answers(s, t, f, recs, 3)
    s.prefix_ids = []
    assert s.shared_len(s.encode(recs)) == 0
    np.testing.assert_allclose(E._record_scores(s, t, f, recs), shared_scores, atol=1e-4)
    assert E.generate_answers(s, t, f, recs, 3) == shared_text


def test_pad_to_multiple_of_cuts_batches_and_keeps_the_loss(kg_dir):
    s = make(kg_dir, "data.seq_len=512")
    cut = make(kg_dir, "data.seq_len=512", "system.pad_to_multiple_of=8")
    t, f = setup(s)
    for i in range(2):
        full, short = s.batch(i), cut.batch(i)
        width = short["input_ids"].shape[1]
        assert width % 8 == 0 and width < 512 and width - 8 < full["attention_mask"].sum(1).max() <= width
        np.testing.assert_array_equal(short["edge_rel"], full["edge_rel"])
        j = lambda b: {k: jnp.asarray(v) for k, v in b.items()}
        rng = jax.random.PRNGKey(0)
        np.testing.assert_allclose(float(cut.loss(t, f, j(short), rng)[0]), float(s.loss(t, f, j(full), rng)[0]),
                                   rtol=1e-5)
    with pytest.raises(GmemError, match="pad_to_multiple_of"):
        make(kg_dir, "system.pad_to_multiple_of=-8")


def test_memory_ablation_diagnostics(kg_dir):
    s = make(kg_dir)
    t, f = setup(s)
    b = {k: jnp.asarray(v) for k, v in s.batch(0).items()}
    mem = np.asarray(s.memory(t, f, b))
    closed = jax.tree_util.tree_map_with_path(          # every gate shut: the base LLM exactly
        lambda p, x: x * 0 if any(getattr(k, "key", None) == "memory_gate" for k in p) else x, t)
    base = np.asarray(s.token_logprobs(closed, f, b))
    live = np.asarray(s.token_logprobs(t, f, b))
    assert np.abs(live - base).max() > 1e-4
    s.p.memory_ablation = "shuffle"                  # row i reads row i-1's subgraph
    np.testing.assert_array_equal(np.asarray(s.memory(t, f, b)), np.roll(mem, 1, axis=0))
    s.p.memory_ablation = "zero"                     # zero keys/values: the block adds 0
    np.testing.assert_allclose(np.asarray(s.token_logprobs(t, f, b)), base, atol=1e-5)
    s.p.memory_ablation = "none"
    with pytest.raises(Exception, match="memory_ablation"):
        make(kg_dir, "system.memory_ablation=bogus")


def test_memory_norm_rms_normalises_each_memory_token(kg_dir):
    """memory_norm: each memory token is the unnormalised token divided by its RMS (eps 1e-5,
    no scale); the eval loss (rng None) stays finite."""
    plain, normed = make(kg_dir, "system.mask_query=false"), make(
        kg_dir, "system.mask_query=false", "system.memory_norm=true")
    t, f = setup(plain)
    trip = np.asarray(plain.splits["test"][:4])
    edges = {k: jnp.asarray(v) for k, v in plain.edges(trip).items()}
    raw, mem = np.asarray(plain.memory(t, f, edges)), np.asarray(normed.memory(t, f, edges))
    want = raw / np.sqrt((raw.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5)   # RMSNorm, eps 1e-5
    np.testing.assert_allclose(mem, want, rtol=1e-5, atol=1e-7)
    b = {k: jnp.asarray(v) for k, v in normed.batch(0).items()}
    assert np.isfinite(float(normed.loss(t, f, b, None)[0]))
    with pytest.raises(GmemError, match="memory_norm"):
        make(kg_dir, "system.memory_norm=maybe")   # (OmegaConf reads 3 as true)


def test_evaluation_loss_is_deterministic(kg_dir):
    """loss(..., rng=None), the training loop's evaluation: no LoRA or graph dropout, so it
    equals the explicit forward; a training rng gives another value (dropout 0.01 on LoRA)."""
    s = make(kg_dir, "system.graph_dropout=0.1")
    t, f = setup(s)
    b = {k: jnp.asarray(v) for k, v in s.batch(0).items()}
    ev = float(s.loss(t, f, b, None)[0])
    np.testing.assert_allclose(ev, brute_loss(s, t, f, b), rtol=1e-5)
    assert float(s.loss(t, f, b, None)[0]) == ev
