"""swiglu's custom_jvp equals autodiff of silu(g) * u (float64 reference, tolerance 1e-12
relative) in reverse mode, in forward mode and to second order (a Hessian-vector product through
the backward, as ReGrad's linearized meta-gradient takes it), including large |g| where sigmoid
saturates; and its reverse mode saves two [tokens, mlp] arrays, not four."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from gmem.nn.swiglu import swiglu


def _inputs():
    g = jnp.concatenate([jax.random.normal(jax.random.key(0), (5, 7), jnp.float64) * 3,
                         jnp.asarray([[-60.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 60.0]])])
    u = jax.random.normal(jax.random.key(1), g.shape, jnp.float64)
    w = jax.random.normal(jax.random.key(2), g.shape, jnp.float64)
    return g, u, w


def test_forward_and_gradients_match_autodiff():
    with jax.enable_x64(True):
        g, u, w = _inputs()
        plain = lambda g, u: jnp.sum(jnp.sin(jax.nn.silu(g) * u) * w)
        lean = lambda g, u: jnp.sum(jnp.sin(swiglu(g, u)) * w)
        np.testing.assert_allclose(swiglu(g, u), jax.nn.silu(g) * u, rtol=1e-12)
        chex.assert_trees_all_close(jax.grad(lean, (0, 1))(g, u), jax.grad(plain, (0, 1))(g, u),
                                    rtol=1e-12, atol=1e-300)
        # Under jit, inside remat, as the decoder uses it.
        got = jax.jit(jax.grad(jax.checkpoint(lean), (0, 1)))(g, u)
        chex.assert_trees_all_close(got, jax.grad(plain, (0, 1))(g, u), rtol=1e-12, atol=1e-300)


def test_forward_mode_and_second_order_match_autodiff():
    with jax.enable_x64(True):
        g, u, w = _inputs()
        dg, du = jnp.cos(g), jnp.sin(u)
        chex.assert_trees_all_close(jax.jvp(swiglu, (g, u), (dg, du)),
                                    jax.jvp(lambda a, b: jax.nn.silu(a) * b, (g, u), (dg, du)),
                                    rtol=1e-12, atol=1e-300)
        # Hessian-vector product through the reverse pass: linearize of the gradient.
        grad_of = lambda f: jax.grad(lambda g, u: jnp.sum(jnp.sin(f(g, u)) * w), (0, 1))
        hvp = lambda f: jax.linearize(grad_of(f), g, u)[1](dg, du)
        chex.assert_trees_all_close(hvp(swiglu), hvp(lambda a, b: jax.nn.silu(a) * b),
                                    rtol=1e-10, atol=1e-300)


def test_reverse_mode_saves_two_arrays():
    # The VJP closure's leaves are what reverse mode keeps from the forward pass.
    g = jnp.linspace(-2.0, 2.0, 24).reshape(4, 6)
    kept = lambda f: [x.shape for x in jax.tree_util.tree_leaves(jax.vjp(f, g, 2 * g)[1])]
    assert kept(swiglu) == [g.shape, g.shape]
    assert len(kept(lambda a, b: jax.nn.silu(a) * b)) > 2   # what plain autodiff keeps
