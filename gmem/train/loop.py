"""The training loop. It knows no system: it builds one by name and uses only the contract
of gmem.train.system.System (structure, base and trainable trees with their shardings, the
loss, batches by index, evaluation).

What a run guarantees (README, "Training and inference"):
  - a checkpoint is written only from a state whose trainable parameters are all finite and
    whose loss (without dropout, on the first micro-batch of the step that produced it) is
    finite; a NaN/inf stop names the newest such checkpoint;
  - a resume takes the newest checkpoint that restores, skipping damaged ones with a line each
    (moved aside, never deleted), and refuses one from another model or other base weights
    (train.allow_base_change=true overrides the latter);
  - RUN_DIR/config.yaml is written only once the run is accepted (after those checks).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import signal
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from gmem import config as gconfig
from gmem.errors import GmemError
from gmem.train import sharding as shd
from gmem.train.base_identity import base_identity, compare_base
from gmem.train.checkpoint import Checkpointer, abstract_with_shardings, describe_mismatch
from gmem.train.metrics import MetricsWriter
from gmem.train.optim import make_optimizer
from gmem.train.state import TrainState, abstract_state, create_state, state_shardings
from gmem.train.step import jit_train_step, make_train_step
from gmem.train.system import build_system, checked_loss, throughput_unit


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

    def load_frozen(self, system, source: str | None = None):
        """(frozen base on this plan's shardings, its identity record for checkpoints: `source`
        plus sampled values, see base_identity.py). Call inside context()."""
        host = system.load_base()
        identity = base_identity(host, source)
        return jax.device_put(host, self.frozen_sh), identity

    def fresh_state(self, system, seed: int = 0, frozen=None):
        """(frozen base, new TrainState) placed on this plan's shardings: trainables from
        system.init_trainable(PRNGKey(seed)), optimizer state fresh, rng from seed. Call
        inside context(). `frozen`: an already loaded base (else system.load_base())."""
        if frozen is None:
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
    mesh = mesh or shd.make_mesh(m.data, m.fsdp, m.tensor, devices=shd.first_devices(m.devices))
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
        if not s.shape or s.shape[0] < 1:
            raise GmemError(f"data.batch_size: a batch needs at least one row (batch {k!r} has shape "
                            f"{tuple(s.shape)})")
        if any(d < 1 for d in s.shape[1:]):
            raise GmemError(f"batch {k!r} has shape {tuple(s.shape)}: every dimension must be at least 1 "
                            "(check data.seq_len and the system's size options)")
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


def check_run_config(cfg) -> None:
    """The options the loop itself reads, range-checked before anything is built (one GmemError
    naming the field: `checkpoint.every=0` would otherwise fail after the first step)."""
    for key, value, least in (("train.steps", cfg.train.steps, 0), ("train.log_every", cfg.train.log_every, 1),
                              ("checkpoint.every", cfg.checkpoint.every, 1),
                              ("checkpoint.keep", cfg.checkpoint.keep, 1),
                              ("checkpoint.keep_best", cfg.checkpoint.keep_best, 0),
                              ("eval.every", cfg.eval.every, 0), ("optim.grad_accum", cfg.optim.grad_accum, 1),
                              ("data.batch_size", cfg.data.batch_size, 1)):
        if value < least:
            raise GmemError(f"{key}={value}: must be at least {least}")


def base_source(cfg) -> str | None:
    """The config's name for the base weights (model.source), for the checkpoint's base record."""
    model = getattr(cfg, "model", None)
    return None if model is None else str(getattr(model, "source", None))


def check_base(where: str, meta: dict, identity: dict, cfg, log=print) -> None:
    """Refuse (GmemError) to continue from a checkpoint trained on other base weights than the
    ones loaded now, listing the differences; train.allow_base_change=true turns the refusal
    into a warning. A checkpoint written before gmem recorded the base gets a note."""
    saved = meta.get("base")
    if not isinstance(saved, dict) or "tensors" not in saved:
        log(f"note: {where} does not record its base weights (written by an older gmem); "
            "they are not checked")
        return
    differ = compare_base(saved, identity)
    moved = saved.get("source") != identity.get("source")
    if not differ:
        if moved:
            log(f"note: the base weights now come from {identity.get('source')!r} (the checkpoint's "
                f"came from {saved.get('source')!r}); their values match")
        return
    saved_model = (meta.get("config") or {}).get("model")
    now_model = gconfig.to_dict(cfg).get("model")
    hints = ([h for h in describe_mismatch(saved_model, now_model, "model.") if '"<absent>"' not in h]
             if isinstance(saved_model, dict) and isinstance(now_model, dict) else [])
    if moved and not any(h.startswith("model.source:") for h in hints):
        hints.insert(0, f"source: checkpoint has {saved.get('source')!r}, this run has {identity.get('source')!r}")
    msg = (f"{where}: the base weights differ from the ones this checkpoint was trained on: "
           + "; ".join(hints + differ))
    if getattr(cfg.train, "allow_base_change", False):
        log(f"warning: {msg}; continuing because train.allow_base_change=true")
        return
    raise GmemError(msg + ". Use the same base, or set train.allow_base_change=true to continue "
                    "on these weights anyway")


def write_run_config(run_dir: pathlib.Path, cfg) -> None:
    """RUN_DIR/config.yaml (process 0): written once the run is accepted, never by a refused start."""
    if jax.process_index() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(gconfig.to_yaml(cfg))


def _all_finite(tree) -> jax.Array:
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not leaves:
        return jnp.asarray(True)
    return jnp.stack([jnp.isfinite(x).all() for x in leaves]).all()


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
    check_run_config(cfg)
    system = system or load_system(cfg)
    plan = make_plan(cfg, system, mesh)
    run_dir = pathlib.Path(cfg.train.run_dir)
    ckpt = writer = None
    config_dict = gconfig.to_dict(cfg)
    host = shd.host_rows(cfg.data.batch_size)
    total = cfg.train.steps
    unit = throughput_unit(system)
    summary: dict = {"run_dir": str(run_dir)}
    try:
        with plan.context():
            start, position = 0, 0
            frozen, identity = plan.load_frozen(system, base_source(cfg))
            ckpt = Checkpointer(checkpoint_dir(cfg), cfg.checkpoint)
            summary["checkpoint_dir"] = str(ckpt.directory)
            existing = ckpt.all_steps()
            if existing and not cfg.train.resume:
                raise GmemError(f"train.resume=false, but {ckpt.directory} holds checkpoints (steps "
                                f"{existing}); use another train.run_dir (or checkpoint.dir), or move "
                                "them away to start afresh")
            if existing:
                target = abstract_with_shardings(plan.abstract_state, plan.state_sh)
                state, meta = ckpt.restore(
                    target, system.structure, set_aside=True, log=log,
                    check=lambda s, m: check_base(f"{ckpt.directory}/{s}", m, identity, cfg, log))
                start = int(state.step)
                position = int(meta.get("data_position", start))
                log(f"resumed from {ckpt.directory}/{start} (data position {position})")
            else:
                frozen, state = plan.fresh_state(system, cfg.train.seed, frozen=frozen)
            # The run is accepted: from here on it writes into RUN_DIR.
            write_run_config(run_dir, cfg)
            writer = MetricsWriter(run_dir)
            last_saved = start if start else None
            eval_fn = jax.jit(lambda t, f, x: system.loss(t, f, x, None)[0])   # no dropout
            n_micro = cfg.optim.grad_accum

            @jax.jit
            def health(t, f, x):
                """(all trainable leaves finite, loss without dropout) of the state to be saved, on
                the first micro-batch of the step's batch (rows 0, n, 2n, ...: no more memory than
                a training micro-step)."""
                micro = jax.tree_util.tree_map(lambda a: a[::n_micro], x) if n_micro > 1 else x
                return _all_finite(t), system.loss(t, f, micro, None)[0]

            def stop(step, what):
                ckpt.wait()
                good = ckpt.latest_step()
                where = f"step {good} in {ckpt.directory}" if good is not None else "none saved yet"
                raise GmemError(f"step {step}: {what}; training stopped (last good checkpoint: {where})")

            def save(step, batch, metrics=None):
                # Only a healthy state is written: finite parameters, and a finite loss of those
                # parameters (the loss the next step would start from) on this step's batch.
                ok, loss = health(state.trainable, frozen, batch)
                if not bool(ok):
                    stop(step, "the update made some trainable parameters non-finite, so they were not saved")
                loss = float(loss)
                if not _finite(loss):
                    stop(step, f"the updated parameters give a loss of {loss} on this step's batch, "
                               "so they were not saved")
                meta = {"structure": system.structure, "config": config_dict, "base": identity,
                        "data_position": position, "step": step}
                ckpt.save(step, state, meta, metrics=metrics)

            pbar = None
            if cfg.train.progress and jax.process_index() == 0 and start < total:
                pbar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)
            t_last, losses = time.perf_counter(), []
            for step in range(start + 1, total + 1):
                batch = shd.global_batch(plan.mesh, system.batch(position, host), plan.rules)
                position += 1
                state, metrics = plan.step(state, frozen, batch)
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not (_finite(metrics["loss"]) and _finite(metrics["grad_norm"])):
                    stop(step, f"loss is {metrics['loss']}, grad norm is {metrics['grad_norm']}")
                now = time.perf_counter()
                if unit in metrics:  # throughput in the unit the system counts (tokens, triples, ...)
                    metrics[f"{unit}_per_s"] = metrics[unit] / max(now - t_last, 1e-9)
                t_last = now
                losses.append(metrics["loss"])
                if step % cfg.train.log_every == 0 or step == total:
                    writer.write(step, metrics)
                if pbar is not None:
                    rate = ({("tok_s" if unit == "tokens" else f"{unit}_s"): f"{metrics[unit + '_per_s']:.0f}"}
                            if unit in metrics else {})
                    pbar.set_postfix(loss=f"{metrics['loss']:.4f}", **rate)
                    pbar.update(1)
                ev = None
                if cfg.eval.every and (step % cfg.eval.every == 0 or step == total):
                    ev = system.evaluate(state.trainable, frozen, eval_fn)
                    writer.write(step, ev)
                    summary["eval"] = ev
                if step % cfg.checkpoint.every == 0 or step == total or interrupted["flag"]:
                    save(step, batch, ev if cfg.checkpoint.keep_best and ev else None)
                    last_saved = step
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
        if ckpt is not None:
            ckpt.close()
        if writer is not None:
            writer.close()
    return summary
