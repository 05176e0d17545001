"""The training loop. It knows no system: it builds one by name and uses only the contract
of gmem.train.system.System (structure, base and trainable trees with their shardings, the
loss, batches by index, evaluation)."""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import signal
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from gmem import config as gconfig
from gmem.errors import GmemError
from gmem.train import sharding as shd
from gmem.train.checkpoint import Checkpointer, abstract_with_shardings
from gmem.train.metrics import MetricsWriter
from gmem.train.optim import make_optimizer
from gmem.train.state import TrainState, abstract_state, create_state, state_shardings
from gmem.train.step import jit_train_step, make_train_step
from gmem.train.system import build_system, checked_loss, throughput_unit

# Test hook: after the checkpoint of this step is committed, print a line and stall until killed
# (the exact-resume test SIGKILLs the process at that point).
HANG_ENV = "GMEM_HANG_AFTER_STEP"


def load_system(cfg, **kwargs):
    """The system cfg.system.name names (gmem.train.system.build_system)."""
    return build_system(cfg, **kwargs)


@dataclasses.dataclass
class Plan:
    """Everything about a run that is decided before any weight is allocated."""

    mesh: Any
    rules: tuple
    optimizer: Any
    schedule: Any
    abstract_frozen: Any
    frozen_sh: Any
    abstract_trainable: Any
    trainable_sh: Any
    abstract_state: TrainState
    state_sh: TrainState
    batch_sh: dict
    step: Any  # jitted train step

    def context(self):
        """Mesh + logical rules in scope, so `constrain` inside the model resolves."""
        return _Ctx(self.mesh, self.rules)

    def fresh_state(self, system, seed: int = 0):
        """(frozen base, new TrainState) placed on this plan's shardings: trainables from
        system.init_trainable(PRNGKey(seed)), optimizer state fresh, rng from seed. Call
        inside context()."""
        frozen = jax.device_put(system.load_base(), self.frozen_sh)
        trainable = system.init_trainable(frozen, jax.random.PRNGKey(seed))
        return frozen, jax.device_put(create_state(trainable, self.optimizer, seed), self.state_sh)


class _Ctx:
    def __init__(self, mesh, rules):
        self.mesh, self.rules = mesh, rules

    def __enter__(self):
        self._a = jax.set_mesh(self.mesh)
        self._b = nn.logical_axis_rules(list(self.rules))
        self._a.__enter__()
        self._b.__enter__()
        return self

    def __exit__(self, *exc):
        self._b.__exit__(*exc)
        self._a.__exit__(*exc)


def make_plan(cfg, system, mesh=None) -> Plan:
    m = cfg.sharding.mesh
    mesh = mesh or shd.make_mesh(m.data, m.fsdp, m.tensor)
    rules = shd.rules_with(cfg.sharding.rules)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    abs_frozen, frozen_specs = system.abstract_base()
    frozen_sh = shd.mesh_shardings(frozen_specs, mesh, rules)
    shd.check_divisible(abs_frozen, frozen_sh, "params")
    abs_train = system.abstract_trainable(abs_frozen)
    train_sh = shd.mesh_shardings(system.trainable_specs(abs_train, frozen_specs), mesh, rules)
    shd.check_divisible(abs_train, train_sh, "trainable")
    replicated = NamedSharding(mesh, P())
    st_sh = state_shardings(train_sh, optimizer, abs_train, replicated)
    abs_state = abstract_state(abs_train, optimizer)
    shapes = system.batch_shapes()
    n_batch = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
    for k, s in shapes.items():
        if s.shape[0] % (n_batch * cfg.optim.grad_accum):
            raise GmemError(f"data.batch_size={s.shape[0]} must divide by data*fsdp={n_batch} "
                            f"times optim.grad_accum={cfg.optim.grad_accum}")
    batch_sh = {k: shd.batch_sharding(mesh, rules, len(s.shape)) for k, s in shapes.items()}
    step = jit_train_step(make_train_step(checked_loss(system), optimizer, schedule, cfg.optim.grad_accum),
                          st_sh, frozen_sh, batch_sh)
    return Plan(mesh, rules, optimizer, schedule, abs_frozen, frozen_sh, abs_train, train_sh,
                abs_state, st_sh, batch_sh, step)


def checkpoint_dir(cfg):
    if cfg.checkpoint.dir:
        return cfg.checkpoint.dir  # may be remote (gs://...); Checkpointer resolves it
    return pathlib.Path(cfg.train.run_dir) / "checkpoints"


def _finite(x) -> bool:
    return bool(np.isfinite(np.asarray(x)).all())


