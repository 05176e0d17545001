"""Normalisation layers matching the HF PyTorch numerics."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class RMSNorm(nn.Module):
    """LLaMA RMSNorm: computed in fp32, cast back, then scaled (as HF LlamaRMSNorm).

    axis: logical name of the normalised (scale) axis; "mlp" for a norm inside an MLP.
    """

    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    axis: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (self.axis,)),
            (x.shape[-1],), self.param_dtype)
        # fp32 at least; float64 inputs (x64 parity tests) keep float64.
        h = x.astype(jnp.promote_types(jnp.float32, x.dtype))
        # lax.rsqrt, as torch.rsqrt: 1/sqrt rounds differently and costs parity at 1e-6.
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * h.astype(self.dtype)


class LayerNorm(nn.Module):
    """LayerNorm with HF semantics (biased variance, eps inside the sqrt), stats in fp32."""

    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
                           (d,), self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
                          (d,), self.param_dtype)
        h = x.astype(jnp.float32)
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + self.eps)
        return (h * scale + bias).astype(self.dtype)
