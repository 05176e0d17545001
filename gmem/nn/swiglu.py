"""SwiGLU, silu(gate) * up, with a backward pass that keeps only gate and up.

Autodiff of silu(g) * u saves sigmoid(g) and silu(g) beside g and u: two more [tokens, mlp]
arrays, the widest activations of a LLaMA block, written in the forward pass and read back in
the backward. Recomputing sigmoid in the backward costs a few flops per element and saves that
memory traffic (and the memory): the elementwise part of a CPU training step is bandwidth-bound.

A custom_vjp cannot be forward-differentiated (jax.jvp, jax.linearize). Code that takes one of
those through a model traces it inside `forward_mode()`, where swiglu is plain autodiff.
"""

from __future__ import annotations

import contextlib
import threading

import jax

_plain = threading.local()


@contextlib.contextmanager
def forward_mode():
    """While tracing inside, swiglu has no custom backward, so jax.jvp/linearize go through it."""
    before = getattr(_plain, "on", False)
    _plain.on = True
    try:
        yield
    finally:
        _plain.on = before


def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(gate) * up, elementwise (same shapes)."""
    if getattr(_plain, "on", False):
        return jax.nn.silu(gate) * up
    return _swiglu(gate, up)


@jax.custom_vjp
def _swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    return jax.nn.silu(gate) * up


def _forward(gate, up):
    return _swiglu(gate, up), (gate, up)


def _backward(residuals, d_out):
    gate, up = residuals
    sig = jax.nn.sigmoid(gate)
    # d silu(g) / dg = sig + g sig (1 - sig)
    return d_out * up * sig * (1.0 + gate * (1.0 - sig)), d_out * gate * sig


_swiglu.defvjp(_forward, _backward)
