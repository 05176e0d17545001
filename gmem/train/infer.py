"""Load a trained checkpoint back (base weights from their source + saved trainable state),
evaluate / generate with the system, and export adapters or the merged model."""

from __future__ import annotations

import json
import pathlib

import jax

from gmem import config as gconfig
from gmem.data.text import write_jsonl
from gmem.errors import GmemError
from gmem.train.checkpoint import Checkpointer, abstract_with_shardings, locate
from gmem.train.loop import base_source, check_base, load_system, make_plan


def restore_run(checkpoint: str | pathlib.Path, overrides=(), override_files=(), step: int | None = None,
                mesh=None, log=print):
    """(cfg, system, plan, state, frozen, step) from a run folder, its checkpoints/ folder or a
    step folder (RUN/checkpoints/10 sets the step). The saved config is the base; overrides
    change what does not alter the structure (eval.*, sharding.*, data.* for evaluation ...).
    Without a step, the newest step that restores is used (damaged ones are skipped with a line
    on `log`, and left in place); other base weights than the checkpoint's are refused unless
    train.allow_base_change=true."""
    directory, step = locate(checkpoint, step)
    probe = Checkpointer(directory, gconfig.CheckpointConfig(), read_only=True)
    try:
        steps = probe.candidates(step)
        first, meta = probe.newest_meta(steps, log)
        if "config" not in meta:
            raise GmemError(f"{probe.directory}/{first}: checkpoint has no saved config")
        saved = dict(meta["config"])
        # The saved mesh shape fitted the training machine; inference starts from data parallel
        # over the devices the run was limited to (sharding.mesh.devices, null = all local ones);
        # sharding.mesh.* overrides still apply.
        devices = (saved.get("sharding", {}).get("mesh") or {}).get("devices")
        saved["sharding"] = dict(saved.get("sharding", {}),
                                 mesh={"data": -1, "fsdp": 1, "tensor": 1, "devices": devices})
        cfg = gconfig.to_object(gconfig.load_config(None, overrides, override_files, base=saved))
        cfg.train.resume = True
        system = load_system(cfg)
        plan = make_plan(cfg, system, mesh)
        with plan.context():
            frozen, identity = plan.load_frozen(system, base_source(cfg))
            target = abstract_with_shardings(plan.abstract_state, plan.state_sh)
            state, _ = probe.restore(
                target, system.structure, steps=steps[steps.index(first):], log=log,
                check=lambda s, m: check_base(f"{probe.directory}/{s}", m, identity, cfg, log))
    finally:
        probe.close()
    return cfg, system, plan, state, frozen, int(state.step)


def default_out_dir(checkpoint: str | pathlib.Path) -> pathlib.Path:
    """Where infer.py writes without --out: RUN/infer for the run folder it was given (also when
    given RUN/checkpoints or RUN/checkpoints/N), else CHECKPOINT_DIR/infer. Never the saved
    train.run_dir, which on a copied run is the original's."""
    d = pathlib.Path(str(checkpoint))
    if d.name.isdigit() and d.parent.name == "checkpoints":
        d = d.parent
    if d.name == "checkpoints" and not (d / "checkpoints").is_dir():
        d = d.parent
    return d / "infer"


def run_inference(checkpoint, out_dir=None, overrides=(), override_files=(), prompts=None,
                  step=None, log=print) -> dict:
    """Evaluate + generate; writes OUT/predictions.jsonl and OUT/metrics.json (OUT: out_dir, or
    default_out_dir(checkpoint))."""
    cfg, system, plan, state, frozen, step = restore_run(checkpoint, overrides, override_files, step, log=log)
    out = pathlib.Path(out_dir) if out_dir else default_out_dir(checkpoint)
    with plan.context():
        metrics = {"step": step}
        metrics.update(system.evaluate(state.trainable, frozen))
        rows, gen_metrics = system.predict(state.trainable, frozen, prompts)
        metrics.update(gen_metrics)
    if jax.process_index() == 0:
        write_jsonl(out / "predictions.jsonl", rows)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return {"out": str(out), "metrics": metrics, "predictions": rows,
            "cfg": cfg, "system": system, "state": state, "frozen": frozen}
