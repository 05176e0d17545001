#!/usr/bin/env python
"""GOFA speed on CPU: a GOFA graph-pretraining step in gmem (JAX) against the same step in
PyTorch (bench/torch_gofa.py: transformers + peft + a PyG-based GNN, GOFA's own layout), on the
same sampled graphs of the embedded Wikipedia graph, SmolLM2-135M's shape, fp32, 6 GNN layers,
K = 16 (configs/gofa_pretrain.yaml with a fresh compressor); and the compressor's (ICAE) training
tokens/s (configs/gofa_compressor.yaml). Goal: gmem >= 2x PyTorch on the GOFA step.

Tokens per step = the real tokens of every text and decoder row (no padding), the same count
on both sides. The two sides run one after the other in this process; on a shared CPU compare
rows of one run, not runs.

    python bench/bench_gofa.py [--steps 4] [--threads 2] [--no-torch] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from gmem import config as gconfig  # noqa: E402
from gmem.train import sharding as shd  # noqa: E402
from gmem.train.loop import make_plan  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def gmem_steps(config, overrides, steps):
    """(system, median s/step, mean tokens/step, compile s, records) over `steps` batches,
    after one step on every distinct batch shape (compilation)."""
    from gmem.train.system import build_system
    cfg = gconfig.to_object(gconfig.load_config(os.path.join(CONFIGS, config), overrides))
    system = build_system(cfg)
    plan = make_plan(cfg, system, shd.make_mesh(devices=jax.devices()[:1]))
    with plan.context():
        frozen, state = plan.fresh_state(system)
        host = [system.batch(i) for i in range(steps)]
        batches = [shd.global_batch(plan.mesh, b, plan.rules) for b in host]
        t0 = time.perf_counter()
        seen = {}
        for b in batches:
            key = repr(jax.tree.map(lambda x: x.shape, b))
            if key not in seen:
                state, m = plan.step(state, frozen, b)
                jax.block_until_ready(m)
                seen[key] = True
        compile_s = time.perf_counter() - t0
        times, tokens = [], []
        for b in batches:
            t = time.perf_counter()
            state, m = plan.step(state, frozen, b)
            m = jax.device_get(m)
            times.append(time.perf_counter() - t)
            tokens.append(float(m["tokens"]))
    recs = [r for i in range(steps) for r in system.records(i)] if hasattr(system, "records") else []
    return system, statistics.median(times), sum(tokens) / len(tokens), compile_s, len(seen), recs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    rows = []
    system, s, tok, comp, shapes, recs = gmem_steps("gofa_pretrain.yaml", ["system.compressor_ckpt=''"], a.steps)
    rows.append(["GOFA pretraining step", "gmem (JAX)", s, tok / s, comp, shapes])
    print(rows[-1], flush=True)
    if not a.no_torch:
        from bench.torch_gofa import torch_gofa_steps
        t = torch_gofa_steps(recs, system.packer, system.special.k, len(system.gnn_layers), a.threads)
        rows.append(["GOFA pretraining step", "PyTorch (transformers + peft + PyG)", t["s_per_step"],
                     t["tokens_per_s"], "-", "-"])
        print(rows[-1], flush=True)
    _, cs, ctok, ccomp, cshapes, _ = gmem_steps("gofa_compressor.yaml", [], a.steps)
    rows.append(["compressor (ICAE) step, batch 4", "gmem (JAX)", cs, ctok / cs, ccomp, cshapes])
    print(rows[-1], flush=True)
    if a.no_write:
        return 0
    from bench.results import table, write_section
    speed = ""
    if not a.no_torch:
        speed = (f"\n\ngmem / PyTorch on the GOFA step: **{rows[1][2] / rows[0][2]:.2f}x** "
                 f"(goal >= 2x). Load average {os.getloadavg()[0]:.1f} at the end: the CPU was "
                 "shared with other jobs, so compare the rows, not runs.")
    body = ("## GOFA training steps (`python bench/bench_gofa.py`)\n\n"
            f"SmolLM2-135M shape, fp32, K = 16, 6 GNN layers before layers 24..29, texts cut to 64 "
            f"tokens, one sampled graph per step ({a.steps} graphs of the embedded Wikipedia graph, "
            "pretraining tasks), median of the timed steps after one step per batch shape; tokens = "
            "real text and decoder-row tokens. PyTorch: bench/torch_gofa.py (GOFA's layout: all texts "
            f"of a graph right-padded to the longest, {a.threads} threads). Compile s: the first step "
            "of every distinct batch shape.\n\n"
            + table(["step", "stack", "s/step", "tokens/s", "compile s", "shapes"], rows) + speed)
    write_section("gofa", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
