"""Plot a run's loss curves: `python -m gmem.train.plot RUN_DIR [--out FILE.png]`.

Reads RUN_DIR/metrics.jsonl; draws train/loss (and eval/loss when present) against step.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from gmem.errors import GmemError, run_cli
from gmem.train.metrics import read_metrics


def plot(run_dir: str | pathlib.Path, out: str | pathlib.Path | None = None) -> pathlib.Path:
    import matplotlib  # slow to import; the Agg backend is chosen before pyplot loads
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        raise GmemError(f"{run_dir}: no metrics.jsonl with rows to plot")
    out = pathlib.Path(out or pathlib.Path(run_dir) / "loss.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("train/loss", "eval/loss"):
        # A resumed run appends to metrics.jsonl: the last value logged for a step wins.
        pts = {r["step"]: r[key] for r in rows if key in r}
        if pts:
            steps = sorted(pts)
            ax.plot(steps, [pts[s] for s in steps], label=key, marker="o" if key.startswith("eval") else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(str(run_dir))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


@run_cli
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    print(plot(a.run_dir, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
