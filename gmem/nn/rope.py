"""Rotary position embeddings in the HF rotate_half layout.

HF q/k weights load with a transpose only (no permutation). Scaling types: 'default',
'linear' (positions divided by factor) and 'llama3' (frequency-dependent, LLaMA 3.1).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def inverse_frequencies(head_dim: int, theta: float, scaling: Mapping[str, Any] | None = None) -> np.ndarray:
    """[head_dim // 2] inverse frequencies, computed in float64 numpy then cast like HF (fp32)."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    inv = inv.astype(np.float32)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return (inv / np.float32(scaling["factor"])).astype(np.float32)
    if kind == "llama3":
        factor = scaling["factor"]
        low = scaling["low_freq_factor"]
        high = scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        low_wavelen = old_len / low
        high_wavelen = old_len / high
        wavelen = 2 * math.pi / inv
        out = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(is_medium, smoothed, out).astype(np.float32)
    raise ValueError(f"unsupported rope_type {kind!r}")


def rope_cos_sin(position_ids: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """position_ids [B, L] -> cos, sin [B, L, head_dim] in fp32."""
    freqs = position_ids.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x_BLHD: jax.Array, cos_BLD: jax.Array, sin_BLD: jax.Array) -> jax.Array:
    """Rotate q or k [B, L, H, D] by the per-position angles."""
    cos = cos_BLD[:, :, None, :].astype(x_BLHD.dtype)
    sin = sin_BLD[:, :, None, :].astype(x_BLHD.dtype)
    return x_BLHD * cos + rotate_half(x_BLHD) * sin
