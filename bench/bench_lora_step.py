"""One LoRA training step on SmolLM2-135M-Instruct (CPU, fp32): gmem (JAX) vs transformers+peft.

Same weights on both sides (the embedded GGUF, Q4_1 dequantised to fp32; gmem through
gmem.hf.gguf.load_gguf, transformers from the HF folder load_gguf caches for that file), same
batch of random token ids [batch, seq] (next-token loss over all positions), LoRA r=8, alpha=16,
no dropout, on q_proj and v_proj of every layer, AdamW (lr 1e-4, no weight decay) on the
adapters only.

  gmem    one jitted function: forward + backward (grads of the adapters only) + optax.adamw
          update, the adapter and optimizer trees donated
  torch   peft.get_peft_model(LoraConfig(...)); loss = model(ids, labels=ids).loss;
          loss.backward(); torch.optim.AdamW.step(); zero_grad(set_to_none=True)

Tokens/s = batch*seq / the median step time of --reps steps after one warm-up step; gmem's
compile time is measured separately (lower + compile) and excluded. Both sides start from B = 0,
so their first losses are the base model's loss on the batch and must agree (printed).

    python bench/bench_lora_step.py              # writes the "lora_step" section of bench/RESULTS.md
    python bench/bench_lora_step.py --quick      # batch 1 x 32, 1 rep, nothing written
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

RANK, ALPHA, LR, TARGETS = 8, 16.0, 1e-4, ("q_proj", "v_proj")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    add_threads_arg(ap)
    ap.add_argument("--quick", action="store_true", help="batch 1 x 32, 1 rep, do not write RESULTS.md")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.seq, args.reps = 1, 32, 1

    limit_xla_threads(args.threads)
    import jax
    import optax
    import peft
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    import gmem.assets
    from gmem.adapters import AdapterSpec, adapter_collection, count_params, init_adapters
    from gmem.hf.gguf import converted_folder, load_gguf

    gguf_path = gmem.assets.path("smollm2-135m-instruct")
    module, config, params = load_gguf(gguf_path)
    ids = np.random.default_rng(0).integers(100, config.vocab_size, (args.batch, args.seq)).astype(np.int32)
    n_tokens = args.batch * args.seq

    # ---- gmem ----------------------------------------------------------------------------
    spec = AdapterSpec(kind="lora", targets=TARGETS, rank=RANK, alpha=ALPHA)
    trainable = init_adapters([spec], params, jax.random.PRNGKey(0))
    opt = optax.adamw(LR, weight_decay=0.0)
    opt_state = opt.init(trainable)

    def loss_fn(tr, frozen, x):
        logits, _ = module.apply({"params": frozen, "adapter": adapter_collection([spec], tr, frozen)}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], x[:, 1:]).mean()

    def train_step(tr, st, frozen, x):
        loss, g = jax.value_and_grad(loss_fn)(tr, frozen, x)
        upd, st = opt.update(g, st, tr)
        return optax.apply_updates(tr, upd), st, loss

    t = time.perf_counter()
    compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(trainable, opt_state, params, ids).compile()
    compile_s = time.perf_counter() - t
    state = {"tr": trainable, "st": opt_state}

    def gmem_step():
        state["tr"], state["st"], loss = compiled(state["tr"], state["st"], params, ids)
        return float(loss)  # blocks until the step is done

    g_first, g_med, g_losses = timed(gmem_step, args.reps)
    n_gmem = count_params(state["tr"])
    print(f"gmem: compile {compile_s:.1f}s, warm-up step {g_first:.2f}s, median {g_med:.2f}s, "
          f"losses {g_losses}", flush=True)

    # ---- transformers + peft ----------------------------------------------------------------
    hf = transformers.AutoModelForCausalLM.from_pretrained(converted_folder(gguf_path), dtype=torch.float32)
    hf = peft.get_peft_model(hf, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                                 target_modules=list(TARGETS), bias="none"))
    hf.train()
    n_torch = sum(p.numel() for p in hf.parameters() if p.requires_grad)
    topt = torch.optim.AdamW([p for p in hf.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    tid = torch.tensor(ids, dtype=torch.long)

    def torch_step():
        loss = hf(input_ids=tid, labels=tid).loss
        loss.backward()
        topt.step()
        topt.zero_grad(set_to_none=True)
        return float(loss)

    t_first, t_med, t_losses = timed(torch_step, args.reps)
    print(f"torch: warm-up step {t_first:.2f}s, median {t_med:.2f}s, losses {t_losses}", flush=True)
    if n_gmem != n_torch:
        print(f"WARNING: trainable parameters differ: gmem {n_gmem}, peft {n_torch}")


    rows = [["gmem (JAX, jit)", n_gmem, n_tokens / g_med, g_med, compile_s, g_losses[0]],
            ["transformers + peft", n_torch, n_tokens / t_med, t_med, 0.0, t_losses[0]]]
    body = (
        "## One LoRA training step on SmolLM2-135M-Instruct (CPU, fp32): gmem vs transformers + peft\n\n"
        f"`python bench/bench_lora_step.py`. Same weights (the embedded GGUF, Q4_1 dequantised to "
        f"fp32), same batch of random token ids [{args.batch}, {args.seq}] ({n_tokens} tokens, "
        f"next-token loss), LoRA r={RANK}, alpha={ALPHA:g}, no dropout, on q_proj and v_proj of all "
        f"{config.num_hidden_layers} layers; AdamW (lr {LR:g}) on the adapters only. One step = forward "
        "+ backward + optimizer update (gmem: one jitted function with donated adapter/optimizer "
        "trees; torch: `peft.get_peft_model` + `torch.optim.AdamW`). Median of "
        f"{args.reps} steps after a warm-up step; gmem's compile time is excluded and listed separately. "
        f"First-step losses (both start at B = 0, i.e. the base model): gmem {g_losses[0]:.5f}, "
        f"torch {t_losses[0]:.5f}.\n\n"
        + table(["side", "trainable params", "tokens/s", "step s", "compile s", "first loss"], rows)
        + f"\n\ngmem / torch tokens/s: {t_med / g_med:.2f}x. The CPU is shared with other jobs while "
          f"this runs (load average {os.getloadavg()[0]:.1f} at the end), so absolute numbers are "
          f"noisy; both sides ran one after the other in the same process on "
          f"{threads_phrase(args.threads)} each. jax {jax.__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, peft {peft.__version__}."
    )
    print(body)
    if not args.quick:
        write_section("lora_step", body)


if __name__ == "__main__":
    main()
