"""Where a gmem memory search spends its time: each stage jitted and timed on its own.

Exact (gmem/memory/flat.py): key norms, the matmuls of all key blocks (one call), the grouped
top-k of one block times the blocks, the final merge, the whole search, and the host<->device
transfer of queries and results (numpy in, numpy out, as faiss). IVF (gmem/memory/ivf_search.py): coarse assignment, tiling of
the (query, list) pairs, and the list scans with the merge (the rest of the call). Each stage is
the best of `reps` alternating rounds (all stages and the whole search in each round, so they
see the same machine); total - sum(stages) is what the stages do not cover (loop and fusion
boundaries).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.alternate import alternate
from gmem.memory.flat import block_size, key_bias, scaled_queries
from gmem.memory.ivf_search import _tiles, tile_size
from gmem.memory.topk import grouped_top_k, merge_top_k


def _best_of(fns: dict, reps: int) -> dict:
    return {name: min(t) for name, t in alternate(fns, reps).items()}


def _ids_and_distances(mem, k):
    """mem.search without the result vectors (faiss returns none; XLA drops the gather)."""
    return jax.jit(lambda state, q: mem.search(state, q, k)[:2])


def exact_parts(mem, state, q_np: np.ndarray, k: int, reps: int) -> dict:
    """Seconds per stage of mem.search over all queries at once (exact path)."""
    q = jnp.asarray(q_np)
    m, nq = mem.size, q.shape[0]
    b, blocks = block_size(m, k, mem.key_block)
    bias = jax.jit(key_bias, static_argnums=2)
    hi = jax.lax.Precision.HIGHEST
    bias_M = bias(state.vectors_MD, state.valid_M, mem.metric)

    @jax.jit
    def matmuls(q, x, bias_M):
        # Every block's matmul and bias subtract, as flat_top_k runs them; each block's scores
        # are reduced to one max (the pass the grouped top-k's group maxima make anyway).
        def block(i):
            start = jnp.minimum(i * b, m - b)
            xb = jax.lax.dynamic_slice_in_dim(x, start, b)
            bb = jax.lax.dynamic_slice_in_dim(bias_M, start, b)
            return (jnp.einsum("qd,bd->qb", scaled_queries(q, mem.metric), xb, precision=hi) - bb[None]).max()
        return jax.lax.map(block, jnp.arange(blocks))

    s = jnp.einsum("qd,bd->qb", scaled_queries(q, mem.metric), state.vectors_MD[:b], precision=hi) - bias_M[None, :b]
    topk = jax.jit(grouped_top_k, static_argnums=1)
    cand = jnp.zeros((nq, blocks * k), jnp.float32) + jnp.arange(blocks * k, dtype=jnp.float32)
    ids = jnp.zeros((nq, blocks * k), jnp.int32)
    merge = jax.jit(merge_top_k, static_argnums=2)
    search = _ids_and_distances(mem, k)
    mm_name = f"matmul + bias ({blocks} blocks of [{nq},{q.shape[1]}]x[{q.shape[1]},{b}], one call)"
    tk_name = f"top-k ({blocks} blocks: one timed, times {blocks})"
    t = _best_of({
        "key norms + mask": lambda: bias(state.vectors_MD, state.valid_M, mem.metric).block_until_ready(),
        mm_name: lambda: matmuls(q, state.vectors_MD, bias_M).block_until_ready(),
        tk_name: lambda: topk(s, k)[0].block_until_ready(),
        "merge of the blocks": lambda: merge(cand, ids, k)[0].block_until_ready(),
        "total (mem.search, arrays on the device)": lambda: search(state, q)[0].block_until_ready(),
    }, reps)
    t[tk_name] *= blocks
    if blocks == 1:
        t["merge of the blocks"] = 0.0
    t["transfer (numpy queries in, numpy ids + distances out)"] = transfer(search, state, q_np, reps)
    return t


def transfer(search, state, q_np, reps):
    """Seconds to copy the queries onto the device and the ids + distances back, timed around
    (not inside) the search; fresh results each time, since a jax array caches its numpy copy."""
    out = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        q = jnp.asarray(q_np).block_until_ready()
        t_in = time.perf_counter() - t0
        res = jax.block_until_ready(search(state, q))
        t0 = time.perf_counter()
        [np.asarray(a) for a in res]
        out.append(t_in + time.perf_counter() - t0)
    return min(out[1:])


def ivf_parts(mem, state, q_np: np.ndarray, k: int, reps: int) -> tuple[dict, dict]:
    """Seconds per stage of the IVF search, and counts: vectors scored per query by gmem
    (whole tiles) and by faiss (each query scans its own lists)."""
    from gmem.memory.flat import flat_top_k
    q = jnp.asarray(q_np)
    cent = state.centroids_CD
    ones = jnp.ones(cent.shape[:1], bool)
    coarse = jax.jit(lambda q: flat_top_k(q, cent, ones, mem.nprobe, mem.metric)[1])
    tile = tile_size(q.shape[0], mem.nprobe, mem.nlist)
    tiles = jax.jit(lambda q: _tiles(coarse(q), mem.nlist, tile))
    search = _ids_and_distances(mem, k)
    t = _best_of({"coarse": lambda: coarse(q).block_until_ready(), "tiles": lambda: tiles(q)[0].block_until_ready(),
                  "total": lambda: search(state, q)[0].block_until_ready()}, reps)
    t_coarse, t_tiles, t_total = t["coarse"], t["tiles"], t["total"]
    probes = np.asarray(coarse(q))
    fill = np.asarray(state.ivf_fill_C)
    per_list = np.bincount(probes.reshape(-1), minlength=mem.nlist)
    gmem_scored = float((-(-per_list // tile) * tile * fill).sum()) / q.shape[0]
    faiss_scored = float(fill[probes].sum()) / q.shape[0]
    parts = {
        "coarse assignment (matmul with the centroids, top-nprobe)": t_coarse,
        "tiling (sort pairs by list, cut tiles)": max(t_tiles - t_coarse, 0.0),
        "list scans (matmul + running top-k per chunk) and merge": max(t_total - t_tiles, 0.0),
        "total (mem.search)": t_total,
    }
    return parts, {"gmem": gmem_scored, "faiss": faiss_scored, "tile": tile}
