"""Which frozen base a checkpoint was trained on, and whether the base loaded now is the same.

A checkpoint holds no base weights, so it records which ones it was trained on: the source
(config text) and 8 values of every leaf at fixed flat positions, with the leaf's shape. At
load this costs one small gather per leaf. Values are compared to within ~2 bfloat16 ulps
(2^-7 relative), so a float32 <-> bfloat16 storage change or last-bit differences between
backends pass, while other weights of the same shapes (another seed, another checkpoint, a
fine-tune of the same base) differ in almost every sampled value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

N_SAMPLES = 8
_RTOL = 2.0 ** -7


def _samples(x) -> list:
    n = int(np.prod(x.shape)) if x.shape else 1
    idx = np.unique((np.arange(N_SAMPLES, dtype=np.int64) * max(n - 1, 0)) // max(N_SAMPLES - 1, 1))
    if isinstance(x, np.ndarray):
        vals = x.reshape(-1)[idx]
    else:
        vals = np.asarray(jnp.ravel(x)[jnp.asarray(idx)])
    if np.issubdtype(vals.dtype, np.integer) or vals.dtype == bool:
        return [int(v) for v in vals]
    return [float(v) for v in vals.astype(np.float32)]


def base_identity(frozen, source: str | None) -> dict:
    """{"source", "tensors": {path: [shape, samples]}} of a frozen tree (host or device arrays)."""
    flat = jax.tree_util.tree_flatten_with_path(frozen)[0]
    tensors = {}
    for path, x in flat:
        key = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        tensors[key] = [list(x.shape), _samples(x)]
    return {"source": source, "tensors": tensors}


def _close(a, b) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    a, b = float(a), float(b)
    if not (np.isfinite(a) and np.isfinite(b)):
        return a == b or (np.isnan(a) and np.isnan(b))
    return abs(a - b) <= _RTOL * max(abs(a), abs(b)) + 1e-30


def compare_base(saved: dict, now: dict) -> list[str]:
    """The differences between two base_identity records that mean other weights ([] = same)."""
    a, b = saved.get("tensors", {}), now.get("tensors", {})
    out = []
    missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if missing:
        out.append(f"{len(missing)} tensors of the checkpoint's base are absent now (first: {missing[0]})")
    if extra:
        out.append(f"{len(extra)} tensors are new (first: {extra[0]})")
    shapes = [k for k in sorted(set(a) & set(b)) if list(a[k][0]) != list(b[k][0])]
    if shapes:
        k = shapes[0]
        out.append(f"{len(shapes)} tensors changed shape (first: {k} {a[k][0]} -> {b[k][0]})")
    common = [k for k in sorted(set(a) & set(b)) if k not in shapes]
    differ = [k for k in common if len(a[k][1]) != len(b[k][1])
              or not all(_close(x, y) for x, y in zip(a[k][1], b[k][1]))]
    if differ:
        k = differ[0]
        out.append(f"{len(differ)} of {len(common)} tensors hold other values (first: {k}, sampled "
                   f"{_fmt(a[k][1])} in the checkpoint's base, {_fmt(b[k][1])} now)")
    return out


def _fmt(vals, n: int = 3) -> str:
    return "[" + ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in vals[:n]) + ", ...]"
