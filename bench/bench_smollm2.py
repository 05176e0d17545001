"""SmolLM2-135M-Instruct on CPU: gmem (JAX, jitted, fp32) against transformers (torch, fp32).

Both load the same weights: the embedded GGUF asset (Q4_1) dequantised to fp32; gmem through
gmem.hf.gguf.load_gguf, transformers from the HF folder load_gguf caches for that file.

Measured in one run:
  forward     tokens/s of one full forward (logits) over [batch, 128] tokens
  generate    new tokens/s of greedy generation, 64-token prompt + 64 new tokens (prefill
              included, no early stop), gmem.models.generate vs HF generate(do_sample=False,
              use_cache=True)
gmem's compile time is excluded from its tokens/s and reported on its own (first call minus a
steady call). Times are the median of --reps runs after one warm-up.

    python bench/bench_smollm2.py            # writes the "smollm2" section of bench/RESULTS.md
    python bench/bench_smollm2.py --quick    # batch 1 only, 1 rep, nothing written
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.results import (add_threads_arg, limit_xla_threads, table, threads_phrase,  # noqa: E402
                           timed, write_section)

PROMPT, NEW, FWD_LEN = 64, 64, 128


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    ap.add_argument("--reps", type=int, default=2)
    add_threads_arg(ap)
    ap.add_argument("--quick", action="store_true", help="batch 1, 1 rep, do not write RESULTS.md")
    args = ap.parse_args()
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    reps = 1 if args.quick else args.reps

    limit_xla_threads(args.threads)
    import jax
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    import gmem.assets
    from gmem.hf.gguf import converted_folder, load_gguf
    from gmem.models.generate import generate

    gguf_path = gmem.assets.path("smollm2-135m-instruct")
    module, config, params = load_gguf(gguf_path)
    variables = {"params": params}
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        converted_folder(gguf_path), dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # never stop early: both sides make NEW tokens
    hf.generation_config.pad_token_id = config.pad_token_id
    pad = config.pad_token_id

    rng = np.random.default_rng(0)
    fwd = jax.jit(lambda v, ids, m: module.apply(v, ids, m)[0])
    rows, agree = [], []
    for b in batches:
        # Forward over [b, 128].
        ids = rng.integers(100, config.vocab_size, (b, FWD_LEN)).astype(np.int32)
        mask = np.ones_like(ids)
        t = time.perf_counter()
        compiled = fwd.lower(variables, ids, mask).compile()
        compile_s = time.perf_counter() - t
        _, g, _ = timed(lambda: compiled(variables, ids, mask).block_until_ready(), reps)
        tid, tmask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)
        with torch.no_grad():
            _, h, _ = timed(lambda: hf(input_ids=tid, attention_mask=tmask).logits, reps)
        n = b * FWD_LEN
        rows.append([f"forward [{b}, {FWD_LEN}]", b, n / g, n / h, h / g, compile_s])
        print(rows[-1], flush=True)

        # Greedy generation: 64-token prompts, 64 new tokens.
        ids = rng.integers(100, config.vocab_size, (b, PROMPT)).astype(np.int32)
        mask = np.ones_like(ids)
        run = lambda: generate(module, variables, ids, mask, max_new_tokens=NEW, eos_token_id=None,
                               pad_token_id=pad).tokens.block_until_ready()
        first, g, outs = timed(run, reps)
        ours = outs[-1]
        tid, tmask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)
        with torch.no_grad():
            gen = lambda: hf.generate(tid, attention_mask=tmask, max_new_tokens=NEW,
                                      do_sample=False, use_cache=True, pad_token_id=pad)
            _, h, outs = timed(gen, reps)
            theirs = outs[-1]
        agree.append(float((np.asarray(ours) == theirs[:, PROMPT:].numpy()).mean()))
        n = b * NEW
        rows.append([f"greedy generate {PROMPT}+{NEW}", b, n / g, n / h, h / g, max(first - g, 0.0)])
        print(rows[-1], f"tokens equal to HF: {agree[-1]:.3f}", flush=True)


    body = (
        "## SmolLM2-135M-Instruct on CPU: gmem (JAX) vs transformers (torch)\n\n"
        "`python bench/bench_smollm2.py`. Same weights on both sides (the embedded GGUF, Q4_1 "
        "dequantised to fp32), fp32 compute. Forward: tokens/s of one forward over [batch, "
        f"{FWD_LEN}]. Generate: new tokens/s of greedy decoding, {PROMPT}-token prompt + {NEW} "
        "new tokens, prefill included, no early stop (gmem: `gmem.models.generate`, one jit with "
        "a while_loop over the KV cache; HF: `generate(do_sample=False, use_cache=True)` under "
        f"`torch.no_grad`). Median of {reps} runs after a warm-up; gmem's compile time is "
        "excluded and listed separately. Greedy tokens equal to HF's: "
        + ", ".join(f"{a:.1%}" for a in agree) + " (batch " + ", ".join(map(str, batches)) + ").\n\n"
        + table(["workload", "batch", "gmem tok/s", "torch tok/s", "gmem / torch", "gmem compile s"],
                rows)
        + f"\n\nThe CPU is shared with other jobs while this runs (load average "
          f"{os.getloadavg()[0]:.1f} at the end), so absolute numbers are noisy; both sides ran "
          f"interleaved in the same process on {threads_phrase(args.threads)} each (with two "
          f"threads on the oversubscribed CPU torch slowed down 5-8x from spinning OpenMP "
          f"barriers, which measures the machine, not the libraries). jax {jax.__version__}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}."
    )
    print(body)
    if not args.quick:
        write_section("smollm2", body)


if __name__ == "__main__":
    main()
