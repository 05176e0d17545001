"""Attention core: masks, grouped-query attention and the KV cache against direct formulas.

float32 results are compared with tolerances scaled to the values (tests/tolerance.py): 1e-5 of
the compared values' max for float32 reorderings, 1e-6 where only an element-wise scaling differs.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from gmem.nn.attention import KVCache, advance_valid, dot_product_attention, make_mask, update_layer_cache
from tolerance import assert_close_to_scale


def test_causal_mask_with_left_padding():
    valid = jnp.array([[0, 1, 1, 1]], bool)
    m = np.asarray(make_mask(jnp.arange(4), valid))[0, 0]
    expect = np.tril(np.ones((4, 4), bool)) & np.array([0, 1, 1, 1], bool)[None]
    np.testing.assert_array_equal(m, expect)


def test_sliding_window_sees_itself_and_window_minus_one_before():
    valid = jnp.ones((1, 6), bool)
    m = np.asarray(make_mask(jnp.arange(6), valid, window=3))[0, 0]
    for q in range(6):
        assert [s for s in range(6) if m[q, s]] == list(range(max(0, q - 2), q + 1))


def test_bidirectional_mask_only_hides_pads():
    valid = jnp.array([[1, 1, 0]], bool)
    m = np.asarray(make_mask(jnp.arange(3), valid, causal=False))[0, 0]
    np.testing.assert_array_equal(m, np.array([[1, 1, 0]] * 3, bool))


def _reference_attention(q, k, v, mask):
    # Repeat KV heads to full heads, then plain softmax attention in float64.
    g = q.shape[2] // k.shape[2]
    k = np.repeat(k, g, axis=2).astype(np.float64)
    v = np.repeat(v, g, axis=2).astype(np.float64)
    s = np.einsum("blhd,bshd->bhls", q.astype(np.float64), k) / np.sqrt(q.shape[-1])
    s = np.where(mask, s, -1e30)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhls,bshd->blhd", p, v)


class AttentionVariantsTest(chex.TestCase):
    """The attention core eagerly and under jit (chex variants)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_grouped_query_attention_matches_repeated_heads(self):
        rng = np.random.RandomState(0)
        attend = self.variant(lambda q, k, v, mask: dot_product_attention(q, k, v, mask))
        for heads, kv in [(4, 4), (6, 2), (8, 2), (3, 1)]:
            q = rng.randn(2, 5, heads, 8).astype(np.float32)
            k = rng.randn(2, 5, kv, 8).astype(np.float32)
            v = rng.randn(2, 5, kv, 8).astype(np.float32)
            mask = make_mask(jnp.arange(5), jnp.ones((2, 5), bool))
            out = attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask)
            ref = _reference_attention(q, k, v, np.asarray(mask))
            np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)  # fp32 vs fp64; max|ref| ~3

    @chex.variants(with_jit=True, without_jit=True)
    def test_query_chunked_attention_equals_full_and_its_gradient(self):
        rng = np.random.RandomState(1)
        q = jnp.asarray(rng.randn(2, 64, 4, 8).astype(np.float32))
        k = jnp.asarray(rng.randn(2, 64, 2, 8).astype(np.float32))
        v = jnp.asarray(rng.randn(2, 64, 2, 8).astype(np.float32))
        mask = make_mask(jnp.arange(64), jnp.asarray(rng.rand(2, 64) > 0.2), window=20)
        full = lambda q: dot_product_attention(q, k, v, mask, q_chunk=None)
        chunked = lambda q: dot_product_attention(q, k, v, mask, q_chunk=16)
        assert_close_to_scale(self.variant(chunked)(q), self.variant(full)(q), rel=1e-5)
        g_full = self.variant(jax.grad(lambda q: (full(q) ** 2).sum()))(q)
        g_chunk = self.variant(jax.grad(lambda q: (chunked(q) ** 2).sum()))(q)
        assert_close_to_scale(g_chunk, g_full, rel=1e-5)


