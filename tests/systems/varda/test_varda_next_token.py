"""VardaGPT's next_token read (gmem/systems/varda/next_token.py) against a brute-force numpy
reference, with broken variants that the reference must reject; the step-0 and gradient
properties; and the long-context probe on a tiny random model, where only the memory can
carry the fact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gmem.systems.varda.model as varda_model
from gmem.errors import GmemError
from gmem.systems.varda import VardaSystem
from gmem.systems.varda.eval import fact_probe
from gmem.systems.varda.next_token import NextTokenRead
from varda_helpers import stepwise_greedy, tiny_varda_cfg

B, SEG, K = 2, 8, 3
READ = ("system.read=next_token", "system.metric=ip", "system.key_ngram=2", "system.key_proj=true")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    system = VardaSystem(tiny_varda_cfg(tmp_path_factory.mktemp("knn"), *READ), load_data=False)
    frozen = system.load_base()
    trainable = system.init_trainable(frozen, jax.random.PRNGKey(1))
    # A key map away from the identity and a trust gate that is open, so both matter.
    p = trainable["varda"]
    w = p["fc_key"]["kernel"]
    p["fc_key"]["kernel"] = w + 0.3 * jax.random.normal(jax.random.PRNGKey(3), w.shape)
    p["gate_slope"], p["gate_bias"] = jnp.float32(4.0), jnp.float32(-1.0)
    # Tokens from a small alphabet, so 2-grams repeat across segments and the read finds them.
    ids = jax.random.randint(jax.random.PRNGKey(2), (B, 3 * SEG), 97, 101)
    # A segment opening "a a" gives its first two tokens the same hidden state (attention over
    # equal values) and so the same key: an exact tie whose order the reference cannot know.
    first, second = ids[:, ::SEG], ids[:, 1::SEG]
    ids = ids.at[:, 1::SEG].set(jnp.where(second == first, 97 + (second - 96) % 4, second))
    return system, frozen, trainable, ids


def _reference(system, trainable, frozen, ids):
    """The read by hand, row by row: log-probs [B, T, V]."""
    bv = system.backbone_variables(trainable, frozen)
    p = trainable["varda"]
    ids = np.asarray(ids)
    b, t = ids.shape
    x = np.asarray(system.module.apply(bv, jnp.asarray(ids.reshape(-1, SEG)), method="embed"), np.float64)
    logits, _, h = system.module.apply(bv, inputs_embeds_BLD=jnp.asarray(x, jnp.float32), return_hidden=True)
    logits = np.asarray(logits, np.float64).reshape(b, t, -1)
    h = np.asarray(h, np.float64)
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
    kh = unit(h @ np.asarray(p["fc_key"]["kernel"], np.float64))
    gram = np.stack([x[:, max(0, i - 1): i + 1].sum(1) for i in range(SEG)], 1)  # last 2 embeddings
    keys = (np.concatenate([kh, unit(gram)], -1) / np.sqrt(2)).reshape(b, t, -1)
    tau, a, c = (float(p[n]) for n in ("log_tau", "gate_slope", "gate_bias"))
    lp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    out = lp.copy()
    for r in range(b):
        for i in range(SEG, t):
            past = keys[r, : i - i % SEG]        # every token of the earlier segments has its next token
            cos = past @ keys[r, i]
            top = np.argsort(-cos, kind="stable")[:K]
            w = np.exp(cos[top] / np.exp(tau) - (cos[top] / np.exp(tau)).max())
            w /= w.sum()
            pm = np.zeros(lp.shape[-1])
            np.add.at(pm, ids[r, top + 1], w)
            lam = 1 / (1 + np.exp(-(a * cos[top].max() + c)))
            out[r, i] = np.log((1 - lam) * np.exp(lp[r, i]) + lam * pm + 1e-300)
    return out


def _model(system, trainable, frozen, ids):
    return np.asarray(jax.jit(system.forward)(trainable, frozen, system.model.init_memory(B), ids)[0])


def _check(system, trainable, frozen, ids):
    ref, got = _reference(system, trainable, frozen, ids), _model(system, trainable, frozen, ids)
    # fp32 log-probs of magnitude ~5 (vocab 260) against a float64 reference.
    np.testing.assert_allclose(got, ref, atol=2e-4)
    assert np.abs(ref[:, SEG:] - ref[:, SEG:].max()).max() > 0  # the reference is not degenerate


def test_read_equals_brute_force_and_broken_reads_fail(setup, monkeypatch):
    system, frozen, trainable, ids = setup
    _check(system, trainable, frozen, ids)
    seg_fn = varda_model.next_token_segment
    broken = {
        # stores each token's own id instead of the next one
        "current token": lambda m, hp, bv, st, s, n, ok: seg_fn(m, hp, bv, st, s, s, ok),
        # reads and writes the next row's memory
        "other row": lambda m, hp, bv, st, s, n, ok: seg_fn(m, hp, bv, jax.tree_util.tree_map(
            lambda v: jnp.roll(v, 1, 0), st), s, n, ok),
        # a read that ignores what it found
        "ignores memory": lambda m, hp, bv, st, s, n, ok: seg_fn(m, hp, bv, m.memory.init(s.shape[0]), s, n, ok),
    }
    for name, fn in broken.items():
        with monkeypatch.context() as mp:
            mp.setattr(varda_model, "next_token_segment", fn)
            with pytest.raises(AssertionError):
                _check(system, trainable, frozen, ids)
            print("rejected:", name)


def test_first_segment_is_the_backbone_and_gradients_reach_the_read(setup):
    system, frozen, trainable, ids = setup
    got = _model(system, trainable, frozen, ids)
    alone = jax.nn.log_softmax(system.module.apply(system.backbone_variables(trainable, frozen), ids[:, :SEG])[0])
    np.testing.assert_allclose(got[:, :SEG], np.asarray(alone), atol=1e-5)  # empty memory: lambda = 0
    rows = jnp.concatenate([ids, ids[:, :1]], 1)  # rows carry one token more than the inputs
    loss = lambda tr: system.loss(tr, frozen, {"input_ids": rows}, None)[0]
    g = jax.grad(loss)(trainable)["varda"]
    for name in ("log_tau", "gate_slope", "gate_bias"):
        assert np.isfinite(float(g[name])) and float(g[name]) != 0.0, name
    assert np.isfinite(np.asarray(g["fc_key"]["kernel"])).all() and np.abs(np.asarray(g["fc_key"]["kernel"])).max() > 0


def test_ngram_keys_are_the_sum_of_the_last_n_embeddings():
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 5, 4))
    h = jax.random.normal(jax.random.PRNGKey(1), (1, 5, 4))
    read = NextTokenRead(4, key_proj=False, key_ngram=3)
    params = read.init(jax.random.PRNGKey(2), h, jnp.zeros((1, 5, 2)), jnp.zeros((1, 5, 1)), jnp.zeros((1, 5, 1), jnp.int32))
    k = np.asarray(read.apply(params, h, x, method="keys"))
    xn, hn = np.asarray(x)[0], np.asarray(h)[0]
    for t in range(5):
        g = xn[max(0, t - 2): t + 1].sum(0)
        want = np.concatenate([hn[t] / np.linalg.norm(hn[t]), g / np.linalg.norm(g)]) / np.sqrt(2)
        np.testing.assert_allclose(k[0, t], want, atol=1e-6)


def test_bad_read_options_are_one_error(tmp_path):
    with pytest.raises(GmemError, match="metric='l2' must be 'ip'"):
        VardaSystem(tiny_varda_cfg(tmp_path, "system.read=next_token"), load_data=False)
    with pytest.raises(GmemError, match="key_ngram=-1 must be >= 0"):
        VardaSystem(tiny_varda_cfg(tmp_path, *READ[:2], "system.key_ngram=-1"), load_data=False)
    with pytest.raises(GmemError, match=r"system.probe_trials=0 must be >= 1 and system.probe_gap=2 >= 0"):
        VardaSystem(tiny_varda_cfg(tmp_path, "system.probe_trials=0"), load_data=False)
    with pytest.raises(GmemError, match="read='kv' must be"):
        VardaSystem(tiny_varda_cfg(tmp_path, "system.read=kv"), load_data=False)


def test_probe_fact_comes_back_through_the_memory_only(tmp_path):
    """A tiny random byte-level model at init: the fact 3 segments back is out of its window,
    so the backbone alone and the wiped memory guess; the carried memory finds it."""
    cfg = tiny_varda_cfg(tmp_path, *READ[:3], "system.segment_len=128", "data.seq_len=512",
                         "system.memory_size=512", "system.eval_fraction=0.5", "data.batch_size=2")
    system = VardaSystem(cfg)
    frozen = system.load_base()
    trainable = system.init_trainable(frozen, jax.random.PRNGKey(1))
    probe = fact_probe(system, trainable, frozen, trials=10, gap=2)
    assert probe["VardaGPT"] >= 0.8, probe
    assert probe["VardaGPT"] - max(probe["backbone alone"], probe["memory wiped every segment"]) >= 0.5, probe


def test_generation_equals_step_by_step_recompute(setup):
    """generate_with_memory pads every row to one width; each step must equal a forward over
    exactly the sequence so far (padded to its own segment multiple): pads are never read."""
    from gmem.systems.varda.generate import generate_with_memory
    system, frozen, trainable, _ = setup
    prompts = [[97, 98, 99, 100, 97, 98, 99, 100, 97, 98], [99, 97, 98]]
    got = generate_with_memory(system, trainable, frozen, prompts, max_new_tokens=8)
    for prompt, new in zip(prompts, got):
        assert new == stepwise_greedy(system, trainable, frozen, prompt, 8)


def test_structure_names_the_read_only_when_it_is_not_the_original(setup, tmp_path):
    """A checkpoint records the read; runs of the original read keep the structure they had
    before `read` existed, so their checkpoints still load."""
    system = setup[0]
    assert system.structure["varda"]["read"] == "next_token" and system.structure["varda"]["key_ngram"] == 2
    plain = VardaSystem(tiny_varda_cfg(tmp_path), load_data=False).structure["varda"]
    assert not {"read", "key_proj", "key_ngram"} & set(plain)


def test_train_loop_on_8_devices_trains_the_read(tmp_path):
    """gmem.train's loop, data-parallel over the suite's 8 virtual devices, with the read's
    parameters the only trainable ones (no LoRA): they move from their init."""
    from gmem.train.checkpoint import open_checkpoint
    from gmem.train.loop import train
    cfg = tiny_varda_cfg(tmp_path, *READ, "adapters=[]", "train.steps=4", "checkpoint.every=4",
                         "train.progress=false", "optim.lr=1e-2", "optim.warmup_steps=0")
    summary = train(cfg, log=lambda *a: None)
    assert summary["step"] == 4 and np.isfinite(summary["losses"]).all()
    _, saved, _ = open_checkpoint(summary["checkpoint_dir"], cfg.checkpoint).restore_arrays()
    init = VardaSystem(cfg, load_data=False).model.init_heads(jax.random.PRNGKey(0))
    read = saved["trainable"]["varda"]
    for name in ("log_tau", "gate_slope", "gate_bias"):
        assert abs(float(read[name]) - float(init[name])) > 1e-3, name
    assert np.abs(read["fc_key"]["kernel"] - np.eye(read["fc_key"]["kernel"].shape[0])).max() > 1e-3
