#!/usr/bin/env python
"""GMT speed on CPU against the original's numbers (given, not rerun here):

  stage 2: 334 tokens/s (SmolLM2-135M, memory layers 22-29, LoRA r 64, micro batch 8 of
           ~100-token prompts, fp32, 2-core CPU); goal >= 1.5x = 501 tokens/s
  stage 1: batch 128 with 64 negatives; goal < 10 s per step
  triple classification of the 1,322 UMLS test prompts: goal < 5 minutes

Measures wall time and process CPU time (all threads). On a shared machine the wall time
depends on the other load; CPU-s / cores is what the same work costs on idle cores (a lower
bound on wall time, reached when XLA keeps every core busy).

    python bench/bench_gmt.py [--steps 5] [--prompts 64] [--stage1-steps 3] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from gmem import config as gconfig  # noqa: E402
from gmem.train import sharding as shd  # noqa: E402
from gmem.train.loop import make_plan  # noqa: E402
from gmem.train.state import create_state  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def clocks():
    return time.perf_counter(), time.process_time()


def train_steps(config, overrides, steps, tokens_key="tokens"):
    from gmem.systems.gmt import GMTSystem
    cfg = gconfig.to_object(gconfig.load_config(os.path.join(CONFIGS, config), overrides))
    system = GMTSystem(cfg)
    plan = make_plan(cfg, system)
    with plan.context():
        frozen = jax.device_put(system.load_base(), plan.frozen_sh)
        state = jax.device_put(create_state(system.init_trainable(frozen, jax.random.PRNGKey(0)),
                                            plan.optimizer, 0), plan.state_sh)
        batch = shd.global_batch(plan.mesh, system.batch(0), plan.rules)
        state, m = plan.step(state, frozen, batch)          # compile
        jax.block_until_ready(m)
        w0, c0 = clocks()
        toks = 0.0
        for i in range(steps):
            batch = shd.global_batch(plan.mesh, system.batch(i + 1), plan.rules)
            state, m = plan.step(state, frozen, batch)
            toks += float(m.get(tokens_key, 0.0))
        jax.block_until_ready(m)
        w1, c1 = clocks()
    return system, state, frozen, (w1 - w0) / steps, (c1 - c0) / steps, toks / steps


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--stage1-steps", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    rows = []
    s1 = train_steps("gmt_stage1.yaml", [], a.stage1_steps, "triples")
    rows.append(["stage 1 step (batch 128, 64 negatives)", f"{s1[3]:.2f} s wall, {s1[4]:.2f} CPU-s",
                 f"{s1[4] / cores:.2f} s", "< 10 s"])
    print(rows[-1], flush=True)
    system, state, frozen, wall, cpu, toks = train_steps("default.yaml", [], a.steps)
    rows.append(["stage 2 step (batch 8, ~100-token prompts)",
                 f"{toks / wall:.0f} tokens/s wall ({wall:.1f} s/step, {cpu:.1f} CPU-s)",
                 f"{toks / (cpu / cores):.0f} tokens/s", "334 tokens/s (goal >= 501)"])
    print(rows[-1], flush=True)
    from gmem.systems import gmt_eval as E
    recs = system.records("test")[: a.prompts]
    E.classify(system, state.trainable, frozen, recs[: system.p["eval_batch"]])   # compile
    w0, c0 = clocks()
    E.classify(system, state.trainable, frozen, recs)
    w1, c1 = clocks()
    n_all = 1322
    per_w, per_c = (w1 - w0) / len(recs), (c1 - c0) / len(recs)
    rows.append([f"triple classification, {n_all} UMLS test prompts (from {len(recs)}, "
                 f"batch {system.p['eval_batch']}, {system.p['max_new_tokens']} new tokens)",
                 f"{per_w * n_all / 60:.1f} min wall", f"{per_c * n_all / cores / 60:.1f} min", "< 5 min"])
    print(rows[-1], flush=True)
    from bench.results import table, write_section
    body = ("GMT on UMLS with SmolLM2-135M-Instruct, fp32, CPU (`python bench/bench_gmt.py`). "
            "The original's figures are given, not rerun. `idle-core estimate` = CPU-s / cores: "
            "the same work on otherwise idle cores (this machine was shared with other jobs).\n\n"
            + table(["what", "gmem measured", f"idle-core estimate ({cores} cores)", "original / goal"], rows))
    print(body)
    if not a.no_write:
        write_section("gmt", body)


if __name__ == "__main__":
    main()
