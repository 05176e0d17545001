"""SwiGLU, silu(gate) * up, with a backward pass that keeps only gate and up.

Autodiff of silu(g) * u saves sigmoid(g) and silu(g) beside g and u: two more [tokens, mlp]
arrays, the widest activations of a LLaMA block, written in the forward pass and read back in
the backward. Recomputing sigmoid in the backward costs a few flops per element and saves that
memory traffic (and the memory): the elementwise part of a CPU training step is bandwidth-bound.
"""

from __future__ import annotations

import jax


@jax.custom_vjp
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(gate) * up, elementwise (same shapes)."""
    return jax.nn.silu(gate) * up


def _forward(gate, up):
    return swiglu(gate, up), (gate, up)


def _backward(residuals, d_out):
    gate, up = residuals
    sig = jax.nn.sigmoid(gate)
    # d silu(g) / dg = sig + g sig (1 - sig)
    return d_out * up * sig * (1.0 + gate * (1.0 - sig)), d_out * gate * sig


swiglu.defvjp(_forward, _backward)
