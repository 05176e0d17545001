"""IVF search grouped by list: every probed list is read once per tile of the queries that probe
it, and scored with one matmul, instead of once per query with a matrix-vector product.

faiss IndexIVFFlat walks query by query: for each of its nprobe lists it computes the list's
distances to that one query (memory-bound: a list of N vectors is read for every query that
probes it). Here, for Q queries and P = nprobe:

1. Coarse assignment: one [Q, D] x [D, C] matmul and top-P per query (Q*P (query, list) pairs).
2. Pairs are sorted by list and cut into tiles of `tile` pairs of one list (`tile_size`) (a list probed by
   n queries gives ceil(n / tile) tiles). The number of tiles is data-dependent but bounded by
   ceil(Q*P / tile) + min(C, Q*P), so the loop over tiles has a static length; tiles past the
   real ones do no work.
3. A tile reads its list in chunks of `chunk` vectors, only up to the list's fill (the list's
   capacity N is padding that costs memory, not time): one [tile, D] x [D, chunk] matmul and a
   running top-k per chunk. The chunk loop has a data-dependent trip count (a while loop).
4. Each pair's k best go back to their query; a query's P*k candidates are merged (a slot lives
   in one list, so no id repeats).

The list layout (ivf_vec_CND / ivf_sq_CN / ivf_slot_CN / ivf_fill_C) is gmem/memory/ivf.py's.
The scores are those of gmem/memory/flat.py (2 q.k - ||k||^2, +inf bias on dead entries), so
with nprobe == nlist and no overflow the result is the exact search's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gmem.memory.flat import flat_top_k, scaled_queries, to_similarity
from gmem.memory.topk import merge_top_k

_HI = jax.lax.Precision.HIGHEST
TILE = 32    # most pairs per tile: smaller wastes less on lists probed by few queries
CHUNK = 128  # list vectors per matmul (tuned on CPU at dim 576: 128 and 256 within noise)


def tile_size(queries: int, nprobe: int, nlist: int, most: int = TILE) -> int:
    """Pairs per tile: the mean number of queries probing a list, rounded down to a power of
    two, at most `most`. Rounding down pads less (at 100k vectors, 316 lists, 1,024 queries x 8
    probes: tiles of 16 score 7.6k vectors per query, tiles of 32 score 8.9k, faiss 6.5k) and was
    no slower; a handful of queries (one token's search) gets tiles of 1, not 32 rows of padding."""
    mean = max(queries * nprobe // nlist, 1)
    return min(most, 1 << (mean.bit_length() - 1))


def _tiles(probes_QP: jax.Array, nlist: int, tile: int):
    """Cut the (query, list) pairs, sorted by list, into tiles of one list each.

    Returns list_R int32 (nlist = unused tile), pair_RT int32 (flat pair id q*P + p) and
    ok_RT bool, for R = ceil(Q*P / tile) + min(nlist, Q*P) tiles.
    """
    pairs = probes_QP.size
    lst = probes_QP.reshape(-1)
    order = jnp.argsort(lst, stable=True).astype(jnp.int32)
    cnt_C = jnp.bincount(lst, length=nlist)
    pstart_C = jnp.cumsum(cnt_C) - cnt_C
    ntile_C = -(-cnt_C // tile)
    tend_C = jnp.cumsum(ntile_C)
    r = -(-pairs // tile) + min(nlist, pairs)
    t_R = jnp.arange(r, dtype=jnp.int32)
    list_R = jnp.searchsorted(tend_C, t_R, side="right").astype(jnp.int32)  # nlist past the end
    c = jnp.minimum(list_R, nlist - 1)
    within_RT = (t_R - (tend_C[c] - ntile_C[c]))[:, None] * tile + jnp.arange(tile, dtype=jnp.int32)
    ok_RT = (list_R[:, None] < nlist) & (within_RT < cnt_C[c][:, None])
    row = jnp.clip(pstart_C[c][:, None] + within_RT, 0, pairs - 1)
    return list_R, order[row], ok_RT


def ivf_top_k(mem, state, q_QD: jax.Array, k: int, tile: int | None = None, chunk: int = CHUNK):
    """k best indexed vectors in each query's nprobe nearest lists.

    Returns (similarity float32 [Q, k] descending: -squared L2 or inner product, -inf where
    nothing was found; slot ids int32 [Q, k]). tile None = tile_size(Q, nprobe, nlist).
    """
    c_n, n, p = mem.nlist, mem.cap, mem.nprobe
    nq = q_QD.shape[0]
    tile = tile or tile_size(nq, p, c_n)
    cent = state.centroids_CD
    # Coarse assignment: exact top-nprobe over the centroids (one matmul).
    _, probes_QP = flat_top_k(q_QD, cent, jnp.ones(cent.shape[:1], bool), p, mem.metric)
    list_R, pair_RT, ok_RT = _tiles(probes_QP, c_n, tile)

    q2 = scaled_queries(q_QD, mem.metric)
    b = min(chunk, n)
    vec = state.ivf_vec_CND.reshape(c_n * n, -1)  # list c holds rows [c*n, c*n + fill_c)
    sq = state.ivf_sq_CN.reshape(-1) if mem.metric == "l2" else jnp.zeros((c_n * n,), jnp.float32)
    slot = state.ivf_slot_CN.reshape(-1)
    fill = jnp.concatenate([state.ivf_fill_C, jnp.zeros((1,), jnp.int32)])  # unused tile: empty

    def one_tile(args):
        c, pair_T = args
        qt = q2[pair_T // p]  # [tile, D]
        lo, hi = c * n, c * n + fill[c]

        def step(j, carry):
            v, ids = carry
            want = lo + j * b
            start = jnp.minimum(want, c_n * n - b)  # static-size slice; shifted rows are masked
            pos = start + jnp.arange(b)
            sl = jax.lax.dynamic_slice_in_dim(slot, start, b)
            live = (pos >= want) & (pos < hi) & (sl >= 0) & state.valid_M[jnp.maximum(sl, 0)]
            bias = jnp.where(live, jax.lax.dynamic_slice_in_dim(sq, start, b), jnp.inf)
            keys = jax.lax.dynamic_slice_in_dim(vec, start, b)
            s = jnp.einsum("td,bd->tb", qt, keys, precision=_HI) - bias[None, :]
            return merge_top_k(jnp.concatenate([v, s], 1),
                               jnp.concatenate([ids, jnp.broadcast_to(sl, s.shape)], 1), k)

        init = (jnp.full((tile, k), -jnp.inf, jnp.float32), jnp.full((tile, k), -1, jnp.int32))
        return jax.lax.fori_loop(0, -(-fill[c] // b), step, init)

    v_RTK, i_RTK = jax.lax.map(one_tile, (list_R, pair_RT))
    dest = jnp.where(ok_RT, pair_RT, nq * p).reshape(-1)  # nq*p = dropped
    v = jnp.full((nq * p, k), -jnp.inf, jnp.float32).at[dest].set(v_RTK.reshape(-1, k), mode="drop")
    ids = jnp.full((nq * p, k), -1, jnp.int32).at[dest].set(i_RTK.reshape(-1, k), mode="drop")
    v, ids = merge_top_k(v.reshape(nq, p * k), ids.reshape(nq, p * k), k)
    return to_similarity(v, q_QD, mem.metric), ids
