"""The loop with a toy system (train/ knows no system): NaN stops training naming the step and
leaves the last good checkpoint; gradient accumulation; optimizer state for trainables only;
metrics files and the loss plot."""

import dataclasses
import json
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmem.errors import GmemError
from gmem.systems.lm import LMSystem
from gmem.train import sharding as shd
from gmem.train.checkpoint import Checkpointer
from gmem.train.loop import make_plan, train
from train_helpers import ROOT, ToySystem, tiny_cfg, toy_cfg


def test_nan_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    cfg = toy_cfg(tmp_path, "checkpoint.async_save=false")
    with pytest.raises(GmemError, match=r"^step 4: loss is nan, grad norm is nan; training stopped "
                                        r"\(last good checkpoint: step 2 in .*checkpoints\)$"):
        train(cfg, ToySystem(poison=3), log=lambda *_: None)
    ck = Checkpointer(tmp_path / "run" / "checkpoints", cfg.checkpoint, read_only=True)
    assert list(ck.manager.all_steps()) == [2]
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["train/loss"]) for r in rows)
    # The same run without the poison resumes from that checkpoint and finishes.
    out = train(cfg, ToySystem(), log=lambda *_: None)
    assert out["step"] == 6 and len(out["losses"]) == 4


def test_metrics_files_and_plot(tmp_path):
    cfg = toy_cfg(tmp_path, "eval.every=3")
    out = train(cfg, ToySystem(), log=lambda *_: None)
    assert out["losses"][-1] < out["losses"][0]
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    assert {"train/loss", "train/grad_norm", "train/lr", "train/tokens_per_s", "eval/loss"} <= keys
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    r = subprocess.run([sys.executable, "-m", "gmem.train.plot", str(tmp_path / "run")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    png = tmp_path / "run" / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def run_lm(cfg, steps=3):
    system = LMSystem(cfg)
    plan = make_plan(cfg, system, shd.make_mesh(devices=jax.devices()[:2]))
    with plan.context():
        frozen, state = plan.fresh_state(system)
        losses = []
        for i in range(steps):
            state, m = plan.step(state, frozen, shd.global_batch(plan.mesh, system.batch(i), plan.rules))
            losses.append(float(m["loss"]))
    return np.array(losses), state, frozen


def test_grad_accumulation_and_trainable_only_optimizer_state(tmp_path):
    """4 micro-batches of 2 rows give the same update as one batch of 8 (equal token counts);
    the optimizer state covers the adapter tree only."""
    full, s1, frozen = run_lm(tiny_cfg(tmp_path, "optim.grad_accum=1"))
    acc, s4, _ = run_lm(tiny_cfg(tmp_path, "optim.grad_accum=4"))
    np.testing.assert_allclose(acc, full, rtol=1e-5)
    chex.assert_trees_all_close(s1.trainable, s4.trainable, rtol=1e-4, atol=1e-6)
    state = s1
    n_train = sum(x.size for x in jax.tree_util.tree_leaves(state.trainable))
    n_opt = sum(x.size for x in jax.tree_util.tree_leaves(state.opt_state))
    n_base = sum(x.size for x in jax.tree_util.tree_leaves(frozen))
    assert n_opt <= 2 * n_train + 16  # Adam mu and nu (+ counters), nothing base-sized
    assert n_train < n_base // 4
    # Only adapter leaves are trainable.
    leaves = jax.tree_util.tree_flatten_with_path(state.trainable)[0]
    assert {jax.tree_util.keystr(p).split("'")[-2] for p, _ in leaves} == {"lora_A", "lora_B"}


def test_evaluation_loss_runs_without_dropout(tmp_path):
    """loss(..., rng=None) is the loop's evaluation: adapter dropout (0.5 here) is off, so it
    equals the same weights' loss with dropout 0, while a training rng changes it."""
    cfg = tiny_cfg(tmp_path, "adapters.0.dropout=0.5")
    assert cfg.adapters[0].dropout == 0.5
    system = LMSystem(cfg)
    plan = make_plan(cfg, system, shd.make_mesh(devices=jax.devices()[:1]))
    with plan.context():
        frozen, state = plan.fresh_state(system)
    # LoRA B starts at zero (dropout on the adapter input would change nothing): make it live.
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 64))
    trainable = jax.tree_util.tree_map(lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape), state.trainable)
    batch = {k: jnp.asarray(v) for k, v in system.batch(0).items()}
    no_drop = LMSystem(dataclasses.replace(cfg, adapters=[dataclasses.replace(cfg.adapters[0], dropout=0.0)]))
    ev = float(system.loss(trainable, frozen, batch, None)[0])
    ref = float(no_drop.loss(trainable, frozen, batch, jax.random.PRNGKey(0))[0])
    train_loss = float(system.loss(trainable, frozen, batch, jax.random.PRNGKey(0))[0])
    assert ev == pytest.approx(ref, rel=1e-6)
    assert abs(train_loss - ev) > 1e-3
