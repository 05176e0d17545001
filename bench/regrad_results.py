#!/usr/bin/env python
"""ReGrad's results table: EM/F1 of every mode on both dev sets, from a run's `infer.py` output
(RUN/infer/metrics.json) and its training log (RUN/metrics.jsonl), written to bench/RESULTS.md
(section regrad_results).

    python train.py --config configs/regrad.yaml [overrides]            # meta-training
    python train.py --config configs/regrad.yaml --pass bank [same]     # the gradient bank
    python infer.py --checkpoint RUN                                     # every mode
    python bench/regrad_results.py RUN [--cpu-min M] [--note "..."] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.results import table, write_section  # noqa: E402

MODES = (("direct", "direct: base model, no passages"), ("rag", "RAG: base model, passages in the prompt"),
         ("regrad", "ReGrad: theta' from the bank, no passages"),
         ("regrad_icl", "ReGrad + ICL: theta' and the passages"),
         ("shift", "shift: question i gets question i-1's gradients"))


def training_summary(run: pathlib.Path) -> dict:
    """Steps, first and last train loss (mean of the first / last 8 steps) and the final alphas'
    mean, from RUN/metrics.jsonl."""
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    train = [r for r in rows if "train/loss" in r]
    if not train:
        raise SystemExit(f"{run / 'metrics.jsonl'}: no train/loss rows")
    mean = lambda rs: sum(r["train/loss"] for r in rs) / len(rs)
    return {"steps": train[-1]["step"], "loss_first": mean(train[:8]), "loss_last": mean(train[-8:])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--cpu-min", type=float, help="CPU minutes of the meta-training (user + sys)")
    ap.add_argument("--note", default="", help="a sentence on how the run was made")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    run = pathlib.Path(a.run)
    path = run / "infer" / "metrics.json"
    if not path.exists():
        raise SystemExit(f"{path}: not found; run `python infer.py --checkpoint {run}` first")
    m = json.loads(path.read_text())
    sets = sorted({k.split("/")[0] for k in m if k.count("/") == 2 and k.endswith("/em")} - {"all"})
    head = ["mode"] + [f"{s} {x}" for s in sets + ["all"] for x in ("EM", "F1")]
    rows = []
    for mode, label in MODES:
        if f"all/{mode}/em" not in m:
            continue
        rows.append([label] + [f"{m[f'{s}/{mode}/{x}']:.1f}" for s in sets + ["all"] for x in ("em", "f1")])
    t = training_summary(run)
    cpu = f", {a.cpu_min:.0f} CPU-min" if a.cpu_min else ""
    body = ("## ReGrad EM/F1 on SmolLM2-135M-Instruct (`python bench/regrad_results.py RUN`)\n\n"
            f"Meta-training: {t['steps']} steps{cpu}; outer loss {t['loss_first']:.2f} (first 8 steps) -> "
            f"{t['loss_last']:.2f} (last 8). Inference at checkpoint step {m.get('step')}: BM25 top-3, "
            "greedy to the first newline, EM/F1 as the original (`gmem.systems.regrad.metrics`, %). "
            f"{a.note}\n\n" + table(head, rows))
    print(body)
    if not a.no_write:
        write_section("regrad_results", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
