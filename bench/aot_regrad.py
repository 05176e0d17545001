"""Per-device memory of a ReGrad meta step from abstract shapes (no weights allocated): the
`regrad` system's jitted train step (second-order meta-gradient + AdamW) lowered with
ShapeDtypeStructs and shardings, compiled, and read with compiled.memory_analysis().

    python bench/aot_regrad.py                 # Llama-3.2-1B, 3 passages x 1536, fsdp=8, bf16, remat
    python bench/aot_regrad.py --layers 4      # a quick probe with fewer layers
    python bench/aot_regrad.py --write         # also rewrite bench/RESULTS.md (section aot_regrad)

Setup as the original's Llama-3.2-1B config: LoRA r=16, alpha=32 on gate/up/down of the upper
half, alpha `tie`; one task per device (global batch = devices, no accumulation: a meta-batch of
16 is more micro-batches of the same step, so the same memory).
"""

from __future__ import annotations

import argparse
import os
import sys

# meta-llama/Llama-3.2-1B-Instruct config.json (tied embeddings, 8 KV heads)
LLAMA_32_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                   num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                   max_position_embeddings=131072, tie_word_embeddings=True)


def measure(mesh: str, passage: int, prompt: int, k: int, remat: bool, dtype: str, frozen_dtype: str,
            layers: int = 0, rank: int = 16, chips=None) -> dict:
    import jax

    from gmem.config import load_config, to_object
    from gmem.systems.regrad import RegradSystem

    from bench.aot_memory import compile_abstract_step, compiler_name, step_memory_gib

    sizes = dict(LLAMA_32_1B, **({"num_hidden_layers": layers} if layers else {}))
    m = dict(p.split("=") for p in mesh.split(","))
    devices = len(chips) if chips else len(jax.devices())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = to_object(load_config(os.path.join(root, "configs", "regrad.yaml"), [
        "model.source=random", f"model.dtype={dtype}", f"model.frozen_dtype={frozen_dtype}",
        f"model.remat={str(remat).lower()}", *(f"model.{a}={b}" for a, b in sizes.items()),
        f"adapters.0.rank={rank}", f"adapters.0.alpha={2.0 * rank}", f"system.top_k={k}",
        f"system.max_passage_len={passage}", f"system.max_prompt_len={prompt}",
        "system.passage_loop=false",   # the K passages as one batch: what the README's figures measured
        f"data.batch_size={devices}", "optim.grad_accum=1", "sharding.mesh.data=1",
        *(f"sharding.mesh.{a}={b}" for a, b in m.items())]))
    system = RegradSystem(cfg, load_data=False)
    plan, compiled, secs = compile_abstract_step(cfg, system, chips)
    mem = step_memory_gib(compiled)
    n_base = sum(x.size for x in jax.tree_util.tree_leaves(plan.abstract_frozen))
    n_lora = sum(x.size for x in jax.tree_util.tree_leaves(plan.abstract_trainable["lora"]))
    return {"compiler": compiler_name(chips, devices), "layers": sizes["num_hidden_layers"], "mesh": mesh, "devices": devices, "passages": f"{k} x {passage}",
            "prompt": prompt, "remat": remat, "dtype": dtype, "frozen": frozen_dtype,
            "base_params_M": round(n_base / 1e6, 1), "lora_params_M": round(n_lora / 1e6, 3),
            "args_GiB": round(mem["args_GiB"], 2), "temp_GiB": round(mem["temp_GiB"], 2),
            "total_GiB": round(mem["total_GiB"], 2), "compile_s": round(secs, 1)}


def main(argv=None) -> int:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.aot_memory import add_target_args, measure_or_report, print_memory, target_devices

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mesh", default="fsdp=8")
    ap.add_argument("--passage", type=int, default=1536)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--no-remat", action="store_true")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--frozen-dtype", default="bfloat16")
    add_target_args(ap)
    ap.add_argument("--layers", type=int, default=0)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args(argv)
    chips = target_devices(a)
    r = measure_or_report(measure, a.mesh, a.passage, a.prompt, a.k, not a.no_remat, a.dtype, a.frozen_dtype,
                          a.layers, chips=chips)
    if r is None:
        return 1
    print_memory(r)
    if a.write:
        from bench.results import section_rows, table, write_section
        rows = section_rows("aot_regrad", "compiler")
        body = ("## AOT memory of a ReGrad meta step, Llama-3.2-1B (`python bench/aot_regrad.py [--tpu v5e:2x4] --write`)\n\n"
                "The `regrad` system's train step (inner gradient over the passages, theta' = theta - "
                "alpha g, outer loss, second-order gradient w.r.t. LoRA and alpha, clip, AdamW) "
                "compiled from ShapeDtypeStructs with shardings, for TPU v5e chips that are not there "
                "(`--tpu`: the TPU compiler, 15.75 GiB of HBM a chip) or for virtual CPU devices "
                "(memory-aware scheduler; XLA:CPU runs bf16 dots in f32 and does not honour remat, so it "
                "overstates the memory); one task per device; LoRA r=16 (scale 2) on gate/up/down of the "
                "upper half, alpha tie. args = frozen shard + LoRA + alpha + Adam state + batch; temp = "
                "activations and workspace.\n\n" + "\n".join([table(list(r), [list(r.values())])] + rows))
        write_section("aot_regrad", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