def test_fully_masked_query_row_is_finite():
    q = jnp.ones((1, 2, 2, 4))
    k = jnp.ones((1, 2, 2, 4))
    mask = make_mask(jnp.arange(2), jnp.zeros((1, 2), bool))
    assert np.isfinite(np.asarray(dot_product_attention(q, k, k, mask))).all()


def test_cache_writes_at_index_and_marks_valid_slots():
    cache = KVCache.zeros(num_layers=1, batch=2, slots=6, kv_heads=1, head_dim=2)
    new = jnp.ones((2, 3, 1, 2))
    k, v = jax.jit(update_layer_cache)(cache.keys[0], cache.values[0], new, 2 * new, jnp.int32(2))
    np.testing.assert_array_equal(np.asarray(k[:, :, 0, 0]), [[0, 0, 1, 1, 1, 0]] * 2)
    np.testing.assert_array_equal(np.asarray(v[:, 2:5]), 2.0)
    valid = advance_valid(cache.valid_BS, jnp.array([[0, 1, 1], [1, 1, 1]]), jnp.int32(1))
    np.testing.assert_array_equal(np.asarray(valid), [[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 0, 0]])


# ---- attention-probability dropout -------------------------------------------------------------

def _qkv(seed, b=2, l=6, s=6, heads=4, kv=2, d=8):
    rng = np.random.RandomState(seed)
    return tuple(jnp.asarray(rng.randn(*shape).astype(np.float32))
                 for shape in ((b, l, heads, d), (b, s, kv, d), (b, s, kv, d)))


