"""Exact top-k pieces shared by the flat, IVF and sharded searches (larger score = nearer).

`lax.top_k` over a long row costs a comparison per element, about a tenth of the matmul that
made the row on CPU at dim 576. `grouped_top_k` first reduces each group of `group` scores to
its maximum (one vectorised pass), takes the k best groups, and finds the k best scores among
those k * group candidates. It is exact: the k best scores lie in at most k groups, and each of
those groups' maximum is at least the k-th best score, so those groups are among the k best
(where scores tie, another group of equal maximum may be picked: the same scores, other ids).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def grouped_top_k(s_QB: jax.Array, k: int, group: int = 16):
    """Exact top-k of each row: (values [Q, k] descending, column ids int32 [Q, k]).

    B is padded with -inf to a multiple of group (a padded column is returned only where fewer
    than k scores are finite, as id B-1; callers mask -inf results). One lax.top_k when there
    are fewer than k groups.
    """
    q, b = s_QB.shape
    if group <= 1 or -(-b // group) < k:
        v, i = jax.lax.top_k(s_QB, k)
        return v, i.astype(jnp.int32)
    if b % group:
        s_QB = jnp.pad(s_QB, ((0, 0), (0, group - b % group)), constant_values=-jnp.inf)
    s_QGg = s_QB.reshape(q, -1, group)
    _, g_QK = jax.lax.top_k(s_QGg.max(-1), k)
    cand_QKg = jnp.take_along_axis(s_QGg, g_QK[:, :, None], axis=1)
    v, j = jax.lax.top_k(cand_QKg.reshape(q, k * group), k)
    col = jnp.take_along_axis(g_QK, j // group, axis=1) * group + j % group
    return v, jnp.minimum(col, b - 1).astype(jnp.int32)


def merge_top_k(v_QC: jax.Array, i_QC: jax.Array, k: int):
    """Top-k of candidate lists: values [Q, C] and their ids [Q, C] -> ([Q, k], [Q, k])."""
    v, j = jax.lax.top_k(v_QC, k)
    return v, jnp.take_along_axis(i_QC, j, axis=1)
