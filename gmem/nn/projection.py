"""The one linear projection every model uses, and the hook adapters plug into.

Kernels are stored [in, out] (Flax layout; HF's torch Linear weight transposed). Adapters are
not parameters of this module: they arrive through a separate variable collection, ADAPTER,
whose tree mirrors the module paths of the base model (`model/layers_3/self_attn/q_proj`). A
module with no entry in that collection is a plain dense layer, so the base tree stays frozen
and adapter trees can be swapped per call (`variables = {"params": base, ADAPTER: tree}`).

Per-module adapter entries (any subset; shapes for a kernel K = W^T [D_in, D_out]):
  lora_A [D_in, r], lora_B [r, D_out], lora_scale [], lora_dropout []
      y = x K + scale * (dropout(x) A) B                                (LoRA, PEFT semantics)
  gift_phi [D_in, r], gift_psi [r, D_in], optional gift_phi_bias [r], gift_psi_bias [D_in],
  optional gift_act [] (int code into GIFT_ACT_NAMES)
      GIFT's weight residual, in PyTorch layout W [D_out, D_in], A = phi^T, B = psi^T:
        dW = act(W A^T + 1 a^T) B^T + 1 c^T      (a = gift_phi_bias, c = gift_psi_bias)
        y  = x W^T + b + x dW^T
      With no gift_act (identity) this is the activation form
        y = (x + (x psi^T) phi^T) K + ((x psi^T) . a + x . c) 1^T
      which never builds a weight-sized temporary. With gift_act the activation sits on the
      weight-side product C = W phi [D_out, r], so the layer computes C (D_in*D_out*r flops)
      and adds (x psi^T) act(C)^T: still no [D_in, D_out] temporary.
LoRA sees the layer input before GIFT's residual, so both deltas are computed from the frozen
kernel and `merge` can add them independently.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ADAPTER = "adapter"

# simple_block activations. The original knows identity (its default for any name it does not
# know), gelu (torch's nn.GELU: the exact erf form), sigmoid, standard_sigmoid (the same
# function) and hsigmoid (relu6(h + 3) / 6); gelu_tanh, relu, tanh and silu are gmem's own
# (the original would run identity under those names: gmem.adapters.gift_io.original_act).
# Codes are positions in this tuple: append, never reorder.
GIFT_ACT_NAMES = ("identity", "gelu", "gelu_tanh", "relu", "tanh", "silu", "sigmoid",
                  "standard_sigmoid", "hsigmoid")
_GIFT_ACTS = (lambda h: h, lambda h: nn.gelu(h, approximate=False),
              lambda h: nn.gelu(h, approximate=True), nn.relu, jnp.tanh, nn.silu, nn.sigmoid,
              nn.sigmoid, nn.hard_sigmoid)


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
        k = kernel.astype(self.dtype)
        adapter = self._adapter()
        if "gift_psi" in adapter:
            y = self._gift(x, k, adapter)
        else:
            y = jnp.dot(x, k)
        if "lora_A" in adapter:
            y = y + self.lora_delta(x, adapter)
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

    def weights(self) -> tuple[jax.Array, dict]:
        """(kernel in the compute dtype, this module's adapter entries), for a caller that folds
        the projection into a larger product instead of calling it (MemoryCrossAttention).
        Reads existing params: use it in apply, not in init."""
        return nn.unbox(self.get_variable("params", "kernel")).astype(self.dtype), self._adapter()

    def lora_down(self, x: jax.Array, a: dict) -> jax.Array:
        """dropout(x) A [..., r]: the first half of the LoRA delta (same dropout draw as __call__)."""
        rate = a.get("lora_dropout", None)
        # Dropout only when the caller passes a "dropout" rng (training); rate may be traced.
        if rate is not None and self.has_rng("dropout"):
            keep = jax.random.uniform(self.make_rng("dropout"), x.shape) >= rate
            x = jnp.where(keep, x / jnp.maximum(1.0 - rate, 1e-6), 0.0).astype(self.dtype)
        return jnp.dot(x.astype(self.dtype), a["lora_A"].astype(self.dtype))

    def lora_scale(self, a: dict) -> jax.Array:
        return a.get("lora_scale", jnp.ones((), self.dtype)).astype(self.dtype)

    def lora_delta(self, x: jax.Array, a: dict) -> jax.Array:
        """scale * dropout(x) A B: the LoRA term __call__ adds to x K."""
        # The scale multiplies the [..., r] side, not the [..., D_out] product: r / D_out of the
        # elementwise work, and in a second-order step (ReGrad) the products of the wide side
        # were 6% of the step's time on CPU (bench/xla_op_time.py). Same value up to rounding.
        return jnp.dot(self.lora_down(x, a) * self.lora_scale(a), a["lora_B"].astype(self.dtype))

    def _gift(self, x: jax.Array, k: jax.Array, a: dict) -> jax.Array:
        phi = a["gift_phi"].astype(self.dtype)            # [D_in, r]
        h = jnp.dot(x, a["gift_psi"].astype(self.dtype).T)  # x psi^T: [..., r]
        if "gift_act" in a:
            c = jnp.dot(k.T, phi)                          # W phi: [D_out, r]
            if "gift_phi_bias" in a:
                c = c + a["gift_phi_bias"].astype(self.dtype)
            y = jnp.dot(x, k) + jnp.dot(h, _gift_activation(c, a["gift_act"]).T)
        else:
            y = jnp.dot(x + jnp.dot(h, phi.T), k)
            if "gift_phi_bias" in a:
                y = y + jnp.dot(h, a["gift_phi_bias"].astype(self.dtype))[..., None]
        if "gift_psi_bias" in a:
            y = y + jnp.dot(x, a["gift_psi_bias"].astype(self.dtype))[..., None]
        return y
