"""Memories past one device: the slot axis M (the `memory` logical axis) split over mesh axes.

Layout (`memory_specs`): every per-slot field of MemoryState (vectors_MD, valid_M, age_M,
list_M, pos_M) is split on M over the given mesh axes, so device s holds slots
[s*M/S, (s+1)*M/S); the small IVF fields (centroids, list slabs) stay replicated. M must be a
multiple of the number of shards S.

Search (`sharded_search`, exact): inside one shard_map, each device runs the flat search of
gmem/memory/flat.py over its own slots (top-k with global slot ids), the S*k candidates are
all-gathered ([Q, S*k] per device: k ids and scores per shard, not the vectors), merged into the
global top-k, and each result vector is read by the shard that holds it and summed over the
shards (a psum of [Q, k, D], zero from every other shard). Equal to the single-device search up
to ties. IVF lists are not sharded: a sharded IVF memory is searched exactly.

Writes (add/remove/forget) need the whole memory's age order; run them under jit with these
shardings and XLA partitions them (they are scatters over M).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from gmem.errors import GmemError
from gmem.memory.associative import AssociativeMemory, MemoryState, _chunked
from gmem.memory.flat import flat_top_k
from gmem.memory.topk import merge_top_k

_SLOT_FIELDS = ("vectors_MD", "valid_M", "age_M", "list_M", "pos_M")


def memory_specs(state: MemoryState, axis) -> MemoryState:
    """PartitionSpecs of an unbatched state: slot-axis fields split over `axis` (a mesh axis
    name or a tuple of them), the rest replicated."""
    def spec(name, a):
        if name in _SLOT_FIELDS and a.shape[0] > 0:
            return P(axis, *([None] * (a.ndim - 1)))
        return P()
    return state.replace(**{f: spec(f, getattr(state, f)) for f in state.__dataclass_fields__})


def shard_memory(state: MemoryState, mesh, axis) -> MemoryState:
    """Place an unbatched state on mesh with its slots split over `axis`."""
    specs = memory_specs(state, axis)
    return jax.tree.map(lambda a, s: jax.device_put(a, NamedSharding(mesh, s)), state, specs)


def _shards(mesh, axis) -> int:
    names = axis if isinstance(axis, tuple) else (axis,)
    n = 1
    for a in names:
        n *= mesh.shape[a]
    return n


def sharded_search(mem: AssociativeMemory, state: MemoryState, q_QD: jax.Array, k: int, mesh, axis):
    """mem.search's result (indices [Q, k], distances [Q, k], vectors [Q, k, D], replicated)
    for a state whose slots are split over `axis` of `mesh` (shard_memory). Exact search."""
    mem._check(q_QD, "queries", state)
    s_n = _shards(mesh, axis)
    if mem.size % s_n:
        raise GmemError(f"sharded_search: memory size {mem.size} is not a multiple of the {s_n} shards of {axis!r}")
    if not 1 <= k <= mem.size:
        raise GmemError(f"sharded_search: k={k} must be in [1, size={mem.size}]")
    m_loc = mem.size // s_n
    k_loc = min(k, m_loc)

    def local(v_MD, valid_M, q):
        offset = jax.lax.axis_index(axis) * m_loc
        s, i = _chunked(lambda qc: flat_top_k(qc, v_MD, valid_M, k_loc, mem.metric, mem.key_block),
                        q, mem.query_chunk)
        s = jax.lax.all_gather(s, axis, axis=1, tiled=True)  # [Q, S*k_loc]
        i = jax.lax.all_gather(i + offset, axis, axis=1, tiled=True)
        s, gid = merge_top_k(s, i, k)
        found = s > -jnp.inf
        mine = found & (gid >= offset) & (gid < offset + m_loc)
        vec = jnp.take(v_MD, jnp.clip(gid - offset, 0, m_loc - 1), axis=0)
        vec = jax.lax.psum(jnp.where(mine[..., None], vec, 0.0), axis)
        return s, jnp.where(found, gid, -1).astype(jnp.int32), vec

    # check_vma=False: all_gather's result is the same on every shard, but JAX types it as
    # varying, so the replicated out_specs would be refused.
    s, idx, vec = jax.shard_map(local, mesh=mesh, in_specs=(P(axis, None), P(axis), P()),
                                out_specs=(P(), P(), P()), check_vma=False)(state.vectors_MD, state.valid_M, q_QD)
    dist = -s if mem.metric == "l2" else s
    return idx, dist, vec
