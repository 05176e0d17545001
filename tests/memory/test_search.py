"""Search internals: blocked exact search against a float64 numpy brute force, the grouped
top-k against lax.top_k, IVF recall at the benchmark's settings, fit_lists, IVF under vmap, and
the automatic choice of exact search for small IVF memories."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmem.memory import AssociativeMemory
from gmem.memory.flat import block_size, flat_top_k
from gmem.memory.topk import grouped_top_k

EPS32 = np.finfo(np.float32).eps


def _clustered(n, q, dim, seed=0, centers=256):
    """bench/bench_memory_search.py's data: a mixture of Gaussians (IVF lists mean something)."""
    r = np.random.default_rng(seed)
    c = r.standard_normal((centers, dim)).astype(np.float32) * 2
    x = (c[r.integers(0, centers, n)] + r.standard_normal((n, dim))).astype(np.float32)
    y = (c[r.integers(0, centers, q)] + r.standard_normal((q, dim))).astype(np.float32)
    return x, y


def _brute_force(x, q, k):
    """Exact squared L2 in float64: (ids [Q, k+1], distances [Q, k+1]) ascending."""
    d = ((q.astype(np.float64)[:, None, :] - x.astype(np.float64)[None]) ** 2).sum(-1)
    ids = np.argsort(d, axis=1, kind="stable")[:, :k + 1]
    return ids, np.take_along_axis(d, ids, 1)


@pytest.mark.parametrize("key_block,group", [(1024, 16), (700, 16), (3000, 16), (3000, 1)])
def test_exact_search_equals_float64_brute_force(key_block, group):
    """3000 keys of dim 576: 3 or 5 blocks (1008 or 608 keys), the last shifted back over the
    previous one; one block of 3000 (not a multiple of the group: padded); plain lax.top_k."""
    d, k = 576, 10
    x, q = _clustered(3000, 300, d, seed=1)
    valid = np.ones(3000, bool)
    valid[::7] = False  # holes: never returned
    s, ids = jax.jit(lambda q, x, v: flat_top_k(q, x, v, k, "l2", key_block, group))(
        jnp.asarray(q), jnp.asarray(x), jnp.asarray(valid))
    dist, ids = -np.asarray(s), np.asarray(ids)
    keep = np.flatnonzero(valid)
    ref_i, ref_d = _brute_force(x[keep], q, k)
    ref_i = keep[ref_i]
    # Tolerance scaled to the magnitudes: fp32 ||q||^2 + ||k||^2 - 2 q.k rounds off a few
    # eps * (||q||^2 + ||k||^2) (7.5x at most here); the bound is sqrt(D) = 24 times that.
    scale = (q.astype(np.float64) ** 2).sum(1)[:, None] + (x[ref_i[:, :k]].astype(np.float64) ** 2).sum(-1)
    tol = math.sqrt(d) * EPS32 * scale
    assert (np.abs(dist - ref_d[:, :k]) <= tol).all()
    # Ids identical wherever no two of the k+1 nearest are closer than the tolerance (a tie).
    gaps = np.diff(ref_d, axis=1)
    tie_free = (gaps > 2 * tol.max(1, keepdims=True)).all(1)
    assert tie_free.mean() > 0.9
    np.testing.assert_array_equal(ids[tie_free], ref_i[tie_free, :k])


