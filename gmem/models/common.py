"""Pieces shared by the family configs: dtype names and HF config dict access."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from gmem.dtypes import DTYPE_NAMES
from gmem.errors import GmemError

DTYPES = {name: getattr(jnp, canonical) for name, canonical in DTYPE_NAMES.items()}


def to_dtype(name: str):
    """'float32' / 'bfloat16' / ... -> jnp dtype, with an error naming the bad value."""
    try:
        return DTYPES[str(name)]
    except KeyError:
        raise GmemError(f"dtype: unknown value {name!r}; use one of {sorted(DTYPES)}") from None


def hf_dict(hf_config: Any) -> dict:
    """Accept a transformers PretrainedConfig or a config.json dict."""
    if isinstance(hf_config, Mapping):
        return dict(hf_config)
    return hf_config.to_dict()


def require(d: Mapping, key: str, where: str):
    if key not in d:
        raise GmemError(f"{where}: missing field {key!r}")
    return d[key]


def _quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


# HF ACT2FN names -> jax functions. "gelu" is the exact erf form; "gelu_new" (GPT-2) and
# "gelu_pytorch_tanh" are the tanh approximation.
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": _quick_gelu,
    "relu": jax.nn.relu, "silu": jax.nn.silu, "swish": jax.nn.silu, "tanh": jnp.tanh,
}


def activation(name: str, where: str = "config.json hidden_act"):
    """HF activation name -> function, with an error naming the field."""
    try:
        return ACTIVATIONS[str(name)]
    except KeyError:
        raise GmemError(f"{where}: unknown activation {name!r}; use one of {sorted(ACTIVATIONS)}") from None


def dropout(module, x, rate: float):
    """Dropout that is active only when the caller passes a "dropout" rng (training), as the
    adapters' LoRA dropout; inference and parity runs pass none and are deterministic."""
    if not rate or not module.has_rng("dropout"):
        return x
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def dropout_rng(module, rate: float):
    """The key for attention-probability dropout: a fresh "dropout" rng when `rate` > 0 and the
    caller passed one (training), else None (dot_product_attention then drops nothing)."""
    if not rate or not module.has_rng("dropout"):
        return None
    return module.make_rng("dropout")
