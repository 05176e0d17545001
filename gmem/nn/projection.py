"""The one linear projection every model uses, and the hook adapters plug into.

Kernels are stored [in, out] (Flax layout; HF's torch Linear weight transposed). Adapters are
not parameters of this module: they arrive through a separate variable collection, ADAPTER,
whose tree mirrors the module paths of the base model (`model/layers_3/self_attn/q_proj`). A
module with no entry in that collection is a plain dense layer, so the base tree stays frozen
and adapter trees can be swapped per call (`variables = {"params": base, ADAPTER: tree}`).

Per-module adapter entries (any subset; shapes for a kernel [D_in, D_out]):
  lora_A [D_in, r], lora_B [r, D_out], lora_scale [], lora_dropout []
      y = x W + scale * (dropout(x) A) B                               (LoRA, PEFT semantics)
  gift_psi [r, D_in], gift_phi [D_in, r], optional gift_psi_bias [r], gift_phi_bias [D_in]
      y = (x + act(x psi^T + b_psi) phi^T + b_phi) W                   (GIFT, W' = W (I + phi psi))
  gift_act []  (0 = identity, 1 = gelu, 2 = relu, 3 = tanh, 4 = silu)
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ADAPTER = "adapter"

_GIFT_ACTS = (lambda h: h, nn.gelu, nn.relu, jnp.tanh, nn.silu)


def _gift_activation(h: jax.Array, code: jax.Array) -> jax.Array:
    # The code is a traced scalar; switch keeps one compiled graph for every choice.
    return jax.lax.switch(jnp.asarray(code, jnp.int32), _GIFT_ACTS, h)


class Projection(nn.Module):
    """Dense layer x[..., D_in] -> y[..., features] with logical axis names and the adapter hook.

    Attributes:
      features: output width.
      axes: logical names of the kernel's (in, out) axes, e.g. ("embed", "mlp").
      use_bias: add a bias of shape [features] (logical axis axes[1]).
      dtype: compute dtype (inputs and kernel are cast to it); params stay in param_dtype.
    """

    features: int
    axes: Sequence[str] = ("embed", "mlp")
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, tuple(self.axes)),
            (x.shape[-1], self.features),
            self.param_dtype,
        )
        x = x.astype(self.dtype)
        adapter = self._adapter()
        if "gift_psi" in adapter:
            x = x + self._gift_residual(x, adapter)
        y = jnp.dot(x, kernel.astype(self.dtype))
        if "lora_A" in adapter:
            y = y + self._lora_delta(x, adapter)
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axes[1],)),
                (self.features,),
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        return y

    def _adapter(self) -> dict:
        if not self.has_variable(ADAPTER, "lora_A") and not self.has_variable(ADAPTER, "gift_psi"):
            return {}
        return dict(self.variables[ADAPTER])

    def _lora_delta(self, x: jax.Array, a: dict) -> jax.Array:
        lora_a = a["lora_A"].astype(self.dtype)
        lora_b = a["lora_B"].astype(self.dtype)
        scale = a.get("lora_scale", jnp.ones((), self.dtype)).astype(self.dtype)
        rate = a.get("lora_dropout", None)
        # Dropout only when the caller passes a "dropout" rng (training); rate may be traced.
        if rate is not None and self.has_rng("dropout"):
            keep = jax.random.uniform(self.make_rng("dropout"), x.shape) >= rate
            x = jnp.where(keep, x / jnp.maximum(1.0 - rate, 1e-6), 0.0).astype(self.dtype)
        return jnp.dot(jnp.dot(x, lora_a), lora_b) * scale

    def _gift_residual(self, x: jax.Array, a: dict) -> jax.Array:
        h = jnp.dot(x, a["gift_psi"].astype(self.dtype).T)  # [..., r]
        if "gift_psi_bias" in a:
            h = h + a["gift_psi_bias"].astype(self.dtype)
        if "gift_act" in a:
            h = _gift_activation(h, a["gift_act"])
        r = jnp.dot(h, a["gift_phi"].astype(self.dtype).T)  # [..., D_in]
        if "gift_phi_bias" in a:
            r = r + a["gift_phi_bias"].astype(self.dtype)
        return r
