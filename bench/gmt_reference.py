#!/usr/bin/env python
"""GMT at the reference's stage-2 recipe against its LoRA baseline at the same budget, with the
shuffled-memory ablation: one table from the three runs' `infer.py` outputs, written to
bench/RESULTS.md (section gmt_reference). The runs (2-3.5 h each on 2 CPU cores; they
checkpoint every 200 steps and resume):

    python train.py --config configs/gmt_reference_stage1.yaml    # the SGM, 2.5 min
    python train.py --config configs/gmt_reference.yaml
    python train.py --config configs/gmt_reference_lora.yaml
    python infer.py --checkpoint runs/gmt_reference
    python infer.py --checkpoint runs/gmt_reference system.memory_ablation=shuffle --out runs/gmt_reference/infer_shuffle
    python infer.py --checkpoint runs/gmt_reference_lora
    python bench/gmt_reference.py [--gmt runs/gmt_reference] [--lora runs/gmt_reference_lora] [--no-write]

A run's folder (runs/ is not in git) rarely outlives the machine it trained on, and one run
takes most of a 2-core box's day, so each finished run's summary (steps, train loss, test
metrics, and the commit and date it was first recorded at) is kept in bench/gmt_reference.json, which is committed: the table is
made from the runs present and, for the others, from that record; a row with neither says so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.results import table, write_section  # noqa: E402

METRICS = ("accuracy", "precision", "recall", "f1", "unparsed", "n_true", "n_false")
RECORD = pathlib.Path(__file__).with_name("gmt_reference.json")


def _last_loss(run: pathlib.Path) -> tuple[int, float]:
    """(last step, mean train loss of the last 100 logged steps' rows) from RUN/metrics.jsonl."""
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    train = [r for r in rows if "train/loss" in r]
    if not train:
        raise SystemExit(f"{run / 'metrics.jsonl'}: no train/loss rows")
    tail = [r for r in train if r["step"] > train[-1]["step"] - 100]
    return train[-1]["step"], sum(r["train/loss"] for r in tail) / len(tail)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=pathlib.Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def runs(gmt: pathlib.Path, lora: pathlib.Path) -> list[tuple[str, str, pathlib.Path, pathlib.Path, str]]:
    """(key, label, run folder, infer folder, the command that makes the infer folder) per row."""
    return [("gmt", "GMT (memory in the top 8 layers)", gmt, gmt / "infer", f"python infer.py --checkpoint {gmt}"),
            ("gmt_shuffle", "GMT, memory shuffled across the batch (ablation)", gmt, gmt / "infer_shuffle",
             f"python infer.py --checkpoint {gmt} system.memory_ablation=shuffle --out {gmt}/infer_shuffle"),
            ("lora", "LoRA on the same layers' self-attention, no memory", lora, lora / "infer",
             f"python infer.py --checkpoint {lora}")]


def summary(run: pathlib.Path, folder: pathlib.Path) -> dict | None:
    """A finished run's row as data, or None when its infer output is not there."""
    path = folder / "metrics.json"
    if not path.exists():
        return None
    m = json.loads(path.read_text())
    step, loss = _last_loss(run)
    return {"steps": step, "train_loss": round(loss, 4), "protocol": m.get("tc/protocol", "gmem"),
            **{k: m[f"tc/{k}"] for k in METRICS}, "commit": _commit(), "date": datetime.date.today().isoformat()}


def merged(gmt: pathlib.Path, lora: pathlib.Path, record: dict) -> tuple[list[list], dict]:
    """(table rows, updated record): each row from its run folder if it has an infer output, else
    from the record, else marked not run."""
    rows, record = [], dict(record)
    for key, label, run, folder, how in runs(gmt, lora):
        found = summary(run, folder)
        old = record.get(key) or {}
        if found is not None and {k: v for k, v in found.items() if k not in ("commit", "date")} != \
                {k: v for k, v in old.items() if k not in ("commit", "date")}:
            record[key] = found      # new numbers; unchanged ones keep the commit and date first recorded
        r = record.get(key)
        if r is None:
            rows.append([label, "not run yet", f"`{how}`"] + [""] * (len(METRICS) + 1))
            continue
        rows.append([label, r["steps"], f"{r['train_loss']:.3f}"]
                    + [f"{r[k]:.3f}" if isinstance(r[k], float) else r[k] for k in METRICS]
                    + [f"{r['commit']}, {r['date']}"])
    return rows, record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gmt", default="runs/gmt_reference")
    ap.add_argument("--lora", default="runs/gmt_reference_lora")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    head = ["run", "steps", "train loss (last 100 steps)"] + [f"test {k}" for k in METRICS] + ["recorded at (commit, date)"]
    record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    rows, record = merged(pathlib.Path(a.gmt), pathlib.Path(a.lora), record)
    body = ("## GMT against LoRA at the reference's stage-2 recipe (`python bench/gmt_reference.py`)\n\n"
            "UMLS triple classification, the full test set, gmem's protocol (README, GMT), "
            "configs/gmt_reference*.yaml. Rows of runs finished on an earlier machine come from "
            "bench/gmt_reference.json.\n\n" + table(head, rows))
    print(body)
    if not a.no_write:
        RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        write_section("gmt_reference", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
