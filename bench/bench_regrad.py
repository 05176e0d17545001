"""ReGrad on SmolLM2-135M-Instruct (CPU, fp32): a second-order meta-training step and the gradient
bank's passages/s, gmem (JAX) vs a PyTorch re-implementation (transformers + peft + second-order
torch.autograd), same weights, same LoRA values, same batch, in one run.

Setup (both sides): LoRA r=8, alpha=16 (scale 2) on gate/up/down of layers 15-29 (the upper half),
PEFT's A (copied from peft into gmem, so both start identical) and B = 0; alpha `tie` (one scalar
per LoRA tensor, 0.01). One task = K passages of --passage random tokens and a QA row of --qa
tokens whose last 6 are the answer.

  meta step  inner g = grad_theta sum_i L_LM(p_i) (create_graph), theta' = theta - alpha g, outer
             loss on the answer under theta', its gradient w.r.t. theta and alpha, AdamW update.
             gmem: one jitted function (jax.value_and_grad through the inner jax.grad + optax),
             timed three times: the K passages as one batch, one at a time (passage_loop),
             and one at a time with the meta-gradient written out as g_qa - H(alpha g_qa)
             (meta_grad: linearize);
             torch: torch.autograd.grad(create_graph=True), torch.func.functional_call on theta',
             backward, torch.optim.AdamW (eager attention: it supports double backward).
  bank       per-passage gradients g = grad_theta L_LM(p), no graph: gmem vmaps --bank-batch
             passages per jitted call; torch runs one passage per backward (as the original's
             encode.py).

    python bench/bench_regrad.py            # writes the "regrad" section of bench/RESULTS.md
    python bench/bench_regrad.py --threads 2  # both sides on 2 threads: section "regrad_2threads"
    python bench/bench_regrad.py --quick    # short sequences, 1 rep, nothing written
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.results import (add_threads_arg, cpu_per_wall, limit_xla_threads, table,  # noqa: E402
                           threads_phrase, timed, write_section)

from bench.regrad_task import (ALPHA, INIT_ALPHA, LR, RANK, TARGETS, adapter_spec,  # noqa: E402
                                meta_optimizer, meta_step, random_task, upper_half)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, default=3, help="passages per task")
    ap.add_argument("--passage", type=int, default=128, help="tokens per passage")
    ap.add_argument("--qa", type=int, default=96, help="tokens of the QA row")
    ap.add_argument("--bank-batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2)
    add_threads_arg(ap)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.passage, args.qa, args.reps, args.bank_batch = 32, 24, 1, 2

    limit_xla_threads(args.threads)
    load_start = os.getloadavg()[0]
    cores = threads_phrase(args.threads)
    cores = cores[:1].upper() + cores[1:]   # it starts a sentence
    import jax
    import jax.numpy as jnp
    import peft
    import torch
    import transformers
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    import gmem.assets
    from gmem.hf.gguf import converted_folder, load_gguf
    from gmem.systems.regrad.meta import Model
    from gmem.tree import flatten, unflatten

    path = gmem.assets.path("smollm2-135m-instruct")
    module, config, params = load_gguf(path)
    layers = upper_half(config)
    rng = np.random.default_rng(0)
    V = config.vocab_size
    task = random_task(config, args.k, args.passage, args.qa, rng)
    pid, qid, labels = task["passage_ids"], task["qa_ids"], task["qa_labels"]

    # ---- torch side first: its LoRA A values seed both ----------------------------------------
    hf = transformers.AutoModelForCausalLM.from_pretrained(converted_folder(path), dtype=torch.float32,
                                                           attn_implementation="eager")
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                                 target_modules=list(TARGETS),
                                                 layers_to_transform=list(layers)))
    theta = {nm: p for nm, p in pm.named_parameters() if "lora_" in nm}

    def gpath(nm):
        parts = nm.split(".")
        i = parts.index("layers")
        return f"model/layers_{parts[i + 1]}/mlp/{parts[i + 3]}/{parts[i + 4]}"

    lora = unflatten({gpath(nm): jnp.asarray(p.detach().numpy().T) for nm, p in theta.items()})

    # ---- gmem ---------------------------------------------------------------------------------
    spec = adapter_spec(config)
    model = Model(module, spec, "tie", INIT_ALPHA)
    opt = meta_optimizer()

    def gmem_meta(m: Model) -> tuple:
        """(compile s, XLA's GFLOP count, first s, median s, losses) of m's jitted meta step."""
        trainable = {"lora": lora, "alpha": m.init_alpha_tree(lora)}
        step = meta_step(m, opt)
        state = {"tr": trainable, "st": opt.init(trainable)}
        t0 = time.perf_counter()
        compiled = jax.jit(step).lower(state["tr"], state["st"], params, task).compile()
        compile_s = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        gflop = (cost[0] if isinstance(cost, list) else cost)["flops"] / 1e9   # XLA's count, all ops

        def one():
            state["tr"], state["st"], loss = compiled(state["tr"], state["st"], params, task)
            return float(loss)

        first, med, losses = timed(lambda: cpu_per_wall(one), args.reps)
        busy[m.meta_grad.value, m.passage_loop] = losses[-1][1]
        losses = [x for x, _ in losses]
        print(f"gmem meta step (passage_loop={m.passage_loop}): compile {compile_s:.1f}s, first "
              f"{first:.1f}s, median {med:.1f}s, cores busy {busy[m.meta_grad.value, m.passage_loop]:.2f}, "
              f"{losses}", flush=True)
        return compile_s, gflop, first, med, losses

    busy = {}   # (meta_grad, passage_loop) or "torch": CPU s / wall s of the last timed step

    compile_s, g_gflop, g_first, g_med, g_losses = gmem_meta(model)
    # The loop and the batch do the same work; the table gives the batched form's XLA count.
    loop_compile, _, _, loop_med, loop_losses = gmem_meta(Model(module, spec, "tie", INIT_ALPHA, passage_loop=True))
    lin_compile, _, _, lin_med, lin_losses = gmem_meta(
        Model(module, spec, "tie", INIT_ALPHA, passage_loop=True, meta_grad="linearize"))

    bank_fn = jax.jit(model.per_passage_grads)
    bids = rng.integers(100, V, (args.bank_batch, args.passage)).astype(np.int32)
    t0 = time.perf_counter()
    bank_c = bank_fn.lower(lora, params, bids, np.ones_like(bids)).compile()
    bank_compile = time.perf_counter() - t0
    b_first, b_med, _ = timed(lambda: jax.block_until_ready(bank_c(lora, params, bids, np.ones_like(bids))), args.reps)
    print(f"gmem bank: {args.bank_batch / b_med:.2f} passages/s", flush=True)

    # ---- torch: the reference meta step -----------------------------------------------------
    alpha = {nm: torch.tensor(INIT_ALPHA, requires_grad=True) for nm in theta}
    topt = torch.optim.AdamW(list(theta.values()) + list(alpha.values()), lr=LR, weight_decay=0.01)
    tp = torch.as_tensor(pid, dtype=torch.long)
    tq = torch.as_tensor(qid, dtype=torch.long)[None]
    tl = torch.where(torch.as_tensor(labels)[None] > 0, tq, torch.full_like(tq, -100))

    def torch_step():
        inner = sum(pm(input_ids=tp[i:i + 1], labels=tp[i:i + 1]).loss for i in range(args.k))
        grads = torch.autograd.grad(inner, list(theta.values()), create_graph=True)
        adapted = {nm: theta[nm] - alpha[nm] * g for nm, g in zip(theta, grads)}
        outer = functional_call(pm, adapted, (), {"input_ids": tq, "labels": tl}).loss
        outer.backward()
        torch.nn.utils.clip_grad_norm_(list(theta.values()) + list(alpha.values()), 0.5)
        topt.step()
        topt.zero_grad(set_to_none=True)
        return float(outer)

    t_first, t_med, t_losses = timed(lambda: cpu_per_wall(torch_step), args.reps)
    busy["torch"] = t_losses[-1][1]
    t_losses = [x for x, _ in t_losses]
    print(f"torch meta step: first {t_first:.1f}s, median {t_med:.1f}s, cores busy {busy['torch']:.2f}, "
          f"{t_losses}", flush=True)

    with FlopCounterMode(display=False) as counter:   # one more step, after the timed ones
        torch_step()
    t_gflop = counter.get_total_flops() / 1e9
    rates = dot_rates(jax, jnp, torch, args.k * (args.passage - 1), config)
    print(f"flops: gmem {g_gflop:.0f} G (XLA), torch {t_gflop:.0f} G (matmuls); dot GFLOP/s {rates}", flush=True)

    tb = torch.as_tensor(bids, dtype=torch.long)

    def torch_bank():
        for i in range(args.bank_batch):
            loss = pm(input_ids=tb[i:i + 1], labels=tb[i:i + 1]).loss
            torch.autograd.grad(loss, list(theta.values()))

    tb_first, tb_med, _ = timed(torch_bank, args.reps)
    print(f"torch bank: {args.bank_batch / tb_med:.2f} passages/s", flush=True)

    n_lora = sum(int(np.prod(np.shape(x))) for x in flatten(lora).values())
    rows = [["gmem (JAX, jit)", f"{g_med:.1f}", f"{compile_s:.0f}", f"{g_losses[0]:.5f}",
             f"{args.bank_batch / b_med:.2f}", f"{bank_compile:.0f}"],
            ["gmem, passages one at a time (`system.passage_loop`)", f"{loop_med:.1f}",
             f"{loop_compile:.0f}", f"{loop_losses[0]:.5f}", "-", "-"],
            ["gmem, one at a time + `system.meta_grad: linearize` (Hessian-vector product)",
             f"{lin_med:.1f}", f"{lin_compile:.0f}", f"{lin_losses[0]:.5f}", "-", "-"],
            ["transformers + peft + autograd", f"{t_med:.1f}", "-", f"{t_losses[0]:.5f}",
             f"{args.bank_batch / tb_med:.2f}", "-"]]
    body = (
        "## ReGrad on SmolLM2-135M-Instruct (CPU, fp32): meta step and bank, gmem vs PyTorch "
        "(`bench/bench_regrad.py`)\n\n"
        f"Same weights (the embedded GGUF dequantised to fp32), LoRA r={RANK} (scale 2) on "
        f"gate/up/down of layers {layers[0]}-{layers[-1]} ({n_lora:,} values, PEFT's A copied into "
        f"gmem, B = 0), alpha `tie` {INIT_ALPHA}. One task: {args.k} passages x {args.passage} "
        f"random tokens, a QA row of {args.qa} tokens (answer: the last 6). Meta step = inner "
        "gradient with its graph, theta' = theta - alpha g, outer loss, the full second-order "
        "gradient w.r.t. theta and alpha, clip 0.5 and AdamW (gmem: one jitted function; torch: "
        "`autograd.grad(create_graph=True)` + `torch.func.functional_call` on theta' + backward, "
        "eager attention). Bank = per-passage gradients without graph (gmem: "
        f"{args.bank_batch} passages vmapped per call; torch: one passage per backward, as the "
        f"original's encode.py). Medians of {args.reps} after a warm-up call; compile times apart.\n\n"
        + table(["side", "meta step s", "compile s", "first meta-loss", "bank passages/s",
                 "bank compile s"], rows)
        + f"\n\nMeta step torch / gmem: {t_med / g_med:.2f}x (passages one at a time: "
          f"{t_med / loop_med:.2f}x; one at a time with the linearized meta-gradient: "
          f"{t_med / lin_med:.2f}x); bank gmem / torch: "
          f"{tb_med / b_med:.2f}x. {cores} per side; cores kept busy during a meta step (CPU s / wall "
          f"s): gmem {busy['linearize', True]:.2f} (linearize), torch {busy['torch']:.2f}. Load "
          f"average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; compare the "
          f"rows, not runs. jax {jax.__version__}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, peft {peft.__version__}."
    )
    floor = g_gflop / max(rates["xla"], rates["torch"])
    body += (
        f"\n\nWork: XLA's cost analysis counts {g_gflop:.0f} GFLOP in gmem's step (every op); "
        f"torch's `FlopCounterMode` counts {t_gflop:.0f} GFLOP of matmuls in its step. Achieved: "
        f"gmem {g_gflop / g_med:.0f} GFLOP/s, torch {t_gflop / t_med:.0f} GFLOP/s. The fastest dot "
        f"measured here in this run (the step's MLP and vocab-head shapes) runs at {rates['xla']:.0f} "
        f"GFLOP/s in XLA and {rates['torch']:.0f} in torch, so gmem's step cannot take less than "
        f"{floor:.1f} s at this thread count; twice torch's speed would need {t_med / 2:.1f} s."
    )
    print(body)
    if not args.quick:
        write_section("regrad" if args.threads == 1 else f"regrad_{args.threads}threads", body)


def dot_rates(jax, jnp, torch, tokens: int, config) -> dict:
    """Best GFLOP/s of one [tokens, D] x [D, F] and one [tokens, D] x [D, V] fp32 dot (the step's
    MLP and vocab-head shapes) per side, median of 5 after a warm-up: the rate no step can beat."""
    shapes = [(tokens, config.hidden_size, config.intermediate_size),
              (tokens, config.hidden_size, config.vocab_size)]
    out = {"xla": 0.0, "torch": 0.0}
    for m, k, n in shapes:
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
        ja, jb, dot = jnp.asarray(a), jnp.asarray(b), jax.jit(jnp.dot)
        ta, tb = torch.as_tensor(a), torch.as_tensor(b)
        for side, call in (("xla", lambda: dot(ja, jb).block_until_ready()), ("torch", lambda: ta @ tb)):
            out[side] = max(out[side], 2 * m * k * n / timed(call, 5)[1] / 1e9)
    return out


if __name__ == "__main__":
    main()
