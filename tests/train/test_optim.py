"""gmem.train.optim: schedules, the weight-decay mask, and clipping with excluded leaves."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gmem.errors import GmemError
from gmem.train.optim import clip_by_global_norm_except, decay_mask, schedule


def test_schedule_warmup_then_linear_decay():
    s = schedule(1.0, total_steps=10, warmup_steps=2, kind="linear", end_lr_ratio=0.0)
    np.testing.assert_allclose([float(s(i)) for i in (0, 1, 2, 6, 10)], [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
    with pytest.raises(GmemError, match="optim.schedule"):
        schedule(1.0, 10, kind="step")


def test_decay_mask_skips_vectors_and_named_leaves():
    p = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "norm": {"w": jnp.ones((2, 2))}}
    assert decay_mask(p) == {"dense": {"kernel": True, "bias": False}, "norm": {"w": False}}


def test_clip_except_leaves_excluded_out_of_norm_and_clip():
    g = {"lora": {"a": jnp.full((3,), 2.0), "b": jnp.full((2, 2), -1.0)},
         "mem": {"layers_1": {"memory_gate": jnp.asarray(50.0)}}}
    out, _ = clip_by_global_norm_except(1.0, ["memory_gate"]).update(g, optax.EmptyState())
    # The gate passes untouched; the rest is clipped exactly as optax clips that rest alone.
    assert float(out["mem"]["layers_1"]["memory_gate"]) == 50.0
    want, _ = optax.clip_by_global_norm(1.0).update(g["lora"], optax.clip_by_global_norm(1.0).init(g["lora"]))
    for k in ("a", "b"):
        np.testing.assert_allclose(out["lora"][k], want[k], rtol=1e-6)
    assert float(optax.global_norm(out["lora"])) == pytest.approx(1.0, rel=1e-5)
    # Without exclusions it is optax's global clip over everything (the gate dominates).
    plain, _ = clip_by_global_norm_except(1.0, []).update(g, optax.clip_by_global_norm(1.0).init(g))
    assert float(optax.global_norm(plain)) == pytest.approx(1.0, rel=1e-5)
    assert float(plain["lora"]["a"][0]) < 0.05
