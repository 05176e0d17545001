#!/usr/bin/env python
"""Where a compiled step's time goes on XLA:CPU, per HLO op: one call traced with XLA's per-op
TraceMe events, the events summed by HLO op and joined with the compiled HLO text (shape,
operand count, source op with layer numbers folded). Made for ReGrad's second-order meta step
(issue 15: the step runs at half the dot rate, so the question is what the other half is).

    python bench/xla_op_time.py                  # ReGrad meta step, passages one at a time
    python bench/xla_op_time.py --batched        # the K passages as one batch
    python bench/xla_op_time.py --meta-grad linearize
    python bench/xla_op_time.py --top 40 --trace /tmp/trace

Same task as bench/bench_regrad.py (SmolLM2-135M-Instruct from the embedded GGUF, fp32, LoRA r 8
on gate/up/down of the upper half, alpha tie, K passages of --passage random tokens, a QA row of
--qa tokens), with random LoRA values: the op mix does not depend on them. One XLA thread, as
the bench. On a busy machine the absolute times stretch; their shares are what to read.
Prints the total per op kind (the HLO name without its ".N"), per kind and source op, then
the --top ops.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Before jax starts: one thread, and a TraceMe event around every op the CPU runtime executes.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                           " intra_op_parallelism_threads=1 --xla_cpu_enable_xprof_traceme=true").strip()

OP_LINE = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) (\w[\w\-]*)\((.*)$")
OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_ops(text: str) -> dict[str, dict]:
    """{op name: {"shape", "opcode", "operands", "source"}} of every op in a compiled HLO text;
    source is its metadata op_name with layer numbers folded (layers_18 -> layers_N)."""
    ops = {}
    for line in text.splitlines():
        m = OP_LINE.match(line)
        if not m:
            continue
        name, shape, opcode, rest = m.groups()
        src = OP_NAME.search(rest)
        ops[name] = {"shape": shape, "opcode": opcode, "operands": rest.split(")")[0].count("%"),
                     "source": re.sub(r"layers_\d+", "layers_N", src.group(1)) if src else ""}
    return ops


def op_times(logdir: str) -> collections.Counter:
    """{HLO op name: total ns} over the XLA:CPU worker threads of the newest trace in logdir
    (the runtime's own ThunkExecutor/thread-pool events left out)."""
    from jax.profiler import ProfileData

    path = sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1]
    out = collections.Counter()
    for plane in ProfileData.from_file(path).planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name:
                continue
            for ev in line.events:
                if not ev.name.startswith(("ThunkExecutor", "SlinkyThreadPool", "end: ")):
                    out[ev.name] += ev.duration_ns
    return out


def regrad_step(args):
    """(jitted meta step, its arguments) for the bench's ReGrad task."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import gmem.assets
    from gmem.adapters import AdapterSpec
    from gmem.hf.gguf import load_gguf
    from gmem.systems.regrad.meta import Model
    from gmem.tree import unflatten

    module, config, params = load_gguf(gmem.assets.path("smollm2-135m-instruct"))
    n, d, f, r = config.num_hidden_layers, config.hidden_size, config.intermediate_size, 8
    layers = tuple(range(n // 2, n))
    rng = np.random.default_rng(0)
    pid = rng.integers(100, config.vocab_size, (args.k, args.passage)).astype(np.int32)
    qid = rng.integers(100, config.vocab_size, (args.qa,)).astype(np.int32)
    task = {"passage_ids": pid, "passage_mask": np.ones_like(pid), "qa_ids": qid,
            "qa_mask": np.ones_like(qid), "qa_labels": (np.arange(args.qa) >= args.qa - 6).astype(np.int32)}
    dims = {"gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
    lora = unflatten({f"model/layers_{i}/mlp/{t}/lora_{ab}": jnp.asarray(rng.normal(0, 0.02, shape), jnp.float32)
                      for i in layers for t, (a, b) in dims.items()
                      for ab, shape in (("A", (a, r)), ("B", (r, b)))})
    spec = AdapterSpec(targets=tuple(dims), rank=r, alpha=2.0 * r, layers_to_transform=layers)
    model = Model(module, spec, "tie", 0.01, passage_loop=not args.batched, meta_grad=args.meta_grad)
    opt = optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(4e-4, weight_decay=0.01))

    def step(tr, st, frozen, t):
        loss, g = jax.value_and_grad(lambda x: model.task_loss(x, frozen, t)[0])(tr)
        upd, st = opt.update(g, st, tr)
        return optax.apply_updates(tr, upd), st, loss

    tr = {"lora": lora, "alpha": model.init_alpha_tree(lora)}
    return jax.jit(step), (tr, opt.init(tr), params, task)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batched", action="store_true", help="the K passages as one batch")
    ap.add_argument("--meta-grad", default="reverse", choices=["reverse", "linearize"],
                    help="how the meta-gradient is computed (system.meta_grad)")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--passage", type=int, default=128)
    ap.add_argument("--qa", type=int, default=96)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--trace", default="/tmp/gmem_xla_op_time", help="folder for the trace")
    args = ap.parse_args()

    import jax

    fn, call_args = regrad_step(args)
    t0 = time.perf_counter()
    compiled = fn.lower(*call_args).compile()
    print(f"compile {time.perf_counter() - t0:.0f} s", flush=True)
    jax.block_until_ready(compiled(*call_args))           # warm-up
    with jax.profiler.trace(args.trace):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*call_args))
        wall = time.perf_counter() - t0
    times, ops = op_times(args.trace), hlo_ops(compiled.as_text())
    total = sum(times.values())
    print(f"step {wall:.2f} s wall; ops {total / 1e9:.2f} s summed over worker threads; "
          f"load average {os.getloadavg()[0]:.1f}")
    kinds, counts = collections.Counter(), collections.Counter()
    for name, ns in times.items():
        kinds[re.sub(r"\.\d+$", "", name)] += ns
        counts[re.sub(r"\.\d+$", "", name)] += 1
    print("\nby kind (share of summed op time, distinct ops):")
    for kind, ns in kinds.most_common(15):
        print(f"  {100 * ns / total:5.1f}%  {ns / 1e9:7.3f} s  {counts[kind]:5d}  {kind}")
    by_src = collections.Counter()
    for name, ns in times.items():
        by_src[(re.sub(r"\.\d+$", "", name), ops.get(name, {}).get("source", "")[-100:])] += ns
    print("\nby kind and source op, layers folded:")
    for (kind, src), ns in by_src.most_common(15):
        print(f"  {100 * ns / total:5.1f}%  {ns / 1e9:7.3f} s  {kind:28s} {src}")
    print(f"\ntop {args.top} ops (share, s, shape, operands, source op):")
    for name, ns in times.most_common(args.top):
        o = ops.get(name, {})
        print(f"  {100 * ns / total:5.1f}%  {ns / 1e9:6.3f}  {name:32s} {o.get('shape', '?'):24s} "
              f"{o.get('operands', '?'):>4}  {o.get('source', '')[-110:]}")


if __name__ == "__main__":
    main()