def train(cfg, system=None, mesh=None, log=print) -> dict:
    """Train (or resume) per cfg; returns a summary dict. Ctrl-C saves and exits cleanly."""
    interrupted = {"flag": False}

    def on_sigint(signum, frame):
        if interrupted["flag"]:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        interrupted["flag"] = True
        log("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to abort)")

    # Installed first, so a Ctrl-C during loading or compilation is not lost either (and a
    # process started with SIGINT ignored, e.g. a background job, still saves on SIGINT).
    old_handler = signal.signal(signal.SIGINT, on_sigint)
    try:
        return _train(cfg, system, mesh, log, interrupted)
    finally:
        signal.signal(signal.SIGINT, old_handler)


def _train(cfg, system, mesh, log, interrupted) -> dict:
    system = system or load_system(cfg)
    plan = make_plan(cfg, system, mesh)
    run_dir = pathlib.Path(cfg.train.run_dir)
    ckpt = Checkpointer(checkpoint_dir(cfg), cfg.checkpoint)
    writer = MetricsWriter(run_dir)
    config_dict = gconfig.to_dict(cfg)
    host = shd.host_rows(cfg.data.batch_size)
    total = cfg.train.steps
    summary: dict = {"run_dir": str(run_dir), "checkpoint_dir": str(ckpt.directory)}
    try:
        with plan.context():
            start, position = 0, 0
            if cfg.train.resume and ckpt.latest_step() is not None:
                frozen = jax.device_put(system.load_base(), plan.frozen_sh)
                target = abstract_with_shardings(plan.abstract_state, plan.state_sh)
                state, meta = ckpt.restore(target, system.structure)
                start, position = int(state.step), int(meta.get("data_position", int(state.step)))
                log(f"resumed from {ckpt.directory}/{start} (data position {position})")
            else:
                frozen, state = plan.fresh_state(system, cfg.train.seed)
            last_saved = start if start else None
            eval_fn = jax.jit(lambda t, f, x: system.loss(t, f, x, None)[0])   # no dropout

            def save(step, metrics=None):
                meta = {"structure": system.structure, "config": config_dict,
                        "data_position": position, "step": step}
                ckpt.save(step, state, meta, metrics=metrics)

            pbar = None
            if cfg.train.progress and jax.process_index() == 0 and start < total:
                from tqdm import tqdm
                pbar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)
            t_last, losses, unit = time.perf_counter(), [], throughput_unit(system)
            for step in range(start + 1, total + 1):
                batch = shd.global_batch(plan.mesh, system.batch(position, host), plan.rules)
                position += 1
                state, metrics = plan.step(state, frozen, batch)
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not (_finite(metrics["loss"]) and _finite(metrics["grad_norm"])):
                    ckpt.wait()
                    good = ckpt.latest_step()
                    where = f"step {good} in {ckpt.directory}" if good is not None else "none saved yet"
                    raise GmemError(f"step {step}: loss is {metrics['loss']}, grad norm is "
                                    f"{metrics['grad_norm']}; training stopped (last good checkpoint: {where})")
                now = time.perf_counter()
                metrics[f"{unit}_per_s"] = metrics.get(unit, 0.0) / max(now - t_last, 1e-9)
                t_last = now
                losses.append(metrics["loss"])
                if step % cfg.train.log_every == 0 or step == total:
                    writer.write(step, metrics)
                if pbar is not None:
                    rate = {("tok_s" if unit == "tokens" else f"{unit}_s"): f"{metrics[f'{unit}_per_s']:.0f}"}
                    pbar.set_postfix(loss=f"{metrics['loss']:.4f}", **rate)
                    pbar.update(1)
                ev = None
                if cfg.eval.every and (step % cfg.eval.every == 0 or step == total):
                    ev = system.evaluate(state.trainable, frozen, eval_fn)
                    writer.write(step, ev)
                    summary["eval"] = ev
                if step % cfg.checkpoint.every == 0 or step == total or interrupted["flag"]:
                    save(step, ev if cfg.checkpoint.keep_best and ev else None)
                    last_saved = step
                if os.environ.get(HANG_ENV) == str(step):
                    ckpt.wait()
                    print(f"HANG after step {step}", flush=True)
                    while True:
                        time.sleep(1)
                if interrupted["flag"]:
                    ckpt.wait()
                    log(f"\ninterrupted: checkpoint saved at step {step} in {ckpt.directory}; "
                        "run the same command again to resume")
                    summary["interrupted"] = True
                    break
            if pbar is not None:
                pbar.close()
            summary.update(step=int(state.step), losses=losses, last_checkpoint=last_saved)
    finally:
        ckpt.close()
        writer.close()
    return summary
