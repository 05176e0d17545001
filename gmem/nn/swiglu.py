"""SwiGLU, silu(gate) * up, with a derivative rule that keeps two arrays, not four.

Autodiff of silu(g) * u saves sigmoid(g) and silu(g) beside g and u: four [tokens, mlp] arrays,
the widest activations of a LLaMA block, written in the forward pass and read back in the
backward. The rule below is a custom_jvp whose tangent is linear in (dg, du) with two
coefficients, d/dg = u sig (1 + g (1 - sig)) and d/du = silu(g): reverse mode saves those two and
nothing else, computed in the forward's elementwise fusion. The elementwise part of a CPU
training step is bandwidth-bound, so fewer saved arrays is less time as well as less memory.

A custom_jvp rather than a custom_vjp: it is differentiable in both modes and to any order, so
jax.jvp, jax.linearize and a Hessian-vector product through the backward (ReGrad's linearized
meta-gradient) go through it, and they get the same lean rule. On ReGrad's second-order step the
custom_vjp version had to be traced as plain autodiff under forward mode, which was slower.
"""

from __future__ import annotations

import jax


@jax.custom_jvp
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(gate) * up, elementwise (same shapes)."""
    return jax.nn.silu(gate) * up


@swiglu.defjvp
def _swiglu_jvp(primals, tangents):
    gate, up = primals
    d_gate, d_up = tangents
    sig = jax.nn.sigmoid(gate)
    silu = gate * sig
    # d silu(g) / dg = sig + g sig (1 - sig)
    return silu * up, d_gate * (up * sig * (1.0 + gate * (1.0 - sig))) + d_up * silu
