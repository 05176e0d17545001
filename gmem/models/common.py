"""Pieces shared by the family configs: dtype names and HF config dict access."""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from gmem.errors import GmemError

DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16,
          "bf16": jnp.bfloat16, "float16": jnp.float16, "fp16": jnp.float16}


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
