"""Load a trained checkpoint back (base weights from their source + saved trainable state),
evaluate / generate with the system, and export adapters or the merged model."""

from __future__ import annotations

import json
import pathlib

import jax

from gmem import config as gconfig
from gmem.errors import GmemError
from gmem.train.checkpoint import abstract_with_shardings, open_checkpoint
from gmem.train.loop import load_system, make_plan


def restore_run(checkpoint: str | pathlib.Path, overrides=(), override_files=(), step: int | None = None,
                mesh=None):
    """(cfg, system, plan, state, frozen, step) from a checkpoint folder (or its run folder).
    The saved config is the base; overrides change what does not alter the structure
    (eval.*, sharding.*, data.* for evaluation ...)."""
    probe = open_checkpoint(checkpoint, gconfig.CheckpointConfig())
    step, meta = probe.read_meta(step)
    if "config" not in meta:
        raise GmemError(f"{probe.directory}/{step}: checkpoint has no saved config")
    saved = dict(meta["config"])
    # The saved mesh fitted the training machine; inference starts from all local devices
    # (sharding.mesh.* overrides still apply).
    saved["sharding"] = dict(saved.get("sharding", {}), mesh={"data": -1, "fsdp": 1, "tensor": 1})
    cfg = gconfig.to_object(gconfig.load_config(None, overrides, override_files, base=saved))
    cfg.train.resume = True
    system = load_system(cfg)
    plan = make_plan(cfg, system, mesh)
    with plan.context():
        frozen = jax.device_put(system.load_base(), plan.frozen_sh)
        target = abstract_with_shardings(plan.abstract_state, plan.state_sh)
        state, _ = probe.restore(target, system.structure, step)
    probe.close()
    return cfg, system, plan, state, frozen, step


def run_inference(checkpoint, out_dir=None, overrides=(), override_files=(), prompts=None,
                  step=None, log=print) -> dict:
    """Evaluate + generate; writes OUT/predictions.jsonl and OUT/metrics.json."""
    from gmem.data.text import write_jsonl
    cfg, system, plan, state, frozen, step = restore_run(checkpoint, overrides, override_files, step)
    out = pathlib.Path(out_dir or pathlib.Path(cfg.train.run_dir) / "infer")
    with plan.context():
        metrics = {"step": step}
        metrics.update(system.evaluate(state.trainable, frozen))
        rows, gen_metrics = system.predict(state.trainable, frozen, prompts)
        metrics.update(gen_metrics)
    write_jsonl(out / "predictions.jsonl", rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return {"out": str(out), "metrics": metrics, "predictions": rows,
            "cfg": cfg, "system": system, "state": state, "frozen": frozen}
