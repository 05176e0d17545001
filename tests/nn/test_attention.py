"""Attention core: masks, grouped-query attention and the KV cache against direct formulas."""

import jax
import jax.numpy as jnp
import numpy as np

from gmem.nn.attention import KVCache, advance_valid, dot_product_attention, make_mask, update_layer_cache


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


def test_grouped_query_attention_matches_repeated_heads():
    rng = np.random.RandomState(0)
    for heads, kv in [(4, 4), (6, 2), (8, 2), (3, 1)]:
        q = rng.randn(2, 5, heads, 8).astype(np.float32)
        k = rng.randn(2, 5, kv, 8).astype(np.float32)
        v = rng.randn(2, 5, kv, 8).astype(np.float32)
        mask = make_mask(jnp.arange(5), jnp.ones((2, 5), bool))
        out = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask)
        ref = _reference_attention(q, k, v, np.asarray(mask))
        np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)  # fp32 vs fp64 reference


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


def test_query_chunked_attention_equals_full_and_its_gradient():
    rng = np.random.RandomState(1)
    q = jnp.asarray(rng.randn(2, 64, 4, 8).astype(np.float32))
    k = jnp.asarray(rng.randn(2, 64, 2, 8).astype(np.float32))
    v = jnp.asarray(rng.randn(2, 64, 2, 8).astype(np.float32))
    mask = make_mask(jnp.arange(64), jnp.asarray(rng.rand(2, 64) > 0.2), window=20)
    full = lambda q: dot_product_attention(q, k, v, mask, q_chunk=None)
    chunked = lambda q: dot_product_attention(q, k, v, mask, q_chunk=16)
    np.testing.assert_allclose(np.asarray(chunked(q)), np.asarray(full(q)), atol=1e-6)
    g_full = jax.grad(lambda q: (full(q) ** 2).sum())(q)
    g_chunk = jax.grad(lambda q: (chunked(q) ** 2).sum())(q)
    np.testing.assert_allclose(np.asarray(g_chunk), np.asarray(g_full), atol=1e-5)
