"""Orbax checkpoints of the training state, with the run's metadata checked on restore.

A checkpoint step holds two items:
  state: trainable params, optimizer state, step and RNG (StandardSave; restored onto any mesh
         through ShapeDtypeStruct targets that carry the new shardings)
  meta:  JSON with the resolved config, the data-iterator position, `structure` (model
         family, adapter specs, memory layers, ...) and `base` (where the frozen base weights
         came from and a sample of their values), compared on restore so a checkpoint from
         another model, or on other base weights, fails with a clear GmemError instead of a
         silent partial load or a mix of two models.
Frozen base weights are not saved; they are re-imported from their source. Saves are async
and atomic (orbax writes a temporary folder and renames it when the save is committed).

Restoring without an explicit step takes the newest step that restores: a step whose files are
damaged (truncated data, unreadable metadata, an empty folder) is skipped with one line saying
why, and never deleted. A training run that resumes from an older step moves the damaged newer
ones aside (STEP -> STEP.unrestorable, ignored by Orbax) so they neither block new saves of the
same step number nor push good checkpoints out of the keep-last-K window.
"""

from __future__ import annotations

import errno
import json
import logging
import pathlib
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from gmem.errors import GmemError

try:  # orbax logs every save/restore decision through absl, and logs each failure (with its
    # traceback) before raising it; the exception is what gmem reports, so keep the log quiet.
    from absl import logging as _absl_logging
    _absl_logging.set_verbosity(_absl_logging.FATAL)
except ImportError:
    pass


