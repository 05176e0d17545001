"""LoRA: y = x K + s (dropout(x) A) B, initialised as PEFT does.

Trainable tree: mirrors the base module paths, {"model": {"layers_0": {"self_attn":
{"q_proj": {"lora_A": [D_in, r], "lora_B": [r, D_out]}}}}}. A is PEFT's lora_A.weight
transposed, B is lora_B.weight transposed. The scale s and the dropout rate are not trainable:
they come from the AdapterSpec when the adapter collection is built.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def lora_scale(rank: int, alpha: float, use_rslora: bool) -> float:
    """PEFT's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def init_lora(spec, shapes: dict[str, tuple[int, int]], rng: jax.Array) -> dict[str, dict]:
    """{module path: (D_in, D_out)} -> {module path: {"lora_A", "lora_B"}} (flat by path).

    A ~ kaiming_uniform(a=sqrt(5)) over fan_in = D_in, i.e. U(-1/sqrt(D_in), 1/sqrt(D_in)),
    which is what PEFT's reset_lora_parameters does with init_lora_weights=True; B = 0, so the
    adapted model starts equal to the base.
    """
    out = {}
    keys = jax.random.split(rng, max(len(shapes), 1))
    for key, path in zip(keys, sorted(shapes)):
        d_in, d_out = shapes[path]
        bound = 1.0 / math.sqrt(d_in)
        out[path] = {
            "lora_A": jax.random.uniform(key, (d_in, spec.rank), jnp.float32, -bound, bound),
            "lora_B": jnp.zeros((spec.rank, d_out), jnp.float32),
        }
    return out


def lora_entries(spec, flat: dict[str, dict]) -> dict[str, dict]:
    """Trainable entries (flat by path) -> the hook's per-module entries, constants added."""
    scale = jnp.asarray(lora_scale(spec.rank, spec.alpha, spec.use_rslora), jnp.float32)
    out = {}
    for path, e in flat.items():
        entry = {"lora_A": e["lora_A"], "lora_B": e["lora_B"], "lora_scale": scale}
        if spec.dropout > 0:
            entry["lora_dropout"] = jnp.asarray(spec.dropout, jnp.float32)
        out[path] = entry
    return out


def lora_delta_kernel(entry: dict) -> np.ndarray:
    """s A B: the [D_in, D_out] change merge adds to the kernel."""
    a = np.asarray(entry["lora_A"], np.float64)
    b = np.asarray(entry["lora_B"], np.float64)
    return float(entry["lora_scale"]) * (a @ b)
