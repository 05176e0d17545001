"""Metrics: one JSON line per logged step (RUN_DIR/metrics.jsonl) and TensorBoard events
(RUN_DIR/tb). Only process 0 writes. Values are written with full float precision so runs
can be compared bitwise."""

from __future__ import annotations

import json
import pathlib

import jax


class MetricsWriter:
    def __init__(self, run_dir: str | pathlib.Path, tensorboard: bool = True):
        self.run_dir = pathlib.Path(run_dir)
        self.enabled = jax.process_index() == 0
        self._tb = None
        self._file = None
        if self.enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.run_dir / "metrics.jsonl", "a")
            if tensorboard:
                from tensorboardX import SummaryWriter  # slow to import (~4 s): only when TensorBoard logging is on
                self._tb = SummaryWriter(str(self.run_dir / "tb"))

    def write(self, step: int, metrics: dict, prefix: str = "train/") -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for k, v in metrics.items():
            key = k if "/" in k else prefix + k
            row[key] = float(v) if not isinstance(v, str) else v
            if self._tb is not None and not isinstance(v, str):
                self._tb.add_scalar(key, float(v), int(step))
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | pathlib.Path) -> list[dict]:
    p = pathlib.Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
