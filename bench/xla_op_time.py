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
the --top ops. With the process on one core the op times add up to the wall time; without the
pin, XLA ran independent ops on a second core and their sum exceeded it.
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

from bench.results import limit_xla_threads  # noqa: E402

# Before jax starts: one core, as the bench, and a TraceMe event around every op the CPU runtime
# executes.
limit_xla_threads(1)
os.environ["XLA_FLAGS"] += " --xla_cpu_enable_xprof_traceme=true"

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
    """{HLO op name: total ns} over the threads XLA:CPU runs ops on in the newest trace in
    logdir: its Eigen pool and the PjRt client's own thread, which runs a share of the ops too
    (about a quarter of the dots of ReGrad's step on one core); the runtime's own
    ThunkExecutor/thread-pool events left out."""
    from jax.profiler import ProfileData

    path = sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1]
    out = collections.Counter()
    for plane in ProfileData.from_file(path).planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name and "XLAPjRtCpuClient" not in line.name:
                continue
            for ev in line.events:
                if not ev.name.startswith(("ThunkExecutor", "SlinkyThreadPool", "end: ")):
                    out[ev.name] += ev.duration_ns
    return out


def regrad_step(args):
    """(jitted meta step, its arguments) for the bench's ReGrad task (bench/regrad_task.py), with
    random LoRA values: the op mix does not depend on them."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import gmem.assets
    from bench.regrad_task import INIT_ALPHA, RANK, adapter_spec, meta_optimizer, meta_step, random_task, upper_half
    from gmem.hf.gguf import load_gguf
    from gmem.systems.regrad.meta import Model
    from gmem.tree import unflatten

    module, config, params = load_gguf(gmem.assets.path("smollm2-135m-instruct"))
    d, f = config.hidden_size, config.intermediate_size
    rng = np.random.default_rng(0)
    task = random_task(config, args.k, args.passage, args.qa, rng)
    dims = {"gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
    lora = unflatten({f"model/layers_{i}/mlp/{t}/lora_{ab}": jnp.asarray(rng.normal(0, 0.02, shape), jnp.float32)
                      for i in upper_half(config) for t, (a, b) in dims.items()
                      for ab, shape in (("A", (a, RANK)), ("B", (RANK, b)))})
    model = Model(module, adapter_spec(config), "tie", INIT_ALPHA, passage_loop=not args.batched,
                  meta_grad=args.meta_grad)
    opt = meta_optimizer()
    tr = {"lora": lora, "alpha": model.init_alpha_tree(lora)}
    return jax.jit(meta_step(model, opt)), (tr, opt.init(tr), params, task)


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
    print(f"step {wall:.2f} s wall; ops {total / 1e9:.2f} s summed over XLA's threads; "
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
