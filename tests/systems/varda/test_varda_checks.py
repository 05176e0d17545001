"""Checks that can fail: VardaGPT's memory read and store against brute-force references, and
the probe and perplexity table against an oracle whose only knowledge comes through memory.
Each check is also run on broken variants (monkeypatched) and must reject every one of them."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmem.systems.varda import VardaSystem
from gmem.systems.varda import eval as varda_eval
from varda_helpers import tiny_varda_cfg

B, SEG = 2, 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny LLaMA VardaGPT, deletion off (the references do not model it), the fusion gate open
    so that what is read changes the logits."""
    system = VardaSystem(tiny_varda_cfg(tmp_path_factory.mktemp("checks"), "system.delete=false"), load_data=False)
    frozen = system.load_base()
    trainable = system.init_trainable(frozen, jax.random.PRNGKey(1))
    trainable["varda"]["gate"] = jnp.ones_like(trainable["varda"]["gate"])
    ids = jax.random.randint(jax.random.PRNGKey(2), (B, 2 * SEG), 0, 250)
    return system, frozen, trainable, ids


# ---- references -----------------------------------------------------------------------------

def _knn(x_LD, v_MD, valid_M, k):
    """Brute-force k nearest valid vectors (squared L2) in numpy; zeros where fewer than k."""
    d = ((x_LD[:, None, :] - v_MD[None]) ** 2).sum(-1)
    d[:, ~valid_M] = np.inf
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    r = v_MD[order]
    r[~np.isfinite(np.take_along_axis(d, order, 1))] = 0.0
    return r


def _segment_ref(system, trainable, frozen, ids_BL, vectors, valid):
    """One segment by hand: embed, per-row kNN read of (vectors [B, M, D], valid [B, M]), fuse,
    backbone -> (logits, final hidden states)."""
    bv = system.backbone_variables(trainable, frozen)
    hp = {"params": trainable["varda"]}
    x = np.asarray(system.module.apply(bv, ids_BL, method="embed"), np.float32)
    k = system.varda_cfg.num_search_results
    r = np.stack([_knn(x[b], vectors[b], valid[b], k) for b in range(len(x))])
    z = system.model.heads.apply(hp, jnp.asarray(x), jnp.asarray(r), method="fuse")
    logits, _, h = system.module.apply(bv, inputs_embeds_BLD=z, return_hidden=True)
    return np.asarray(logits), h


def _stored_ref(system, trainable, h):
    """What one segment must store: per row, its tokens' storable vectors whose gate is open."""
    s, g, _ = system.model.heads.apply({"params": trainable["varda"]}, h, method="decide")
    open_ = np.asarray(jax.nn.sigmoid(g)) > system.varda_cfg.store_threshold
    return [np.asarray(s)[b][open_[b]] for b in range(len(open_))], open_


def check_read(system, trainable, frozen, ids):
    """Segment 0 read from a memory holding different vectors per row equals the reference."""
    d, m = system.model.hidden, system.varda_cfg.memory_size
    vectors = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (B, m, d)), np.float32) * 0.05
    valid = np.zeros((B, m), bool)
    valid[0, :20], valid[1, 5:17] = True, True
    state = system.model.init_memory(B).replace(vectors_MD=jnp.asarray(vectors), valid_M=jnp.asarray(valid))
    got = system.forward(trainable, frozen, state, ids[:, :SEG])[0]
    want, _ = _segment_ref(system, trainable, frozen, ids[:, :SEG], vectors, valid)
    empty, _ = _segment_ref(system, trainable, frozen, ids[:, :SEG], vectors, np.zeros_like(valid))
    assert np.abs(want - empty).max() > 1e-3  # the read matters for these logits
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)


def check_store(system, trainable, frozen, ids):
    """Segment 0 from an empty memory stores each row's open-gate vectors, in order, in that
    row; segment 1 then reads exactly those."""
    m = system.varda_cfg.memory_size
    empty = np.zeros((B, m, system.model.hidden), np.float32)
    _, h0 = _segment_ref(system, trainable, frozen, ids[:, :SEG], empty, np.zeros((B, m), bool))
    stored, open_ = _stored_ref(system, trainable, h0)
    assert 0 < open_.sum() < open_.size  # gates mixed
    _, state, _ = system.forward(trainable, frozen, system.model.init_memory(B), ids[:, :SEG])
    logits = system.forward(trainable, frozen, system.model.init_memory(B), ids)[0]
    for b in range(B):
        n = len(stored[b])
        assert int(state.count[b]) == n
        np.testing.assert_allclose(np.asarray(state.vectors_MD[b, :n]), stored[b], atol=1e-5)
    vectors, valid = empty.copy(), np.zeros((B, m), bool)
    for b in range(B):
        vectors[b, :len(stored[b])], valid[b, :len(stored[b])] = stored[b], True
    want, _ = _segment_ref(system, trainable, frozen, ids[:, SEG:], vectors, valid)
    np.testing.assert_allclose(np.asarray(logits[:, SEG:]), want, atol=1e-4)


# ---- the model: right reads and stores pass, broken ones fail --------------------------------

