#!/usr/bin/env python
"""Paired A/B of GMT's stage-2 step in one process: A = the code as it is, B = the same step with
the named speed-ups undone. Both are compiled first, then timed in turns (ABBA order), so drift of
a shared host hits both alike. Prints total-time ratio B/A (> 1: the speed-up helps) and the
median of the per-round ratios.

    python bench/ab_gmt.py --undo fold          # memory block: direct q_proj/o_proj
    python bench/ab_gmt.py --undo swiglu        # LLaMA MLP: autodiff of silu(g) * u
    python bench/ab_gmt.py --undo fold swiglu   # both
    python bench/ab_gmt.py --undo none          # A against itself: the harness's own noise
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from bench.bench_gmt import prepared_steps  # noqa: E402


def undo(names):
    """Patch the modules the B step is traced from (A is already compiled)."""
    if "fold" in names:
        import gmem.memory.cross_attention as ca
        import gmem.systems.gmt.stage2 as stage2
        direct = functools.partial(ca.MemoryCrossAttention, fold=False)
        stage2.memory_hook = lambda c, layers, gate="scalar": ca.DecoderHook(
            block=functools.partial(direct, c, gate=gate), layers=tuple(layers), name=ca.BLOCK_NAME)
    if "swiglu" in names:
        import gmem.models.llama as llama
        llama.swiglu = lambda g, u: jax.nn.silu(g) * u


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--undo", nargs="+", choices=["fold", "swiglu", "none"], required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args(argv)
    _, run_a, _, _ = prepared_steps("default.yaml", [], a.steps)
    undo(a.undo)
    _, run_b, _, _ = prepared_steps("default.yaml", [], a.steps)
    ta, tb = [], []
    for r in range(a.rounds):
        for run, out in ((run_a, ta), (run_b, tb)) if r % 2 == 0 else ((run_b, tb), (run_a, ta)):
            out.append(run()[0])
        print(f"round {r + 1}/{a.rounds}: A {ta[-1]:.2f} s, B {tb[-1]:.2f} s", flush=True)
    print(f"undo {' '.join(a.undo)}: B/A total time {sum(tb) / sum(ta):.3f}, "
          f"median round ratio {statistics.median(b / x for x, b in zip(ta, tb)):.3f} "
          f"({a.rounds} rounds of {a.steps} steps each)")


if __name__ == "__main__":
    main()