def _dropped_reference(q, k, v, mask, keep_BHLS, rate):
    """softmax(q k^T / sqrt(d)) * keep / (1 - rate) @ v, in float64 with repeated KV heads."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    g = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    s = np.einsum("blhd,bshd->bhls", q, k) / np.sqrt(q.shape[-1])
    s = np.where(np.asarray(mask), s, -1e30)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p = np.where(np.asarray(keep_BHLS), p / (1.0 - rate), 0.0)
    return np.einsum("bhls,bshd->blhd", p, v)


def test_dropout_off_is_exactly_the_plain_attention():
    q, k, v = _qkv(0, l=32, s=32)
    mask = make_mask(jnp.arange(32), jnp.ones((2, 32), bool))
    key = jax.random.PRNGKey(3)
    for chunk in (None, 8):  # full, and 4 query chunks
        plain = np.asarray(dot_product_attention(q, k, v, mask, q_chunk=chunk))
        for kw in (dict(dropout_rate=0.0, dropout_rng=key), dict(dropout_rate=0.5),
                   dict(dropout_rate=0.5, dropout_rng=None)):
            got = np.asarray(dot_product_attention(q, k, v, mask, q_chunk=chunk, **kw))
            np.testing.assert_array_equal(got, plain)


def test_dropout_equals_the_formula_with_the_documented_mask():
    """keep = bernoulli(rng, 1 - p, [B, K, G, L, S]) (head h = k * G + g), probabilities
    scaled by 1 / (1 - p) after the softmax, before V; with GQA and a padding mask."""
    b, l, heads, kv, rate = 2, 6, 4, 2, 0.3
    q, k, v = _qkv(1, b=b, l=l, s=l, heads=heads, kv=kv)
    mask = make_mask(jnp.arange(l), jnp.array([[0, 1, 1, 1, 1, 1], [1] * 6], bool))
    key = jax.random.PRNGKey(7)
    got = jax.jit(lambda q, key: dot_product_attention(q, k, v, mask, dropout_rate=rate, dropout_rng=key))(q, key)
    keep = jax.random.bernoulli(key, 1.0 - rate, (b, kv, heads // kv, l, l)).reshape(b, heads, l, l)
    assert 0 < np.asarray(keep).mean() < 1
    ref = _dropped_reference(q, k, v, mask, keep, rate)
    assert_close_to_scale(got, ref, rel=1e-5)    # fp32 vs fp64 reference
    # A different key gives a different output.
    other = dot_product_attention(q, k, v, mask, dropout_rate=rate, dropout_rng=jax.random.PRNGKey(8))
    assert np.abs(np.asarray(other) - np.asarray(got)).max() > 1e-3


def test_chunked_dropout_draws_each_chunk_from_fold_in_and_differentiates():
    """Chunk i of C queries uses bernoulli(fold_in(rng, i), 1 - p, [B, K, G, C, S]); the
    gradient through the rematerialised chunks equals the one of the explicit formula."""
    b, l, heads, kv, c, rate = 2, 32, 4, 2, 8, 0.25
    q, k, v = _qkv(2, b=b, l=l, s=l, heads=heads, kv=kv)
    mask = make_mask(jnp.arange(l), jnp.asarray(np.random.RandomState(3).rand(b, l) > 0.2), window=12)
    key = jax.random.PRNGKey(11)
    keep = jnp.concatenate([jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - rate,
                                                 (b, kv, heads // kv, c, l)) for i in range(l // c)], axis=3)
    keep = keep.reshape(b, heads, l, l)
    chunked = lambda q: dot_product_attention(q, k, v, mask, q_chunk=c, dropout_rate=rate, dropout_rng=key)
    assert_close_to_scale(chunked(q), _dropped_reference(q, k, v, mask, keep, rate), rel=1e-5)

    def formula(q):  # the same computation written out, in fp32
        g = heads // kv
        kk, vv = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
        s = jnp.einsum("blhd,bshd->bhls", q, kk) / np.sqrt(q.shape[-1])
        p = jax.nn.softmax(jnp.where(mask, s, -1e30), axis=-1)
        return jnp.einsum("bhls,bshd->blhd", jnp.where(keep, p / (1 - rate), 0.0), vv)

    g_chunked = jax.grad(lambda q: (chunked(q) ** 2).sum())(q)
    g_formula = jax.grad(lambda q: (formula(q) ** 2).sum())(q)
    np.testing.assert_allclose(np.asarray(g_chunked), np.asarray(g_formula), atol=1e-4)


def test_dropout_keeps_probabilities_at_rate_and_is_unbiased():
    """With V = identity the output rows are the dropped probabilities: a fraction p is 0, the
    rest is prob / (1 - p); averaged over many keys the output approaches the plain one."""
    l, rate, n = 8, 0.4, 4000
    q, _, _ = _qkv(4, b=1, l=l, s=l, heads=2, kv=1)
    k = _qkv(5, b=1, l=l, s=l, heads=2, kv=1)[1]
    eye = jnp.broadcast_to(jnp.eye(l)[None, :, None, :], (1, l, 1, l))
    plain = np.asarray(dot_product_attention(q, k, eye, None))            # [1, L, H, S]: probs
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    outs = np.asarray(jax.jit(jax.vmap(lambda key: dot_product_attention(
        q, k, eye, None, dropout_rate=rate, dropout_rng=key)))(keys))     # [n, 1, L, H, S]
    dropped = outs == 0
    assert abs(dropped.mean() - rate) < 0.01                               # 512k draws
    assert_close_to_scale(outs[~dropped], np.broadcast_to(plain / (1 - rate), outs.shape)[~dropped],
                          rel=1e-6)                                        # element-wise scaling
    # Unbiased: the mean over keys is within 5 standard errors of the plain output.
    q2, k2, v2 = _qkv(6, b=1, l=l, s=l, heads=2, kv=1)
    plain = np.asarray(dot_product_attention(q2, k2, v2, None))
    outs = np.asarray(jax.jit(jax.vmap(lambda key: dot_product_attention(
        q2, k2, v2, None, dropout_rate=rate, dropout_rng=key)))(keys))
    se = outs.std(0) / np.sqrt(n)
    assert (np.abs(outs.mean(0) - plain) <= 5 * se + 1e-6).all()
    assert np.abs(outs.mean(0) - plain).max() < 0.05
