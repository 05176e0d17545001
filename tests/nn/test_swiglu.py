"""swiglu's hand-written backward equals autodiff of silu(g) * u (float64 reference, tolerance
1e-12 relative), including large |g| where sigmoid saturates; inside forward_mode() it is plain autodiff, so
jax.jvp goes through it."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmem.nn.swiglu import forward_mode, swiglu


def test_forward_and_gradients_match_autodiff():
    with jax.enable_x64(True):
        g = jnp.concatenate([jax.random.normal(jax.random.key(0), (5, 7), jnp.float64) * 3,
                             jnp.asarray([[-60.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 60.0]])])
        u = jax.random.normal(jax.random.key(1), g.shape, jnp.float64)
        w = jax.random.normal(jax.random.key(2), g.shape, jnp.float64)
        plain = lambda g, u: jnp.sum(jnp.sin(jax.nn.silu(g) * u) * w)
        lean = lambda g, u: jnp.sum(jnp.sin(swiglu(g, u)) * w)
        np.testing.assert_allclose(swiglu(g, u), jax.nn.silu(g) * u, rtol=1e-12)
        chex.assert_trees_all_close(jax.grad(lean, (0, 1))(g, u), jax.grad(plain, (0, 1))(g, u),
                                    rtol=1e-12, atol=1e-300)
        # Under jit, inside remat, as the decoder uses it.
        got = jax.jit(jax.grad(jax.checkpoint(lean), (0, 1)))(g, u)
        chex.assert_trees_all_close(got, jax.grad(plain, (0, 1))(g, u), rtol=1e-12, atol=1e-300)


def test_forward_mode_traces_plain_autodiff_so_jvp_goes_through():
    g = jnp.linspace(-3.0, 3.0, 12).reshape(3, 4)
    u, dg, du = jnp.cos(g), jnp.sin(g), jnp.ones_like(g)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(swiglu, (g, u), (dg, du))
    with forward_mode():
        out, tangent = jax.jvp(swiglu, (g, u), (dg, du))
    want = jax.jvp(lambda a, b: jax.nn.silu(a) * b, (g, u), (dg, du))
    chex.assert_trees_all_close((out, tangent), want, rtol=1e-6)
    with pytest.raises(TypeError, match="custom_vjp"):   # the context ends with the block
        jax.jvp(swiglu, (g, u), (dg, du))