def test_block_size_covers_the_keys_with_little_overlap():
    for m in (10, 600, 3000, 8192, 8193, 10_000, 100_000):
        for kb in (128, 1000, 8192):
            b, n = block_size(m, 10, kb)
            assert b * n >= m and b <= max(m, 10) and (n == 1 or b <= -(-kb // 16) * 16)
            assert b * n - m < 16 * n  # the last block repeats fewer than 16 keys per block
    assert block_size(10_000, 10, 8192) == (5008, 2)


def test_memory_search_uses_the_blocked_path_and_pads():
    """AssociativeMemory.search with small key blocks and query chunks == brute force."""
    x, q = _clustered(500, 70, 32, seed=2)
    mem = AssociativeMemory(600, 32, query_chunk=32, key_block=128)
    state = jax.jit(mem.add)(mem.init(), jnp.asarray(x))
    idx, dist, vec = jax.jit(mem.search, static_argnames="k")(state, jnp.asarray(q), k=10)
    ref_i, ref_d = _brute_force(x, q, 10)
    np.testing.assert_array_equal(np.asarray(idx), ref_i[:, :10])
    np.testing.assert_allclose(np.asarray(dist), ref_d[:, :10], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(vec), x[np.asarray(idx)])


def test_grouped_top_k_is_exact():
    r = np.random.default_rng(0)
    s = jnp.asarray(r.standard_normal((50, 4096)).astype(np.float32))
    s = s.at[:, 100].set(jnp.inf).at[:3].set(-jnp.inf)  # +inf wins; all -inf rows still return k
    v, i = grouped_top_k(s, 10, 16)
    rv, ri = jax.lax.top_k(s, 10)
    np.testing.assert_array_equal(np.asarray(v), np.asarray(rv))
    np.testing.assert_array_equal(np.asarray(i[3:]), np.asarray(ri[3:]))
    # Ties: values equal to lax.top_k's even where the ids differ.
    t = jnp.asarray(r.integers(0, 20, (20, 1024)).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(grouped_top_k(t, 10, 16)[0]), np.asarray(jax.lax.top_k(t, 10)[0]))
    # A width that is not a multiple of the group is padded with -inf; padding is never returned
    # while k scores are finite, and ids stay in range when they are not.
    u = s[:, :1000].at[5, 3:].set(-jnp.inf)
    v, i = grouped_top_k(u, 10, 16)
    np.testing.assert_array_equal(np.asarray(v), np.asarray(jax.lax.top_k(u, 10)[0]))
    assert int(i.max()) < 1000 and np.isinf(np.asarray(v[5, 3:])).all()


def _ivf_state(n, d, q, seed=0, nprobe=8):
    x, y = _clustered(n, q, d, seed)
    nlist = round(math.sqrt(n))
    mem = AssociativeMemory(n, d, nlist=nlist, nprobe=nprobe, list_cap=2 * math.ceil(n / nlist), exact_below=0)
    state = jax.jit(lambda x, key: mem.train_ivf(mem.add(mem.init(), x), key, 10))(jnp.asarray(x), jax.random.key(seed))
    return mem, state, x, y


def test_ivf_recall_at_bench_settings_after_fit_lists():
    """The bench's data, nlist = sqrt(N), nprobe 8, k 10, dim 576, at N = 4000: recall >= 0.95
    against exact search once fit_lists has made room for the longest list."""
    mem, state, x, y = _ivf_state(4000, 576, 200)
    mem2, state2 = mem.fit_lists(state)
    assert int(jax.jit(mem2.ivf_overflow)(state2)) == 0 and mem2.cap <= mem.size
    assert int(state2.ivf_fill_C.sum()) == 4000
    ref_i, _ = _brute_force(x, y, 10)
    idx = np.asarray(jax.jit(mem2.search, static_argnames="k")(state2, jnp.asarray(y), k=10)[0])
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, ref_i[:, :10])])
    assert recall >= 0.95, recall
    # The list layout is all that changed: same vectors, validity and lists.
    np.testing.assert_array_equal(np.asarray(state2.list_M), np.asarray(state.list_M))


def test_ivf_search_under_vmap_equals_per_row():
    mem, s0, _, y = _ivf_state(600, 16, 20, seed=3, nprobe=3)
    _, s1, _, _ = _ivf_state(600, 16, 20, seed=4, nprobe=3)
    batched = jax.tree.map(lambda a, b: jnp.stack([a, b]), s0, s1)
    search = jax.jit(jax.vmap(mem.search, (0, 0, None)), static_argnums=2)
    idx, dist, _ = search(batched, jnp.stack([jnp.asarray(y)] * 2), 5)
    for row, st in enumerate((s0, s1)):
        ri, rd, _ = jax.jit(mem.search, static_argnames="k")(st, jnp.asarray(y), k=5)
        np.testing.assert_array_equal(np.asarray(idx[row]), np.asarray(ri))
        np.testing.assert_allclose(np.asarray(dist[row]), np.asarray(rd), rtol=1e-6)


def test_small_ivf_memories_search_exactly():
    assert not AssociativeMemory(1000, 8, nlist=10, nprobe=2).uses_ivf  # below exact_below
    assert AssociativeMemory(1000, 8, nlist=10, nprobe=2, exact_below=0).uses_ivf
    assert not AssociativeMemory(10**6, 8).uses_ivf  # no lists