class _DropOrbaxTaskNoise(logging.Filter):
    """A failed restore leaves orbax's sibling read tasks with exceptions nobody awaits; asyncio
    logs each ("Task exception was never retrieved", a page of tensorstore spec apiece). The
    restore's own exception is reported; these copies of it are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Task exception was never retrieved"):
            return True
        exc = record.exc_info
        text = "".join(traceback.format_exception(*exc)) if exc and exc[0] else str(record.__dict__)
        return "orbax" not in text


logging.getLogger("asyncio").addFilter(_DropOrbaxTaskNoise())

_previous_unraisablehook = sys.unraisablehook


def _drop_closed_loop_callbacks(u) -> None:
    """The same failed restore leaves tensorstore reads in flight; when they finish, their
    callbacks find orbax's event loop closed and Python prints an unraisable RuntimeError per
    read at exit. Those (and only those) are dropped."""
    if (isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed"
            and any(f.name == "call_soon_threadsafe" for f in traceback.extract_tb(u.exc_traceback))):
        return
    _previous_unraisablehook(u)


sys.unraisablehook = _drop_closed_loop_callbacks

# Errors of a full or unwritable disk, as OSError errno or inside tensorstore's message.
_DISK_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EFBIG: "file too large for the file system", errno.EROFS: "read-only file system"}
_DISK_TEXTS = {"No space left on device": "no space left on device",
               "os_error_code='28'": "no space left on device",
               "Disk quota exceeded": "disk quota exceeded",
               "Read-only file system": "read-only file system"}

SET_ASIDE_SUFFIX = ".unrestorable"


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def disk_problem(e: BaseException) -> str | None:
    """'no space left on device' (...) when `e` (or its cause) is a full/unwritable disk."""
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno in _DISK_ERRNOS:
            return _DISK_ERRNOS[x.errno]
        for text, what in _DISK_TEXTS.items():
            if text in str(x):
                return what
    return None


def short_reason(e: BaseException, limit: int = 240) -> str:
    """One line for why a restore failed: the exception's first line, without tensorstore's
    JSON spec, starting at the file it names when there is one."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    msg = msg.split(" [tensorstore_spec")[0]
    if 'local file "' in msg:  # tensorstore: "... of local file "/x/d/abc": Requested byte range ..."
        msg = msg[msg.rindex('local file "'):]
    text = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
        self._saving: int | None = None   # the step of the save last started
        self._failed = False

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    # ---- saving ---------------------------------------------------------------------------
    def _disk_error(self, e: BaseException) -> GmemError | None:
        what = disk_problem(e)
        if what is None:
            return None
        self._failed = True
        good = [s for s in self.all_steps() if s != self._saving]
        kept = f"newest intact checkpoint: step {good[-1]}" if good else "no checkpoint was committed before it"
        return GmemError(f"{self.directory}/{self._saving}: checkpoint could not be written ({what}); "
                         f"training stopped; {kept}. Free space (or set checkpoint.dir elsewhere) "
                         "and run the same command to resume")

    def save(self, step: int, state, meta: dict, metrics: dict | None = None) -> None:
        """Start an async save of `state` (a TrainState) and `meta` (JSON-able). A full disk,
        here or in the background save of the previous step, is a one-line GmemError."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                                  meta=ocp.args.JsonSave(meta))
        try:
            self.manager.wait_until_finished()   # the previous save's errors belong to its step
            self._saving = step
            self.manager.save(step, args=args, metrics=metrics, force=True)
        except Exception as e:
            err = self._disk_error(e)
            if err is None:
                raise
            raise err from None

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            err = self._disk_error(e)
            if err is None:
                raise
            raise err from None

    def close(self) -> None:
        try:
            self.wait()
        except GmemError:
            if not self._failed:
                raise
            # The failure was reported already; the temporary folder is removed on the next start.
        finally:
            try:
                self.manager.close()
            except Exception as e:
                if disk_problem(e) is None:
                    raise

    # ---- restoring ------------------------------------------------------------------------
    def read_meta(self, step: int | None = None) -> tuple[int, dict]:
        step = self._step(step)
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if not isinstance(meta, dict):
            raise TypeError(f"meta is a {type(meta).__name__}, not an object")
        return step, meta

    def candidates(self, step: int | None = None) -> list[int]:
        """[step] when one is asked for (it must exist), else every step, newest first."""
        if step is not None:
            return [self._step(step)]
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise GmemError(f"{self.directory}: no checkpoint found")
        return steps

    def newest_meta(self, steps: Sequence[int], log: Callable = print) -> tuple[int, dict]:
        """(step, meta) of the first of `steps` whose metadata reads; the others are logged as
        skipped. GmemError when none reads."""
        reasons = []
        for s in steps:
            try:
                return self.read_meta(s)
            except Exception as e:  # noqa: BLE001 - any unreadable step is skipped, not fatal
                reasons.append(f"step {s}: {short_reason(e)}")
                if len(steps) > 1:
                    log(f"skipped checkpoint {self.directory}/{s}: its metadata does not read "
                        f"({short_reason(e)})")
        raise GmemError(f"{self.directory}: no checkpoint whose metadata reads ({'; '.join(reasons)})")

    def restore(self, target_state, structure: dict, step: int | None = None, *,
                steps: Sequence[int] | None = None, check: Callable[[int, dict], None] | None = None,
                set_aside: bool = False, log: Callable = print) -> tuple[Any, dict]:
        """Restore onto target_state's shardings (a TrainState of ShapeDtypeStruct with .sharding).

        `step` restores exactly that step. Without it, the newest of `steps` (default: all, newest
        first) that restores: each damaged one is skipped with a line on `log` saying why. A
        saved structure that differs from `structure` is a GmemError (an older step of the same
        run would differ too), and so is whatever `check(step, meta)` raises (the base-weights
        check). `set_aside` (training) renames the skipped steps to STEP.unrestorable once an
        older one restored. Returns (state, meta); the step is int(state.step)."""
        if steps is None:
            steps = self.candidates(step)
        target = flax.serialization.to_state_dict(target_state)
        fallback = len(steps) > 1
        skipped: list[tuple[int, str]] = []
        for s in steps:
            try:
                _, meta = self.read_meta(s)
            except Exception as e:  # noqa: BLE001
                if not fallback:
                    raise GmemError(f"{self.directory}/{s}: checkpoint metadata does not read "
                                    f"({short_reason(e)})") from None
                skipped.append((s, f"its metadata does not read ({short_reason(e)})"))
                log(f"skipped checkpoint {self.directory}/{s}: {skipped[-1][1]}")
                continue
            problems = describe_mismatch(meta.get("structure", {}), structure)
            if problems:
                raise GmemError(f"{self.directory}/{s}: checkpoint is from another model or setup: "
                                + "; ".join(problems))
            try:
                restored = self.manager.restore(
                    s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
            except Exception as e:  # noqa: BLE001 - damaged files, shapes that do not fit, ...
                if not fallback:
                    raise GmemError(f"{self.directory}/{s}: saved state does not restore onto this run: "
                                    f"{short_reason(e)}") from None
                skipped.append((s, f"its state does not restore ({short_reason(e)})"))
                log(f"skipped checkpoint {self.directory}/{s}: {skipped[-1][1]}")
                continue
            state = flax.serialization.from_state_dict(target_state, restored)
            if check is not None:
                check(s, meta)
            if skipped and set_aside:
                self._set_aside([k for k, _ in skipped], log)
            return state, meta
        raise GmemError(f"{self.directory}: no checkpoint restores (" +
                        "; ".join(f"step {k}: {why}" for k, why in skipped) +
                        "); nothing was deleted. Move the folder away to start afresh")

    def _set_aside(self, steps: Sequence[int], log: Callable) -> None:
        """Rename damaged step folders out of Orbax's sight (never delete them)."""
        if jax.process_index() == 0:
            for s in steps:
                src = self.directory / str(s)
                dst, i = self.directory / f"{s}{SET_ASIDE_SUFFIX}", 1
                while dst.exists():
                    i += 1
                    dst = self.directory / f"{s}{SET_ASIDE_SUFFIX}.{i}"
                src.rename(dst)
                log(f"moved the damaged checkpoint {src} to {dst} (kept, not deleted; new "
                    "checkpoints of this run are written as usual)")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("gmem_checkpoint_set_aside")
        self.manager.reload()

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
            raise GmemError(f"{self.directory}: no checkpoint at step {step}; have {self.all_steps()}")
        return step


def locate(path: str | pathlib.Path, step: int | None = None) -> tuple[Any, int | None]:
    """(checkpoint folder, step) for what a user hands infer.py: a run folder (RUN, holding
    checkpoints/), a checkpoint folder (holding step folders) or one step folder
    (RUN/checkpoints/10, which sets the step). GmemError when it is none of these."""
    if "://" in str(path):
        d = epath.Path(str(path))
    else:
        d = pathlib.Path(path)
    if not d.is_dir():
        raise GmemError(f"{d}: checkpoint directory not found")
    if d.name.isdigit() and _has_steps(d.parent):
        if step is not None and step != int(d.name):
            raise GmemError(f"--checkpoint {d} is the folder of step {d.name}, but --step is {step}")
        return d.parent, int(d.name)
    if not _has_steps(d) and (d / "checkpoints").is_dir():
        return d / "checkpoints", step
    return d, step


def _has_steps(d) -> bool:
    try:
        return any(p.name.isdigit() and p.is_dir() for p in d.iterdir())
    except OSError:
        return False


def open_checkpoint(directory: str | pathlib.Path, cfg) -> Checkpointer:
    """Open an existing checkpoint folder read-only (infer.py); a clear error if there is none.
    `directory` may be a run folder (its checkpoints/ subfolder is used)."""
    d, _ = locate(directory)
    ck = Checkpointer(d, cfg, read_only=True)
    if ck.latest_step() is None:
        raise GmemError(f"{d}: no checkpoint found")
    return ck


def abstract_with_shardings(tree, shardings):
    """ShapeDtypeStruct targets carrying the shardings to restore onto."""
    return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  tree, shardings)
