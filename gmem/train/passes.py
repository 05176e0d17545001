"""Run a system's offline pass (gmem.train.system.OfflinePass) with progress and resume.

    python train.py --config configs/X.yaml --pass NAME      # uses the run's latest checkpoint

The pass writes under RUN_DIR/passes/NAME/. Progress (items done of total) is committed to
progress.json after each chunk, by atomic rename; a killed pass started again resumes at the
first uncommitted chunk, which the pass rewrites whole (OfflinePass.run_chunk writes a chunk
atomically), so no item is lost or duplicated. Metrics of every chunk go to metrics.jsonl.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import jax
from tqdm import tqdm

from gmem.errors import GmemError
from gmem.train.checkpoint import Checkpointer, abstract_with_shardings
from gmem.train.loop import checkpoint_dir, make_plan
from gmem.train.system import build_system, offline_passes

PROGRESS = "progress.json"


def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_progress(out_dir: pathlib.Path, name: str, total: int, identity: dict) -> int:
    """Items already committed (0 for a new pass). A folder from another pass, another total or
    another identity (corpus, base model, checkpoint step) is refused, never overwritten."""
    p = out_dir / PROGRESS
    if not p.exists():
        return 0
    try:
        saved = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise GmemError(f"{p}: unreadable progress file ({e}); move the folder away to start over") from None
    mine = {"name": name, "total": total, "identity": identity}
    diff = [f"{k}: {saved.get(k)!r} in the folder, {mine[k]!r} now" for k in mine if saved.get(k) != mine[k]]
    if diff:
        raise GmemError(f"{p}: this folder holds another pass ({'; '.join(diff)}); "
                        "move it away or pick another run_dir")
    return int(saved.get("done", 0))


def get_pass(system, name: str):
    """The system's offline pass `name`, or one line naming the ones it has."""
    passes = offline_passes(system)
    if name not in passes:
        known = ", ".join(sorted(passes)) or "none"
        raise GmemError(f"--pass {name}: the {system.name} system has no such pass (it has: {known})")
    return passes[name]


def run_pass(system, name: str, out_dir, trainable, frozen, identity: dict | None = None,
             progress: bool = True, log=print) -> dict:
    """Run pass `name` of `system` into out_dir, resuming what an earlier run committed.
    identity: what the outputs depend on (recorded and checked on resume). Returns a summary."""
    ps = get_pass(system, name)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    identity = dict(identity or {})
    done = read_progress(out, name, ps.total, identity)
    if done:
        log(f"pass {name}: resuming at {done}/{ps.total} {ps.unit} ({out})")
    bar = None
    if progress and done < ps.total:
        bar = tqdm(total=ps.total, initial=done, desc=name, unit=ps.unit.rstrip("s") or "item",
                   dynamic_ncols=True)
    t0, n0 = time.perf_counter(), done
    with open(out / "metrics.jsonl", "a") as metrics:
        while done < ps.total:
            stop = min(done + ps.chunk, ps.total)
            m = dict(ps.run_chunk(done, stop, out, trainable, frozen) or {})
            done = stop
            rate = (done - n0) / max(time.perf_counter() - t0, 1e-9)
            m.update({"done": done, f"{ps.unit}_per_s": rate})
            metrics.write(json.dumps(m) + "\n")
            metrics.flush()
            _write_atomic(out / PROGRESS, json.dumps({"name": name, "total": ps.total, "done": done,
                                                      "identity": identity}, indent=1))
            if bar is not None:
                bar.set_postfix({f"{ps.unit}/s": f"{rate:.1f}"})
                bar.update(stop - bar.n)
    if bar is not None:
        bar.close()
    summary = {"pass": name, "done": done, "total": ps.total, "out": str(out)}
    if ps.finish is not None:
        summary.update(ps.finish(out) or {})
    return summary


def run_configured_pass(cfg, name: str, log=print) -> dict:
    """train.py --pass NAME: build the system of cfg, take the trainable tree of the run's latest
    checkpoint (a fresh one when the run has none) and run pass NAME into RUN_DIR/passes/NAME."""
    system = build_system(cfg)
    get_pass(system, name)                       # fail before any weight is loaded
    plan = make_plan(cfg, system)
    ckpt = Checkpointer(checkpoint_dir(cfg), cfg.checkpoint, read_only=True)
    try:
        with plan.context():
            if ckpt.latest_step() is not None:
                frozen = jax.device_put(system.load_base(), plan.frozen_sh)
                target = abstract_with_shardings(plan.abstract_state, plan.state_sh)
                state, _ = ckpt.restore(target, system.structure)
                step = int(state.step)
                log(f"pass {name}: trainable parameters from {ckpt.directory}/{step}")
            else:
                frozen, state = plan.fresh_state(system, cfg.train.seed)
                step = 0
                log(f"pass {name}: no checkpoint in {ckpt.directory}; fresh trainable parameters")
            out = pathlib.Path(cfg.train.run_dir) / "passes" / name
            return run_pass(system, name, out, state.trainable, frozen,
                            identity={"structure": system.structure, "step": step},
                            progress=cfg.train.progress, log=log)
    finally:
        ckpt.close()
