"""The two optimizer settings ReGrad's recipe needs (gmem.train.optim, shared): warmup from
0.01 * lr as torch's LinearLR(start_factor=0.01), and weight decay on scalar step sizes alpha,
which torch's AdamW decays along with the LoRA matrices."""

import jax.numpy as jnp
import numpy as np
import optax

from gmem.config import OptimConfig
from gmem.train.optim import decay_mask, make_optimizer, schedule


def test_warmup_starts_at_a_fraction_of_lr_then_decays_linearly_to_zero():
    s = schedule(1.0, total_steps=20, warmup_steps=2, kind="linear", end_lr_ratio=0.0,
                 warmup_start_ratio=0.01)
    np.testing.assert_allclose([float(s(i)) for i in (0, 1, 2, 11, 20)],
                               [0.01, 0.505, 1.0, 0.5, 0.0], atol=1e-6)


def test_decay_names_reach_scalars():
    p = {"lora": {"a": jnp.ones((2, 2))}, "alpha": {"a": jnp.ones(())}, "norm": jnp.ones(3)}
    assert decay_mask(p) == {"lora": {"a": True}, "alpha": {"a": False}, "norm": False}
    assert decay_mask(p, decay=["alpha"]) == {"lora": {"a": True}, "alpha": {"a": True}, "norm": False}


def test_adamw_decays_alpha_as_torch_does():
    cfg = OptimConfig(lr=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5, clip_norm=None,
                      decay=["alpha"])
    opt, _ = make_optimizer(cfg, 10)
    p = {"alpha": jnp.asarray(2.0)}
    up, _ = opt.update({"alpha": jnp.asarray(0.0)}, opt.init(p), p)
    # zero gradient: only the decoupled decay moves it, by lr * wd * alpha
    np.testing.assert_allclose(float(optax.apply_updates(p, up)["alpha"]), 2.0 - 0.1 * 0.5 * 2.0, rtol=1e-6)
