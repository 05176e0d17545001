"""Exact (brute-force) k-nearest search, blocked over the key axis, as faiss IndexFlat does.

For metric "l2" the ranking score is 2 q.k - ||k||^2 (= ||q||^2 - ||q - k||^2: the ||q||^2
term does not change a query's ranking, so it is added back only to the k results). The key
norms and the validity mask are one bias vector (+inf on empty slots), so masking costs no
[Q, M] pass. Keys are scanned in blocks of `key_block`: each block is one matmul
[Q, D] x [D, B] followed by an exact top-k (gmem/memory/topk.py), and the per-block winners
are merged at the end. The [Q, M] score matrix never exists at once (400 MB at Q=1024,
M=100k), and the block's scores are still in cache when the top-k reads them.

A last block that would run past M is shifted back to end at M (a static-shape slice); the
keys it repeats from the previous block are masked, so no id is counted twice; blocks are
sized so that such repeats are few (`block_size`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gmem.memory.topk import grouped_top_k, merge_top_k

_HI = jax.lax.Precision.HIGHEST
# Keys per block. On a 2-core AMD EPYC at dim 576, 1,024 queries, one XLA thread: 4,096 ran
# 0.84-0.91x faiss IndexFlatL2 where 8,192 ran 0.73-0.88x and 2,048 0.79-0.87x (the [Q, B]
# scores of a smaller block stay nearer the core for the top-k); with two threads they tie.
KEY_BLOCK = 4096


def key_bias(keys_MD: jax.Array, valid_M: jax.Array, metric: str) -> jax.Array:
    """Per-key term subtracted from the scaled dot product: ||k||^2 (l2) or 0 (ip); +inf where
    the slot is empty. float32 [M]."""
    if metric == "l2":
        k = keys_MD.astype(jnp.float32)
        b = jnp.sum(k * k, -1)
    else:
        b = jnp.zeros(valid_M.shape, jnp.float32)
    return jnp.where(valid_M, b, jnp.inf)


def to_similarity(s_QK: jax.Array, q_QD: jax.Array, metric: str) -> jax.Array:
    """Ranking scores -> the memory's similarity: -squared L2 (clamped at 0) or the inner
    product. -inf (nothing found) stays -inf."""
    if metric != "l2":
        return s_QK
    q = q_QD.astype(jnp.float32)
    return -jnp.maximum(jnp.sum(q * q, -1, keepdims=True) - s_QK, 0.0)


def scaled_queries(q_QD: jax.Array, metric: str) -> jax.Array:
    """2q for l2 (so one matmul gives 2 q.k), q for ip; float32 [Q, D]."""
    q = q_QD.astype(jnp.float32)
    return 2.0 * q if metric == "l2" else q


def block_size(m: int, k: int, key_block: int, group: int = 16) -> tuple[int, int]:
    """(keys per block, blocks) for m keys: as few blocks of at most key_block as cover m, made
    equal (rounded up to a multiple of group), so the last block's overlap with the previous
    one is under group * blocks keys, not up to key_block (10,000 keys in blocks of 8,192 would
    score 16,384)."""
    blocks = -(-m // max(key_block, k))
    b = -(-m // blocks)
    b = min(-(-b // group) * group if group > 1 else b, m)
    return max(b, min(k, m)), blocks


def flat_top_k(q_QD: jax.Array, keys_MD: jax.Array, valid_M: jax.Array, k: int, metric: str,
               key_block: int = KEY_BLOCK, group: int = 16, bias_M: jax.Array | None = None):
    """k best keys of each query: (similarity float32 [Q, k] descending, ids int32 [Q, k]).

    Similarity is -squared L2 ("l2") or the inner product ("ip"); -inf where fewer than k keys
    are valid (their ids are then arbitrary: the caller masks them). bias_M (key_bias) may be
    passed when the caller has it already.
    """
    m = keys_MD.shape[0]
    bias = key_bias(keys_MD, valid_M, metric) if bias_M is None else bias_M
    q2 = scaled_queries(q_QD, metric)
    b, blocks = block_size(m, k, key_block, group)

    def block(i):
        start = jnp.minimum(i * b, m - b)  # the last block ends at m
        keys = jax.lax.dynamic_slice_in_dim(keys_MD, start, b).astype(jnp.float32)
        bb = jax.lax.dynamic_slice_in_dim(bias, start, b)
        bb = jnp.where(start + jnp.arange(b) >= i * b, bb, jnp.inf)  # repeated keys of a shifted block
        s = jnp.einsum("qd,bd->qb", q2, keys, precision=_HI) - bb[None, :]
        v, col = grouped_top_k(s, k, group)
        return v, col + start.astype(jnp.int32)

    if blocks == 1:
        v, ids = block(jnp.int32(0))
    else:
        v_NQK, i_NQK = jax.lax.map(block, jnp.arange(blocks, dtype=jnp.int32))
        q = q_QD.shape[0]
        v, ids = merge_top_k(v_NQK.transpose(1, 0, 2).reshape(q, -1), i_NQK.transpose(1, 0, 2).reshape(q, -1), k)
    return to_similarity(v, q_QD, metric), ids
