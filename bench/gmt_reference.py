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
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.results import table, write_section  # noqa: E402

METRICS = ("accuracy", "precision", "recall", "f1", "unparsed", "n_true", "n_false")


def _metrics(path: pathlib.Path, how: str) -> dict:
    if not path.exists():
        raise SystemExit(f"{path}: not found; run `{how}` first")
    return json.loads(path.read_text())


def _last_loss(run: pathlib.Path) -> tuple[int, float]:
    """(last step, mean train loss of the last 100 logged steps' rows) from RUN/metrics.jsonl."""
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    train = [r for r in rows if "train/loss" in r]
    if not train:
        raise SystemExit(f"{run / 'metrics.jsonl'}: no train/loss rows")
    tail = [r for r in train if r["step"] > train[-1]["step"] - 100]
    return train[-1]["step"], sum(r["train/loss"] for r in tail) / len(tail)


def rows_for(gmt: pathlib.Path, lora: pathlib.Path) -> list[list]:
    runs = [("GMT (memory in the top 8 layers)", gmt, gmt / "infer", f"python infer.py --checkpoint {gmt}"),
            ("GMT, memory shuffled across the batch (ablation)", gmt, gmt / "infer_shuffle",
             f"python infer.py --checkpoint {gmt} system.memory_ablation=shuffle --out {gmt}/infer_shuffle"),
            ("LoRA on the same layers' self-attention, no memory", lora, lora / "infer",
             f"python infer.py --checkpoint {lora}")]
    out = []
    for label, run, folder, how in runs:
        m = _metrics(folder / "metrics.json", how)
        step, loss = _last_loss(run)
        out.append([label, step, f"{loss:.3f}"] + [f"{m[f'tc/{k}']:.3f}" if isinstance(m[f"tc/{k}"], float)
                                                   else m[f"tc/{k}"] for k in METRICS])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gmt", default="runs/gmt_reference")
    ap.add_argument("--lora", default="runs/gmt_reference_lora")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    head = ["run", "steps", "train loss (last 100 steps)"] + [f"test {k}" for k in METRICS]
    body = ("## GMT against LoRA at the reference's stage-2 recipe (`python bench/gmt_reference.py`)\n\n"
            "UMLS triple classification, the full test set, gmem's protocol (README, GMT), "
            "configs/gmt_reference*.yaml.\n\n" + table(head, rows_for(pathlib.Path(a.gmt), pathlib.Path(a.lora))))
    print(body)
    if not a.no_write:
        write_section("gmt_reference", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
