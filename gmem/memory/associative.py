"""Associative memory as pure state: exact or IVF top-k search, ring-buffer add, remove, forget.

VardaGPT's memory (specs/gift-varda-regrad.md §2.1) was a FAISS index plus a numpy mirror,
mutated in place, outside autodiff. Here the memory is a pytree (`MemoryState`) and every
operation is a pure function state -> state with static shapes, so it runs inside `jit`, `scan`
and `vmap` (one memory per batch row: `jax.vmap(mem.search, in_axes=(0, 0, None))`), and
gradients flow into the stored vectors (a write is a scatter; a read is a gather).

Distances follow FAISS: squared L2 for metric "l2" (smaller is nearer), the inner product for
"ip" (larger is nearer). Empty result slots get index -1, distance +inf ("l2") or -inf ("ip")
and a zero vector (FAISS pads with -1 and +-FLT_MAX).

Exact search (gmem/memory/flat.py) is a blocked matmul with an exact top-k per key block.
IVF (`nlist > 0`; layout in gmem/memory/ivf.py, search in gmem/memory/ivf_search.py):
`train_ivf` runs k-means on the stored vectors and lays them out list-major (each list holds up
to `list_cap` vectors; `fit_lists` resizes the lists to the longest one after training); later
adds join the list of their nearest centroid; a search scores the queries against the centroids
and scans the `nprobe` nearest lists, grouped by list. `ivf_overflow` counts stored vectors the
index cannot see (their list was full); `rebuild_ivf` compacts the lists. With nprobe == nlist
and no overflow the result is the exact one. Before training all centroids are zero, the
original's state (it trained on zeros). An IVF memory of fewer than `exact_below` slots is
searched exactly (faster there, and recall 1). Memories split over devices:
gmem/memory/sharded.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np

from gmem.errors import GmemError
from gmem.memory import ivf
from gmem.memory.flat import KEY_BLOCK, flat_top_k
from gmem.memory.ivf_search import ivf_top_k

_HI = jax.lax.Precision.HIGHEST
_METRICS = ("l2", "ip")
# Below this many slots exact search is faster than IVF on CPU, and exact (the crossover table
# of bench/bench_memory_search.py, nlist = sqrt(N), nprobe 8, 1,024 queries, at load ~6 on 2
# cores: IVF 0.80x exact at 5k, 1.31x at 7k, 1.20x at 10k).
EXACT_BELOW = 6_000


@flax.struct.dataclass
class MemoryState:
    """The whole memory. Shapes for size M, dim D, nlist C (C = 0 without IVF).

    vectors_MD: float32 [M, D] stored vectors (stale in invalid slots).
    valid_M: bool [M] slot holds a vector.
    age_M: int32 [M] vectors written since this slot was written (0 = newest); the largest
      valid age is the oldest entry, the one a full memory replaces next.
    list_M: int32 [M] IVF list of the slot (0 without IVF).
    centroids_CD: float32 [C, D] IVF coarse centroids.
    pos_M, ivf_slot_CN, ivf_vec_CND, ivf_sq_CN, ivf_fill_C: the IVF lists (N = list_cap), see
      gmem/memory/ivf.py; empty ([0, ...] or [1]) without IVF.
    """

    vectors_MD: jax.Array
    valid_M: jax.Array
    age_M: jax.Array
    list_M: jax.Array
    centroids_CD: jax.Array
    pos_M: jax.Array
    ivf_slot_CN: jax.Array
    ivf_vec_CND: jax.Array
    ivf_sq_CN: jax.Array
    ivf_fill_C: jax.Array

    @property
    def count(self) -> jax.Array:
        """Number of stored vectors, int32 [] (or [...] for batched states)."""
        return self.valid_M.sum(-1, dtype=jnp.int32)


@dataclasses.dataclass(frozen=True)
class AssociativeMemory:
    """Static description of a memory; its methods are pure functions of a MemoryState.

    Args:
      size: number of slots M.
      dim: vector width D.
      metric: "l2" (squared Euclidean, FAISS IndexFlatL2) or "ip" (inner product).
      nlist: IVF lists (0 = exact search over all slots).
      nprobe: lists scanned per query.
      list_cap: capacity N of each IVF list; default 3 * ceil(M / nlist) + 16.
      query_chunk: queries searched at once; with key_block it bounds the score block
        [query_chunk, key_block] (16 MiB at the defaults).
      key_block: keys scored per matmul in an exact search (gmem/memory/flat.py).
      exact_below: an IVF memory with fewer slots is searched exactly (see `uses_ivf`).
    """

    size: int
    dim: int
    metric: str = "l2"
    nlist: int = 0
    nprobe: int = 1
    list_cap: Optional[int] = None
    query_chunk: int = 1024
    key_block: int = KEY_BLOCK
    exact_below: int = EXACT_BELOW

    def __post_init__(self):
        errors = []
        if self.size <= 0:
            errors.append(f"size must be positive, got {self.size}")
        if self.dim <= 0:
            errors.append(f"dim must be positive, got {self.dim}")
        if self.metric not in _METRICS:
            errors.append(f"metric must be one of {_METRICS}, got {self.metric!r}")
        if self.nlist < 0 or self.nlist > self.size:
            errors.append(f"nlist must be in [0, size={self.size}], got {self.nlist}")
        if self.nlist and not 1 <= self.nprobe <= self.nlist:
            errors.append(f"nprobe must be in [1, nlist={self.nlist}], got {self.nprobe}")
        if self.list_cap is not None and self.list_cap <= 0:
            errors.append(f"list_cap must be positive, got {self.list_cap}")
        if errors:
            raise GmemError("AssociativeMemory: " + "; ".join(errors))

    @property
    def cap(self) -> int:
        if self.list_cap is not None:
            return min(self.list_cap, self.size)
        return min(self.size, 3 * math.ceil(self.size / max(self.nlist, 1)) + 16)

    # ------------------------------------------------------------------ state

    def init(self, batch: tuple[int, ...] | int = ()) -> MemoryState:
        """An empty memory; `batch` adds leading axes (one independent memory per row)."""
        b = (batch,) if isinstance(batch, int) else tuple(batch)
        m, d, c = self.size, self.dim, self.nlist
        n = self.cap if c else 0
        return MemoryState(
            vectors_MD=jnp.zeros(b + (m, d), jnp.float32),
            valid_M=jnp.zeros(b + (m,), bool),
            age_M=jnp.zeros(b + (m,), jnp.int32),
            list_M=jnp.zeros(b + (m,), jnp.int32),
            centroids_CD=jnp.zeros(b + (c, d), jnp.float32),
            pos_M=jnp.full(b + ((m,) if c else (0,)), -1, jnp.int32),
            ivf_slot_CN=jnp.full(b + (c, n), -1, jnp.int32),
            ivf_vec_CND=jnp.zeros(b + (c, n, d), jnp.float32),
            ivf_sq_CN=jnp.zeros(b + (c, n), jnp.float32),
            ivf_fill_C=jnp.zeros(b + (c,), jnp.int32),
        )

    def _check(self, x: jax.Array, what: str, state: MemoryState) -> None:
        if x.ndim != 2 or x.shape[-1] != self.dim:
            raise GmemError(f"AssociativeMemory: {what} must be [N, dim={self.dim}], got shape {tuple(x.shape)}"
                            " (vmap over batch axes)")
        # Trace-time shape checks (chex): nothing is read from the device.
        msg = (f"AssociativeMemory(size={self.size}, dim={self.dim}): the state is not one memory of "
               "this size (a batched state needs jax.vmap)")
        chex.assert_shape(state.vectors_MD, (self.size, self.dim), custom_message=msg)
        chex.assert_shape([state.valid_M, state.age_M, state.list_M], (self.size,), custom_message=msg)

    # ------------------------------------------------------------------ scores

    def _score(self, q_QD: jax.Array, v_MD: jax.Array) -> jax.Array:
        """Similarity, larger = nearer: -squared L2 or the inner product. [Q, M] float32."""
        q = q_QD.astype(jnp.float32)
        v = v_MD.astype(jnp.float32)
        dots = jnp.einsum("qd,md->qm", q, v, precision=_HI)
        if self.metric == "ip":
            return dots
        qq = jnp.sum(q * q, -1)[:, None]
        vv = jnp.sum(v * v, -1)[None, :]
        return -jnp.maximum(qq - 2.0 * dots + vv, 0.0)

    def _finish(self, s_QK, idx_QK, state: MemoryState):
        """Top-k similarities and slots -> (indices, distances, vectors) with FAISS padding."""
        found = s_QK > -jnp.inf
        idx = jnp.where(found, idx_QK, -1).astype(jnp.int32)
        dist = -s_QK if self.metric == "l2" else s_QK
        vec = jnp.take(state.vectors_MD, jnp.maximum(idx, 0), axis=0)
        vec = jnp.where(found[..., None], vec, 0.0)
        return idx, dist, vec

    # ------------------------------------------------------------------ search

    def search(self, state: MemoryState, q_QD: jax.Array, k: int):
        """k nearest stored vectors of each query.

        Returns indices int32 [Q, k] (slot ids, -1 = none), distances float32 [Q, k]
        (squared L2 ascending, or inner product descending) and vectors float32 [Q, k, D]
        (zeros where index is -1; differentiable w.r.t. the stored vectors).
        """
        self._check(q_QD, "queries", state)
        if not 1 <= k <= self.size:
            raise GmemError(f"AssociativeMemory.search: k={k} must be in [1, size={self.size}]")
        if self.uses_ivf and k > self.nprobe * self.cap:
            raise GmemError(f"AssociativeMemory.search: k={k} exceeds nprobe*list_cap="
                            f"{self.nprobe * self.cap} candidates")
        if self.uses_ivf:
            s, i = _chunked(lambda q: ivf_top_k(self, state, q, k), q_QD, self.query_chunk)
        else:
            s, i = _chunked(lambda q: self._flat_topk(state, q, k), q_QD, self.query_chunk)
        return self._finish(s, i, state)

    @property
    def uses_ivf(self) -> bool:
        """Whether search scans IVF lists (else every slot, exactly). An IVF memory smaller than
        `exact_below` slots is searched exactly: there the full matmul is faster than probing
        (bench/RESULTS.md, memory search) and its recall is 1."""
        return bool(self.nlist) and self.size >= self.exact_below

    def _flat_topk(self, state, q_QD, k):
        return flat_top_k(q_QD, state.vectors_MD, state.valid_M, k, self.metric, self.key_block)

    def ivf_overflow(self, state: MemoryState) -> jax.Array:
        """Stored vectors an IVF search cannot see (their list was full when they came)."""
        return ivf.overflow(self, state) if self.nlist else jnp.zeros((), jnp.int32)

    def rebuild_ivf(self, state: MemoryState) -> MemoryState:
        """Compact the IVF lists from the current contents (after many removes or overflow)."""
        return ivf.rebuild(self, state) if self.nlist else state

    def fit_lists(self, state: MemoryState, slack: float = 1.0, multiple: int = 8):
        """(memory, state) with list_cap grown (or shrunk) to the longest list of `state` times
        slack, rounded up to `multiple`, and the lists rebuilt into it; no vector overflows.

        List capacity is a static shape, fixed before k-means decides the list sizes: train
        with a small cap, then fit (a search only reads each list up to its fill, so a larger
        cap costs memory, not time). Reads the list sizes on the host, so call it outside jit.
        Batched states (leading axes) get the longest list over all rows.
        """
        if not self.nlist:
            raise GmemError("AssociativeMemory.fit_lists: nlist is 0 (exact search has no lists)")
        m = self.size
        lists, valid = np.asarray(state.list_M).reshape(-1, m), np.asarray(state.valid_M).reshape(-1, m)
        longest = max(max(int(np.bincount(l[v], minlength=1).max()) for l, v in zip(lists, valid)), 1)
        cap = min(self.size, max(multiple, -(-math.ceil(longest * slack) // multiple) * multiple))
        mem = dataclasses.replace(self, list_cap=cap)
        fresh = mem.init(state.valid_M.shape[:-1])
        # Only the IVF layout depends on list_cap; the memory's own fields carry over.
        kept = fresh.replace(vectors_MD=state.vectors_MD, valid_M=state.valid_M, age_M=state.age_M,
                             list_M=state.list_M, centroids_CD=state.centroids_CD)
        rebuild = lambda st: ivf.rebuild(mem, st)
        for _ in range(state.valid_M.ndim - 1):
            rebuild = jax.vmap(rebuild)
        return mem, jax.jit(rebuild)(kept)

    def train_ivf(self, state: MemoryState, rng: jax.Array, iters: int = 20) -> MemoryState:
        """k-means (Lloyd) on the valid vectors; sets the centroids and every slot's list.

        Centroids start at nlist random valid vectors; a centroid that loses all its points
        keeps its position. Needs at least nlist stored vectors to be meaningful.
        """
        if not self.nlist:
            raise GmemError("AssociativeMemory.train_ivf: nlist is 0 (exact search has no index)")
        v, valid = state.vectors_MD, state.valid_M
        pick = jnp.where(valid, jax.random.uniform(rng, valid.shape), -1.0)
        cent = v[jax.lax.top_k(pick, self.nlist)[1]]
        w = valid.astype(jnp.float32)[:, None]

        def step(_, c):
            a = jnp.argmax(self._score(v, c), axis=-1)
            sums = jax.ops.segment_sum(v * w, a, self.nlist)
            n = jax.ops.segment_sum(w, a, self.nlist)
            return jnp.where(n > 0, sums / jnp.maximum(n, 1.0), c)

        cent = jax.lax.fori_loop(0, iters, step, cent)
        lists = jnp.argmax(self._score(v, cent), axis=-1).astype(jnp.int32)
        return ivf.rebuild(self, state.replace(centroids_CD=cent, list_M=lists))

    # ------------------------------------------------------------------ writes

    def add(self, state: MemoryState, x_ND: jax.Array, mask_N: jax.Array | None = None) -> MemoryState:
        """Write the rows of x (those with mask set) in order: into free slots first, then over
        the oldest entries (ring buffer). If more than M rows are written, the last M survive."""
        self._check(x_ND, "vectors", state)
        n, m = x_ND.shape[0], self.size
        if mask_N is not None:
            chex.assert_shape(mask_N, (n,))
        mask = jnp.ones((n,), bool) if mask_N is None else mask_N.astype(bool)
        rank = jnp.cumsum(mask.astype(jnp.int32)) - 1
        total = mask.sum(dtype=jnp.int32)
        drop = jnp.maximum(total - m, 0)
        keep = mask & (rank >= drop)
        eff = rank - drop  # 0 .. written-1 for kept rows
        written = total - drop
        # Free slots (lowest index first), then valid slots from oldest to newest.
        big = jnp.iinfo(jnp.int32).max
        order = jnp.argsort(jnp.where(state.valid_M, -state.age_M, -big), stable=True)
        target = jnp.where(keep, order[jnp.clip(eff, 0, m - 1)], m)  # m = dropped by the scatter
        vectors = state.vectors_MD.at[target].set(x_ND.astype(jnp.float32), mode="drop")
        valid = state.valid_M.at[target].set(True, mode="drop")
        age = jnp.where(state.valid_M, state.age_M + written, 0).at[target].set(written - 1 - eff, mode="drop")
        lists = state.list_M
        if self.nlist:
            new = jnp.argmax(self._score(x_ND, state.centroids_CD), axis=-1).astype(jnp.int32)
            state = ivf.insert(self, state, target, x_ND, keep, new)  # reads the old lists
            lists = lists.at[target].set(new, mode="drop")
        return state.replace(vectors_MD=vectors, valid_M=valid, age_M=age, list_M=lists)

    def remove(self, state: MemoryState, indices: jax.Array) -> MemoryState:
        """Invalidate the slots in `indices` (any shape; -1 entries are ignored)."""
        idx = jnp.asarray(indices, jnp.int32).reshape(-1)
        idx = jnp.where(idx < 0, self.size, idx)
        return state.replace(valid_M=state.valid_M.at[idx].set(False, mode="drop"))

    def remove_near(self, state: MemoryState, q_QD: jax.Array, threshold: float) -> MemoryState:
        """Invalidate every stored vector within `threshold` of any query: squared L2 <=
        threshold ("l2"), or inner product >= threshold ("ip")."""
        self._check(q_QD, "queries", state)
        s = self._score(q_QD, state.vectors_MD)
        hit = (s >= -threshold) if self.metric == "l2" else (s >= threshold)
        return state.replace(valid_M=state.valid_M & ~hit.any(0))

    def forget(self, state: MemoryState, factor: float, rng: jax.Array | None = None) -> MemoryState:
        """Drop floor(count * factor) stored vectors: uniformly at random when rng is given
        (the original's forget_randomly), else the oldest ones."""
        n = jnp.floor(state.count.astype(jnp.float32) * factor).astype(jnp.int32)
        if rng is None:
            key = -state.age_M.astype(jnp.float32)
        else:
            key = jax.random.uniform(rng, state.valid_M.shape)
        key = jnp.where(state.valid_M, key, jnp.inf)
        rank = jnp.argsort(jnp.argsort(key, stable=True), stable=True)
        return state.replace(valid_M=state.valid_M & (rank >= n))

    def decay(self, state: MemoryState, factor: float) -> MemoryState:
        """Scale every stored vector by factor (the original's age_memory)."""
        return state.replace(vectors_MD=state.vectors_MD * factor, ivf_vec_CND=state.ivf_vec_CND * factor,
                             ivf_sq_CN=state.ivf_sq_CN * factor * factor)

    def garbage_collect(self, state: MemoryState, threshold: float = 1e-6) -> MemoryState:
        """Invalidate stored vectors whose L2 norm is below threshold."""
        norm = jnp.linalg.norm(state.vectors_MD, axis=-1)
        return state.replace(valid_M=state.valid_M & (norm >= threshold))


def _chunked(fn, q_QD: jax.Array, chunk: int):
    """fn over row blocks of q (padded to a multiple of chunk), so peak memory is O(chunk)."""
    q = q_QD.shape[0]
    if q <= chunk:
        return fn(q_QD)
    blocks = -(-q // chunk)
    pad = jnp.pad(q_QD, ((0, blocks * chunk - q), (0, 0))).reshape(blocks, chunk, -1)
    s, i = jax.lax.map(fn, pad)
    return s.reshape(blocks * chunk, -1)[:q], i.reshape(blocks * chunk, -1)[:q]
