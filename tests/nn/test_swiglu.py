"""swiglu's hand-written backward equals autodiff of silu(g) * u (float64 reference, tolerance
1e-12 relative), including large |g| where sigmoid saturates."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from gmem.nn.swiglu import swiglu


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
