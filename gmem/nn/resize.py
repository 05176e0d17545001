"""torch's bicubic resize (F.interpolate(mode="bicubic", align_corners=False)) as dense matrices.

jax.image.resize(method="bicubic") uses the Keys kernel with a = -0.5 and a different edge
treatment, so it does not reproduce torch. torch uses a = -0.75, the source coordinate
(dst + 0.5) * in / out - 0.5 (not clamped, unlike its linear modes), and clamps the four tap
indices to [0, in - 1]. Each axis is a [out, in] matrix built in numpy (float64) from those
rules; shapes are static, so the resize is an einsum under jit, exact up to rounding.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

A = -0.75  # torch's cubic convolution coefficient


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """The four tap weights [..., 4] for offsets floor(x) - 1 .. floor(x) + 2, t = x - floor(x)."""
    def near(x):  # |x| <= 1
        return ((A + 2) * x - (A + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] float64 matrix M with resized = M @ x along one axis, as torch's
    bicubic with align_corners=False and size= given (scale = in_size / out_size)."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"bicubic_matrix: sizes must be positive, got {in_size} -> {out_size}")
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    base = np.floor(src)
    w = _cubic_weights(src - base)  # [out, 4]
    idx = np.clip(base[:, None].astype(np.int64) + np.arange(-1, 3)[None, :], 0, in_size - 1)
    m = np.zeros((out_size, in_size), np.float64)
    np.add.at(m, (np.repeat(np.arange(out_size), 4), idx.reshape(-1)), w.reshape(-1))
    m.setflags(write=False)
    return m


def resize_bicubic_hw(x_HWD, out_hw: tuple[int, int]):
    """Resize the two leading axes of [H, W, ...] to out_hw as torch's bicubic (align_corners=False)."""
    h, w = x_HWD.shape[:2]
    mh = jnp.asarray(bicubic_matrix(int(h), int(out_hw[0])), x_HWD.dtype)
    mw = jnp.asarray(bicubic_matrix(int(w), int(out_hw[1])), x_HWD.dtype)
    y = jnp.einsum("oh,hw...->ow...", mh, x_HWD, precision="highest")
    return jnp.einsum("pw,ow...->op...", mw, y, precision="highest")
