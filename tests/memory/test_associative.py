"""AssociativeMemory: search against faiss-cpu and numpy brute force, IVF recall, add / remove /
forget semantics, static shapes under jit and vmap, gradients, and config errors."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmem.errors import GmemError
from gmem.memory import AssociativeMemory

faiss = pytest.importorskip("faiss")

D = 24


def _data(n, q=64, seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal((n, D)).astype(np.float32), r.standard_normal((q, D)).astype(np.float32)


def _filled(mem, x):
    return jax.jit(mem.add)(mem.init(), jnp.asarray(x))


def _trained(mem, x, seed, iters=10):
    # jit the whole fill + k-means: eager dispatch op by op is what makes a test slow on CI.
    fill_train = jax.jit(lambda x, key: mem.train_ivf(mem.add(mem.init(), x), key, iters))
    state = fill_train(jnp.asarray(x), jax.random.key(seed))
    return state, int(jax.jit(mem.ivf_overflow)(state))


def _search(mem, state, q, k):
    return jax.jit(mem.search, static_argnames="k")(state, jnp.asarray(q), k=k)


def _assert_same_neighbours(idx, dist, ref_i, ref_d, tol=1e-4):
    """Indices equal; where float ties reorder them, distances still agree (tol relative)."""
    idx, dist = np.asarray(idx), np.asarray(dist)
    np.testing.assert_allclose(dist, ref_d, rtol=tol, atol=tol)
    assert (idx == ref_i).mean() > 0.999


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_flat_search_matches_faiss(metric):
    x, q = _data(1500, 100)
    mem = AssociativeMemory(2000, D, metric=metric, query_chunk=32)  # chunked path (100 > 32)
    idx, dist, vec = _search(mem, _filled(mem, x), q, 8)
    ref = faiss.IndexFlatL2(D) if metric == "l2" else faiss.IndexFlatIP(D)
    ref.add(x)
    ref_d, ref_i = ref.search(q, 8)
    _assert_same_neighbours(idx, dist, ref_i, ref_d)
    np.testing.assert_array_equal(np.asarray(vec), x[np.asarray(idx)])


class BruteForceTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_search_equals_brute_force_with_holes_and_padding(self):
        x, q = _data(40, 10)
        mem = AssociativeMemory(64, D)
        fill = self.variant(lambda x: mem.remove(mem.add(mem.init(), x), jnp.arange(0, 40, 3)))
        state = fill(jnp.asarray(x))                            # 26 vectors left in 64 slots
        keep = np.setdiff1d(np.arange(40), np.arange(0, 40, 3))
        idx, dist, vec = self.variant(lambda s, q: mem.search(s, q, 30))(state, jnp.asarray(q))
        d2 = ((q[:, None, :] - x[None, keep, :]) ** 2).sum(-1)  # k > stored: 4 padded results per query
        order = np.argsort(d2, axis=1)
        np.testing.assert_array_equal(np.asarray(idx)[:, :26], keep[order])
        # max d2 ~90: 1e-5 relative to each distance plus 1e-5 absolute (~1e-7 of the max)
        np.testing.assert_allclose(np.asarray(dist)[:, :26], np.take_along_axis(d2, order, 1), rtol=1e-5, atol=1e-5)
        assert (np.asarray(idx)[:, 26:] == -1).all() and np.isinf(np.asarray(dist)[:, 26:]).all()
        assert (np.asarray(vec)[:, 26:] == 0).all()


def _ivf_reference(centroids, x, nprobe, q, k):
    quantizer = faiss.IndexFlatL2(D)
    quantizer.add(np.asarray(centroids))
    index = faiss.IndexIVFFlat(quantizer, D, centroids.shape[0])
    index.is_trained = True  # our k-means centroids, so both sides use the same lists
    index.add(x)
    index.nprobe = nprobe
    return index.search(q, k)


def test_ivf_matches_faiss_ivfflat():
    x, q = _data(2000, 80)
    mem = AssociativeMemory(2000, D, nlist=16, nprobe=3, exact_below=0)
    state, overflow = _trained(mem, x, 0)
    assert overflow == 0  # default list_cap holds every list here
    idx, dist, _ = _search(mem, state, q, 10)
    ref_d, ref_i = _ivf_reference(state.centroids_CD, x, 3, q, 10)
    _assert_same_neighbours(idx, dist, ref_i, ref_d)
    # Probing 3 of 16 lists loses some true neighbours (so the IVF path really is pruning).
    exact = faiss.IndexFlatL2(D)
    exact.add(x)
    assert (np.asarray(idx) == exact.search(q, 10)[1]).mean() < 0.99


def test_ivf_recall_is_one_when_nprobe_equals_nlist():
    x, q = _data(2000, 50, seed=1)
    mem = AssociativeMemory(2048, D, nlist=8, nprobe=8, exact_below=0)
    state, overflow = _trained(mem, x, 1)
    assert overflow == 0
    idx, _, _ = _search(mem, state, q, 10)
    exact = faiss.IndexFlatL2(D)
    exact.add(x)
    assert (np.asarray(idx) == exact.search(q, 10)[1]).mean() == 1.0
    # Vectors added after training join their nearest list and are found too.
    y, _ = _data(40, seed=2)
    state = jax.jit(mem.add)(state, jnp.asarray(y))
    idx, dist, _ = _search(mem, state, y[:5], 1)
    np.testing.assert_array_equal(np.asarray(idx)[:, 0], np.arange(2000, 2005))
    np.testing.assert_allclose(np.asarray(dist)[:, 0], 0.0, atol=1e-4)


def test_ivf_list_cap_truncates_and_reports_overflow():
    x, q = _data(500, 5)
    mem = AssociativeMemory(512, D, nlist=4, nprobe=4, list_cap=50, exact_below=0)
    state, overflow = _trained(mem, x, 0)
    assert overflow == 500 - 4 * 50  # every list is longer than 50
    idx, _, _ = _search(mem, state, q, 5)
    assert (np.asarray(idx) >= 0).all()


def test_ivf_lists_follow_overwrites_and_removals():
    """Ring-buffer overwrites and removals after training: full-probe IVF still equals the exact
    search over what the memory holds now; rebuild_ivf compacts the holes they leave."""
    x, q = _data(700, 20, seed=3)
    mem = AssociativeMemory(300, D, nlist=4, nprobe=4, list_cap=300, exact_below=0)
    flat = AssociativeMemory(300, D)

    @jax.jit
    def run(x, key):
        s = mem.train_ivf(mem.add(mem.init(), x[:300]), key, 5)
        for i in range(300, 700, 100):  # 400 more writes replace every entry, oldest first
            s = mem.add(s, x[i:i + 100])
        s = mem.remove(s, jnp.arange(0, 300, 7))
        return s, mem.rebuild_ivf(s)

    state, rebuilt = run(jnp.asarray(x), jax.random.key(0))
    exact = flat.search(state, jnp.asarray(q), 5)  # flat search reads only vectors and validity
    for s in (state, rebuilt):
        idx, dist, _ = _search(mem, s, q, 5)
        np.testing.assert_array_equal(np.asarray(idx), np.asarray(exact[0]))
        np.testing.assert_allclose(np.asarray(dist), np.asarray(exact[1]), rtol=1e-5, atol=1e-4)
    assert int(state.ivf_fill_C.sum()) > int(rebuilt.ivf_fill_C.sum()) == int(state.count)


def test_add_ring_buffer_replaces_oldest():
    mem = AssociativeMemory(4, 2)
    add, remove = jax.jit(mem.add), jax.jit(mem.remove)
    v = lambda *r: jnp.asarray(r, jnp.float32).reshape(-1, 1) * jnp.ones((1, 2))
    s = add(mem.init(), v(1, 2, 3))
    np.testing.assert_array_equal(np.asarray(s.age_M), [2, 1, 0, 0])
    s = add(s, v(4, 5))  # one free slot, then the oldest (1) is overwritten
    np.testing.assert_array_equal(np.asarray(s.vectors_MD[:, 0]), [5, 2, 3, 4])
    np.testing.assert_array_equal(np.asarray(s.age_M), [0, 3, 2, 1])
    s = remove(s, jnp.array([2, -1]))  # slot 2 freed; -1 ignored
    s = add(s, v(6, 7))  # free slot 2 first, then the oldest valid slot (1)
    np.testing.assert_array_equal(np.asarray(s.vectors_MD[:, 0]), [5, 7, 6, 4])
    assert int(s.count) == 4
    # Masked rows are skipped; more than M writes keep the last M in order.
    s = add(s, v(10, 11, 12, 13, 14, 15), mask_N=jnp.array([1, 0, 1, 1, 1, 1]))
    vals = np.asarray(s.vectors_MD[:, 0])
    assert sorted(vals) == [12, 13, 14, 15]
    np.testing.assert_array_equal(np.asarray(s.age_M)[np.argsort(vals)], [3, 2, 1, 0])


def test_remove_near_forget_decay_garbage_collect():
    x, _ = _data(100)
    mem = AssociativeMemory(128, D)
    s = _filled(mem, x)
    mem_ops = {n: jax.jit(getattr(mem, n)) for n in ("remove_near", "decay", "garbage_collect", "add")}
    s2 = mem_ops["remove_near"](s, jnp.asarray(x[:3] + 1e-3), threshold=1e-3)
    np.testing.assert_array_equal(np.flatnonzero(~np.asarray(s2.valid_M[:100])), [0, 1, 2])
    ip = AssociativeMemory(128, D, metric="ip")
    s3 = ip.remove_near(s, jnp.asarray(x[:1]), threshold=float(x[0] @ x[0]) - 1e-3)
    assert not bool(s3.valid_M[0]) and int(s3.count) >= 90
    # Random forgetting drops floor(count * factor) entries, a different set per key.
    forget = jax.jit(mem.forget)
    f1 = forget(s, 0.05, jax.random.key(0))
    f2 = forget(s, 0.05, jax.random.key(1))
    assert int(f1.count) == 100 - math.floor(100 * 0.05) == int(f2.count)
    assert (np.asarray(f1.valid_M) != np.asarray(f2.valid_M)).any()
    assert int(forget(s, 0.001, jax.random.key(0)).count) == 100  # floor(0.1) = 0
    # Without a key the oldest go: the first five written.
    old = jax.jit(mem.forget)(s, 0.05)
    np.testing.assert_array_equal(np.flatnonzero(~np.asarray(old.valid_M[:100])), np.arange(5))
    np.testing.assert_allclose(np.asarray(mem_ops["decay"](s, 0.5).vectors_MD), np.asarray(s.vectors_MD) * 0.5)
    tiny = mem_ops["add"](s, jnp.asarray(x[:4] * 1e-7))
    assert int(mem_ops["garbage_collect"](tiny).count) == 100


def test_static_shapes_under_jit_and_vmap():
    mem = AssociativeMemory(32, D)
    traces = []

    @jax.jit
    def step(state, x, mask, q, rng):
        traces.append(1)
        state = mem.add(state, x, mask)
        idx, dist, vec = mem.search(state, q, 4)
        state = mem.remove(state, idx[:, 0])
        return mem.forget(state, 0.1, rng), idx, vec

    batched = jax.jit(jax.vmap(step))
    state = mem.init(batch=3)
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), state)
    for i in range(3):
        x, q = _data(3 * 10, 3 * 2, seed=i)
        mask = (np.arange(30) % (i + 2) != 0).reshape(3, 10)  # a different number of writes each call
        state, idx, vec = batched(state, jnp.asarray(x).reshape(3, 10, D), jnp.asarray(mask),
                                  jnp.asarray(q).reshape(3, 2, D), jax.random.split(jax.random.key(i), 3))
        assert jax.tree.map(lambda a: (a.shape, a.dtype), state) == shapes
        assert idx.shape == (3, 2, 4) and vec.shape == (3, 2, 4, D)
    assert len(traces) == 1  # one trace for all calls: no data-dependent shapes


def test_gradient_reaches_written_vectors():
    mem = AssociativeMemory(8, D)
    x, q = _data(4, 2)

    def loss(x):
        state = mem.add(mem.init(), x)
        _, _, vec = mem.search(state, jnp.asarray(q), 2)
        return jnp.sum(vec ** 2)

    g = jax.jit(jax.grad(loss))(jnp.asarray(x))
    assert float(jnp.abs(g).sum()) > 0


def test_bad_configs_are_clear_errors():
    mem = AssociativeMemory(16, D)
    with pytest.raises(GmemError, match="k=17"):
        mem.search(mem.init(), jnp.zeros((2, D)), 17)
    with pytest.raises(GmemError, match=r"dim=24"):
        mem.search(mem.init(), jnp.zeros((2, D + 1)), 2)
    with pytest.raises(GmemError, match="dim=24"):
        mem.add(mem.init(), jnp.zeros((2, 3)))
    with pytest.raises(GmemError, match="nprobe"):
        AssociativeMemory(16, D, nlist=4, nprobe=5)
    with pytest.raises(GmemError, match="metric"):
        AssociativeMemory(16, D, metric="cosine")
    with pytest.raises(GmemError, match="train_ivf"):
        mem.train_ivf(mem.init(), jax.random.key(0))


def test_state_shapes_are_checked_at_trace_time():
    """A batched state used without vmap, or a mask of another length, fails while tracing
    (chex; abstract inputs suffice, nothing runs)."""
    mem = AssociativeMemory(16, D)
    batched = jax.eval_shape(lambda: mem.init(batch=3))
    q = jax.ShapeDtypeStruct((2, D), jnp.float32)
    with pytest.raises(AssertionError, match="shape"):
        jax.eval_shape(lambda s, q: mem.search(s, q, 2), batched, q)
    with pytest.raises(AssertionError, match="shape"):
        jax.eval_shape(lambda s, x: mem.add(s, x, jnp.ones((3,), bool)), mem.init(), q)
    jax.eval_shape(jax.vmap(lambda s, q: mem.search(s, q, 2)), batched,
                   jax.ShapeDtypeStruct((3, 2, D), jnp.float32))