def _roll_rows(state):
    return jax.tree.map(lambda a: jnp.roll(a, 1, axis=0), state)


BROKEN_READS = {
    "another row's memory": lambda orig: lambda st, x: orig(_roll_rows(st), x),
    "zeros": lambda orig: lambda st, x: (lambda i, r: (i, jnp.zeros_like(r)))(*orig(st, x)),
    "the query ignored": lambda orig: lambda st, x: orig(st, jnp.zeros_like(x)),
}

BROKEN_STORES = {
    "another row": lambda orig: lambda st, s, m: orig(st, jnp.roll(s, 1, 0), jnp.roll(m, 1, 0)),
    "every token, gate ignored": lambda orig: lambda st, s, m: orig(st, s, jnp.ones_like(m)),
    "the previous token's vector": lambda orig: lambda st, s, m: orig(st, jnp.roll(s, 1, 1), m),
}


def test_memory_read_equals_brute_force_and_broken_reads_fail(setup, monkeypatch):
    system, frozen, trainable, ids = setup
    check_read(system, trainable, frozen, ids)
    orig = system.model.read
    for name, broken in BROKEN_READS.items():
        monkeypatch.setattr(system.model, "read", broken(orig))
        with pytest.raises(AssertionError):
            check_read(system, trainable, frozen, ids)
        monkeypatch.undo()


def test_store_writes_each_rows_gated_vectors_and_broken_stores_fail(setup, monkeypatch):
    system, frozen, trainable, ids = setup
    check_store(system, trainable, frozen, ids)
    orig = system.model.write
    for name, broken in BROKEN_STORES.items():
        monkeypatch.setattr(system.model, "write", broken(orig))
        with pytest.raises(AssertionError):
            check_store(system, trainable, frozen, ids)
        monkeypatch.undo()


# ---- the probe and the table: an oracle that knows only what its memory carries --------------

class Oracle:
    """Per row, the set of tokens seen in earlier segments is its memory; logits are +20 on those
    tokens, 0 elsewhere. Without the memory (or with it wiped) every token is equally likely."""

    def __init__(self, cfg, vocab, memory=True):
        self.cfg, self.vocab, self.memory = cfg, vocab, memory

    def without_memory(self):
        return Oracle(self.cfg, self.vocab, memory=False)

    def init_memory(self, b):
        return jnp.zeros((b, self.vocab))

    def __call__(self, heads, bv, state, ids, rng=None):
        b, t = ids.shape
        seg = min(self.cfg.segment_len, t)
        scale = 20.0 * self.memory + 0.0 * ids[0, 0]  # traced: nothing for XLA to constant-fold

        def step(seen, seg_ids):
            out = jnp.broadcast_to(scale * seen[:, None], (b, seg, self.vocab))
            return jnp.maximum(seen, jax.nn.one_hot(seg_ids, self.vocab).max(1)), out

        state, out = jax.lax.scan(step, state, ids.reshape(b, t // seg, seg).swapaxes(0, 1))
        return out.swapaxes(0, 1).reshape(b, t, -1), state, {}


def check_probe(system, trainable, frozen):
    probe = varda_eval.fact_probe(system, trainable, frozen, trials=10, gap=1)
    assert probe["VardaGPT"] == 1.0
    assert probe["memory wiped every segment"] <= 0.2 and probe["backbone alone"] <= 0.2


def check_table(system, trainable, frozen):
    t = varda_eval.perplexity_table(system, trainable, frozen, batches=1)
    assert t["VardaGPT (memory carried)"][0] < t["memory layers, memory wiped every segment"][0] - 0.5
    assert abs(t["memory layers, memory wiped every segment"][0] - t["backbone alone"][0]) < 1e-4


def test_probe_and_table_reach_the_memory_and_ones_that_ignore_it_fail(tmp_path, monkeypatch):
    cfg = tiny_varda_cfg(tmp_path, "system.segment_len=160", "data.seq_len=480", "system.eval_fraction=0.5",
               "data.batch_size=2", "adapters=[]")
    system = VardaSystem(cfg)
    system.model = Oracle(system.varda_cfg, system.cfg.model.vocab_size)
    monkeypatch.setattr(varda_eval, "full_window_logits", varda_eval.alone_logits)  # no backbone needed
    trainable = {"varda": {}, "adapters": {}}
    check_probe(system, trainable, {})
    check_table(system, trainable, {})
    carried = varda_eval.carried_logits
    for wrong in ("wiped_logits", "alone_logits"):   # VardaGPT scored without its carried memory
        monkeypatch.setattr(varda_eval, "carried_logits", getattr(varda_eval, wrong))
        with pytest.raises(AssertionError):
            check_probe(system, trainable, {})
        with pytest.raises(AssertionError):
            check_table(system, trainable, {})
        monkeypatch.setattr(varda_eval, "carried_logits", carried)
    # A probe whose fact does not carry the name (so nothing to recall) fails too.
    monkeypatch.setattr(varda_eval, "PROBE_FACT", " Remember.{name:.0}")
    with pytest.raises(AssertionError):
        check_probe(system, trainable, {})
