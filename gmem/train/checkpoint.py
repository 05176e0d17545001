"""Orbax checkpoints of the training state, with the run's metadata checked on restore.

A checkpoint step holds two items:
  state: trainable params, optimizer state, step and RNG (StandardSave; restored onto any mesh
         through ShapeDtypeStruct targets that carry the new shardings)
  meta:  JSON with the resolved config, the data-iterator position and `structure` (model
         family, adapter specs, memory layers, ...), compared on restore so a checkpoint from
         another model fails with a clear GmemError instead of a silent partial load.
Frozen base weights are not saved; they are re-imported from their source. Saves are async
and atomic (orbax writes a temporary folder and renames it when the save is committed).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from gmem.errors import GmemError

try:  # orbax logs every save/restore decision through absl at WARNING; keep the CLI output readable
    from absl import logging as _absl_logging
    _absl_logging.set_verbosity(_absl_logging.ERROR)
except ImportError:
    pass


def _best_policy(cfg):
    sign = -1.0 if cfg.best_mode == "min" else 1.0
    if cfg.best_mode not in ("min", "max"):
        raise GmemError(f"checkpoint.best_mode: use 'min' or 'max', got {cfg.best_mode!r}")
    # BestN keeps the top n after sorting ascending, so "min" ranks by the negated metric.
    return policies.BestN(get_metric_fn=lambda m: sign * float(m[cfg.best_metric]), n=cfg.keep_best,
                          keep_checkpoints_without_metrics=False)


def describe_mismatch(saved: dict, now: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k, "<absent>"), now.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += describe_mismatch(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: checkpoint has {json.dumps(a)}, this run has {json.dumps(b)}")
    return out


class Checkpointer:
    """CheckpointManager over DIR with keep-last-K (+ keep-best-by-metric) and async saves."""

    def __init__(self, directory: str | pathlib.Path, cfg, read_only: bool = False):
        # Remote folders (gs://, s3://) go through etils' epath, which Orbax uses itself.
        if "://" in str(directory):
            from etils import epath
            self.directory = epath.Path(str(directory))
        else:
            self.directory = pathlib.Path(directory).resolve()
        self.cfg = cfg
        keep = [policies.LatestN(n=max(1, cfg.keep))]
        if cfg.keep_best:
            keep.append(_best_policy(cfg))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=cfg.async_save and not read_only,
            preservation_policy=policies.AnyPreservationPolicy(keep),
            create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict, metrics: dict | None = None) -> None:
        """Start an async save of `state` (a TrainState) and `meta` (JSON-able)."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                                  meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, metrics=metrics, force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def read_meta(self, step: int | None = None) -> tuple[int, dict]:
        step = self._step(step)
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        return step, meta

    def restore(self, target_state, structure: dict, step: int | None = None) -> tuple[Any, dict]:
        """Restore onto target_state's shardings (a TrainState of ShapeDtypeStruct with .sharding).

        Raises GmemError when the saved structure differs from `structure`."""
        step, meta = self.read_meta(step)
        problems = describe_mismatch(meta.get("structure", {}), structure)
        if problems:
            raise GmemError(f"{self.directory}/{step}: checkpoint is from another model or setup: "
                            + "; ".join(problems))
        target = flax.serialization.to_state_dict(target_state)
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
        except (ValueError, KeyError) as e:
            raise GmemError(f"{self.directory}/{step}: saved state does not fit this run: "
                            f"{str(e).splitlines()[0]}") from None
        return flax.serialization.from_state_dict(target_state, restored), meta

    def restore_arrays(self, step: int | None = None) -> tuple[int, dict, dict]:
        """(step, the saved state as a nested dict of host arrays, meta), with no target: for
        reading another run's parameters (GMT stage 2 takes stage 1's SGM this way)."""
        step, meta = self.read_meta(step)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
        return step, jax.tree_util.tree_map(np.asarray, restored), meta

    def _step(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise GmemError(f"{self.directory}: no checkpoint found")
        elif step not in self.manager.all_steps():
            raise GmemError(f"{self.directory}: no checkpoint at step {step}; have {list(self.manager.all_steps())}")
        return step


def open_checkpoint(directory: str | pathlib.Path, cfg) -> Checkpointer:
    """Open an existing checkpoint folder read-only (infer.py); a clear error if there is none."""
    if "://" in str(directory):
        from etils import epath
        d = epath.Path(str(directory))
    else:
        d = pathlib.Path(directory)
    if not d.is_dir():
        raise GmemError(f"{d}: checkpoint directory not found")
    ck = Checkpointer(d, cfg, read_only=True)
    if ck.latest_step() is None:
        # A run folder: look for its checkpoints/ subfolder.
        if (d / "checkpoints").is_dir():
            return open_checkpoint(d / "checkpoints", cfg)
        raise GmemError(f"{d}: no checkpoint found")
    return ck


def abstract_with_shardings(tree, shardings):
    """ShapeDtypeStruct targets carrying the shardings to restore onto."""
    return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  tree, shardings)
