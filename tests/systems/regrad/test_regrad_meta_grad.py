"""The two ways of computing ReGrad's meta-gradient give the same gradient (tiny random LLaMA of
regrad_helpers, fp32, lora_B non-zero): `reverse` (jax.grad through the inner jax.grad) and
`linearize` (g_qa - H (alpha * g_qa) with a Hessian-vector product; dL/dalpha = -g * g_qa).

Through `meta_loss` on a batch of 2 tasks (vmap, each task its own inner step), jitted, for every
alpha mode (tie, full, same, fix). Tolerance: 1e-5 of the largest entry per tensor (both are
fp32 evaluations of the same derivative). The torch reference and the finite
differences check `linearize` too (test_regrad_parity.py, test_regrad_finite_diff.py).
"""

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

import regrad_helpers as H  # noqa: E402

from gmem.tree import flatten  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def tiny():
    hf, cfg = H.torch_llama()
    params = H.gmem_params(hf)
    lora, _ = H.gmem_lora(H.peft_wrap(hf))
    tasks = [H.task(seed=s, k=2, lens=(12, 8)) for s in (0, 1)]
    batch = jax.tree_util.tree_map(lambda *x: np.stack(x), *tasks)
    return cfg, params, lora, batch


@pytest.mark.parametrize("alpha_mode", ["tie", "full", "same", "fix"])
def test_linearize_gives_the_reverse_meta_gradient(tiny, alpha_mode):
    cfg, params, lora, batch = tiny
    got = {}
    for how in ("reverse", "linearize"):
        model = H.gmem_model(cfg, alpha_mode, meta_grad=how)
        alpha = model.init_alpha_tree(lora)
        if alpha_mode == "tie":   # distinct per tensor, so a swapped tensor shows
            leaves, tdef = jax.tree_util.tree_flatten(alpha)
            alpha = tdef.unflatten([a * (1 + i) for i, a in enumerate(leaves)])
        trainable = {"lora": lora} if alpha is None else {"lora": lora, "alpha": alpha}
        fn = jax.jit(jax.value_and_grad(lambda tr: model.meta_loss(tr, params, batch), has_aux=True))
        (loss, aux), grads = fn(trainable)
        got[how] = (float(loss), jax.device_get(aux), flatten(jax.device_get(grads)))
    (l_r, aux_r, g_r), (l_l, aux_l, g_l) = got["reverse"], got["linearize"]
    assert abs(l_r - l_l) <= 1e-6 * abs(l_r)
    assert float(aux_r["inner_loss"]) == pytest.approx(float(aux_l["inner_loss"]), rel=1e-6)
    assert g_r.keys() == g_l.keys()
    errs = {p: H.scaled_err(g_l[p], g_r[p]) for p in g_r}
    assert max(errs.values()) <= TOL, errs
    if alpha_mode != "fix":
        assert any(k.startswith("alpha") for k in g_r)
        assert max(np.abs(np.asarray(v)).max() for k, v in g_r.items() if k.startswith("alpha")) > 0
