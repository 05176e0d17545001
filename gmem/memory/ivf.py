"""IVF (inverted file) index of an AssociativeMemory: k-means lists kept list-major, as FAISS does.

Like faiss.IndexIVFFlat, the index holds its own copy of each indexed vector, grouped by list:
`ivf_vec_CND[c, n]` is the n-th vector of list c and `ivf_slot_CN[c, n]` the memory slot it
came from (-1 = empty). List c is the contiguous row range [c*N, c*N + fill_c) of the flattened
[C*N, D] slab, so a search reads it with dynamic slices, not row gathers (on CPU a row gather
is several times slower than the exact matmul it is meant to beat); the search itself is
gmem/memory/ivf_search.py.

Lists have a static capacity N (`AssociativeMemory.cap`). Adds append to their list; a vector
whose list is full is stored in the memory but not indexed (`overflow` counts them), and slots
freed by remove/forget or overwritten by the ring buffer leave holes. `rebuild` (or
`train_ivf`) compacts the lists from the memory's current contents.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _group_rank(key_N: jax.Array, groups: int):
    """Rank of each row among the rows with the same key (in row order), and group sizes."""
    n = key_N.shape[0]
    order = jnp.argsort(key_N, stable=True)
    counts = jnp.bincount(key_N, length=groups + 1)
    starts = jnp.cumsum(counts) - counts
    rank_sorted = jnp.arange(n) - starts[key_N[order]]
    return jnp.zeros((n,), jnp.int32).at[order].set(rank_sorted.astype(jnp.int32)), counts[:groups]


def rebuild(mem, state):
    """Lay out every valid slot in its list (list_M), in slot order, up to N per list."""
    c, n, m = mem.nlist, mem.cap, mem.size
    key = jnp.where(state.valid_M, state.list_M, c)
    rank, counts = _group_rank(key, c)
    ok = (key < c) & (rank < n)
    slots = jnp.arange(m, dtype=jnp.int32)
    slot_CN = jnp.full((c, n), -1, jnp.int32).at[jnp.where(ok, key, c), rank].set(slots, mode="drop")
    vec = jnp.take(state.vectors_MD, jnp.maximum(slot_CN, 0), axis=0) * (slot_CN >= 0)[..., None]
    return state.replace(
        ivf_slot_CN=slot_CN, ivf_vec_CND=vec, ivf_sq_CN=jnp.sum(vec * vec, -1),
        ivf_fill_C=jnp.minimum(counts, n).astype(jnp.int32), pos_M=jnp.where(ok, rank, -1))


def insert(mem, state, target_N, x_ND, keep_N, lists_N):
    """Index rows being written to slots target_N (== size where not kept) after clearing the
    list positions those slots held before."""
    c, n, m = mem.nlist, mem.cap, mem.size
    t = jnp.clip(target_N, 0, m - 1)
    old_l, old_p = state.list_M[t], state.pos_M[t]
    clear = keep_N & (old_p >= 0)
    slot_CN = state.ivf_slot_CN.at[jnp.where(clear, old_l, c), old_p].set(-1, mode="drop")
    key = jnp.where(keep_N, lists_N, c)
    rank, counts = _group_rank(key, c)
    p = state.ivf_fill_C[jnp.minimum(lists_N, c - 1)] + rank
    ok = keep_N & (p < n)
    row = jnp.where(ok, lists_N, c)
    x = x_ND.astype(jnp.float32)
    return state.replace(
        ivf_slot_CN=slot_CN.at[row, p].set(target_N, mode="drop"),
        ivf_vec_CND=state.ivf_vec_CND.at[row, p].set(x, mode="drop"),
        ivf_sq_CN=state.ivf_sq_CN.at[row, p].set(jnp.sum(x * x, -1), mode="drop"),
        ivf_fill_C=jnp.minimum(state.ivf_fill_C + counts, n).astype(jnp.int32),
        pos_M=state.pos_M.at[jnp.where(keep_N, target_N, m)].set(jnp.where(ok, p, -1), mode="drop"))


def overflow(mem, state) -> jax.Array:
    """Stored vectors that an IVF search cannot see (their list was full when they came)."""
    return jnp.sum(state.valid_M & (state.pos_M < 0), dtype=jnp.int32)
