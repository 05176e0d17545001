"""The meta-gradient against central finite differences of the meta-loss, in float64 (jax x64,
compute dtype float64), on the tiny LLaMA of regrad_helpers with non-zero lora_B:

- d L_QA / d alpha for every tensor's alpha (tie);
- the directional derivative along a random unit direction in theta-space, which checks the
  second-order part (the inner gradient's dependence on theta) as well as the direct one.
h = 1e-5; tolerance 1e-6 relative to the derivative's scale (measured: ~1e-9). Both ways of
computing the meta-gradient (meta_grad: reverse, linearize).
One compiled value_and_grad serves every evaluation (each new second-order graph costs seconds
of compilation).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

import regrad_helpers as H  # noqa: E402

from gmem.tree import flatten, unflatten  # noqa: E402

STEP, TOL = 1e-5, 1e-6


@pytest.fixture(scope="module", params=["reverse", "linearize"])
def f64(request):
    """(value_and_grad(lora, alpha vector) in float64, lora, paths); x64 on for the module."""
    hf, cfg = H.torch_llama()
    params = H.gmem_params(hf)
    lora, names = H.gmem_lora(H.peft_wrap(hf))
    paths = sorted(names)
    with jax.enable_x64(True):
        cast = lambda tree: jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), tree)
        params, lora = cast(params), cast(lora)
        t = H.task(k=2, lens=(12, 8), seed=3)
        model = H.gmem_model(cfg, "tie", dtype="float64", meta_grad=request.param)

        def loss(th, a):
            return model.task_loss({"lora": th, "alpha": unflatten(dict(zip(paths, a)))}, params, t)[0]

        yield jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), lora, paths


def test_alpha_gradient_matches_finite_differences(f64):
    vg, lora, paths = f64
    with jax.enable_x64(True):
        a0 = np.array([0.05 * (1 + i) for i in range(len(paths))])
        value, (_, grad) = vg(lora, jnp.asarray(a0))
        assert value.dtype == jnp.float64
        at = lambda a: float(vg(lora, jnp.asarray(a))[0])
        e = np.eye(len(a0))
        fd = np.array([(at(a0 + STEP * e[i]) - at(a0 - STEP * e[i])) / (2 * STEP) for i in range(len(a0))])
        assert H.scaled_err(np.asarray(grad), fd) <= TOL, (np.asarray(grad), fd)


def test_theta_gradient_matches_a_directional_finite_difference(f64):
    vg, lora, paths = f64
    with jax.enable_x64(True):
        flat0 = {p: np.asarray(x) for p, x in flatten(lora).items()}
        rng = np.random.RandomState(0)
        v = {p: rng.standard_normal(x.shape) for p, x in flat0.items()}
        norm = np.sqrt(sum(float((x ** 2).sum()) for x in v.values()))
        v = {p: x / norm for p, x in v.items()}
        shifted = lambda s: unflatten({p: jnp.asarray(flat0[p] + s * v[p]) for p in flat0})
        dot = lambda g: sum(float(np.sum(np.asarray(x) * v[p])) for p, x in flatten(jax.device_get(g)).items())
        alpha = jnp.asarray(np.full(len(paths), 0.2))
        an = dot(vg(lora, alpha)[1][0])
        fd = (float(vg(shifted(STEP), alpha)[0]) - float(vg(shifted(-STEP), alpha)[0])) / (2 * STEP)
        assert abs(an - fd) <= TOL * abs(an), (an, fd)
        # the inner step matters: with alpha = 0 the derivative differs
        an0 = dot(vg(lora, jnp.asarray(np.zeros(len(paths))))[1][0])
        assert abs(an0 - an) > 1e-3 * abs(an)

