"""Compile a LoRA train step from abstract shapes and print per-device memory (no weights
allocated): ShapeDtypeStructs with shardings -> jit(...).lower(...).compile().memory_analysis().

    python bench/aot_memory.py                        # LLaMA-2-7B, seq 2048, batch 8, remat, bf16, fsdp=8
    python bench/aot_memory.py --model smollm2 --mesh data=2,fsdp=4 --seq 512
    python bench/aot_memory.py --write                # also rewrite bench/RESULTS.md (section aot_memory)

Runs on N virtual CPU devices (--devices, default 8) unless real accelerators are present, or
with --tpu TOPOLOGY compiles for TPU chips that are not there (libtpu's compiler; see tpu_devices).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

MODELS = {
    # LLaMA-2-7B (HF meta-llama/Llama-2-7b-hf config.json)
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
    # SmolLM2-135M
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    tie_word_embeddings=True),
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
}


def compile_abstract_step(cfg, system, devices=None):
    """(plan, compiled train step, compile seconds) for cfg's system, lowered on abstract state,
    frozen base and batch carrying the plan's shardings: nothing is allocated. devices: the mesh's
    devices (tpu_devices() to compile for TPU chips that are not there); None: jax.devices()."""
    import jax

    from gmem.train import sharding as shd
    from gmem.train.checkpoint import abstract_with_shardings
    from gmem.train.loop import make_plan

    t0 = time.perf_counter()
    m = cfg.sharding.mesh
    plan = make_plan(cfg, system, None if devices is None else shd.make_mesh(m.data, m.fsdp, m.tensor, devices))
    with plan.context():
        state = abstract_with_shardings(plan.abstract_state, plan.state_sh)
        frozen = abstract_with_shardings(plan.abstract_frozen, plan.frozen_sh)
        batch = {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=plan.batch_sh[k])
                 for k, s in system.batch_shapes().items()}
        lowered = plan.step.lower(state, frozen, batch)
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            # The TPU compiler refuses a program that cannot fit the chip's HBM, even after
            # rematerialising more of it; the message says how much it would need.
            if "RESOURCE_EXHAUSTED" in str(e):
                raise DoesNotFit(str(e).splitlines()[0]) from None
            raise
    return plan, compiled, time.perf_counter() - t0


class DoesNotFit(Exception):
    """compile_abstract_step: the target's compiler found no way to fit the step in memory."""


def step_memory_gib(compiled) -> dict:
    """Per-device GiB of a compiled step: arguments, temporaries, outputs, aliased outputs, and
    the total (outputs aliased to donated inputs take no extra memory)."""
    ma = compiled.memory_analysis()
    gib = 1024 ** 3
    args, temp = ma.argument_size_in_bytes / gib, ma.temp_size_in_bytes / gib
    out, alias = ma.output_size_in_bytes / gib, ma.alias_size_in_bytes / gib
    return {"args_GiB": args, "temp_GiB": temp, "out_GiB": out, "alias_GiB": alias,
            "total_GiB": args + temp + out - alias}


def tpu_devices(topology: str) -> list:
    """The chips of a TPU topology ("v5e:2x4": 8 TPU v5e chips of 16 GiB HBM), to compile for with
    the TPU compiler on a machine that has none (needs libtpu: pip install -e ".[tpu]"). Unlike
    XLA:CPU, which runs bf16 dots in f32 (f32 copies of every bf16 weight) and merges a
    rematerialised forward with the original (remat then keeps every layer's activations), the
    TPU compiler gives the memory the chips would use."""
    from jax.experimental import topologies

    return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)


def virtual_cpu_devices(n: int) -> None:
    """Run on n virtual CPU devices (unless XLA_FLAGS is set) with the memory-aware scheduler.
    Call before jax starts its backend. XLA:CPU's default concurrency-optimized scheduler
    ignores memory and runs every layer's rematerialized forward early (2.2 GiB/layer live for
    LLaMA-2-7B); the memory-aware one gives the peak an accelerator's scheduler aims for."""
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={n} "
                          "--xla_cpu_enable_concurrency_optimized_scheduler=false")


def add_target_args(ap) -> None:
    """--devices (virtual CPU devices) and --tpu (a TPU topology to compile for instead)."""
    ap.add_argument("--devices", type=int, default=8, help="virtual CPU devices (without --tpu)")
    ap.add_argument("--tpu", metavar="TOPOLOGY", help="compile with the TPU compiler for chips that are not "
                    "there, e.g. v5e:2x4 (8 v5e chips, 16 GiB each; needs libtpu: pip install -e '.[tpu]')")


def target_devices(a) -> list | None:
    """The mesh devices for add_target_args' options: the TPU chips of --tpu, or None after
    setting up --devices virtual CPU devices (call before jax starts its backend)."""
    if a.tpu:
        return tpu_devices(a.tpu)
    virtual_cpu_devices(a.devices)
    return None


def compiler_name(devices, n: int) -> str:
    """'TPU v5 lite x 8' or 'XLA:CPU, 8 virtual devices': the compiler a row was measured with."""
    return f"{devices[0].device_kind} x {len(devices)}" if devices else f"XLA:CPU, {n} virtual devices"


def measure_or_report(measure, *args, **kwargs) -> dict | None:
    """measure(*args, **kwargs), or None after printing why the step does not fit its target."""
    try:
        return measure(*args, **kwargs)
    except DoesNotFit as e:
        print(f"does not fit: {e}")
        return None


def print_memory(r: dict, limit_gib: float | None = None) -> bool:
    """Print a measure() row, one key per line; with limit_gib, whether the per-device total is
    under it (returned)."""
    width = max(map(len, r))
    for k, v in r.items():
        print(f"{k:>{width}}: {v:.3f}" if isinstance(v, float) else f"{k:>{width}}: {v}")
    if limit_gib is None:
        return True
    ok = r["total_GiB"] < limit_gib
    print(f"per-device total {r['total_GiB']:.2f} GiB {'<' if ok else '>='} {limit_gib} GiB")
    return ok


def parse_mesh(s: str) -> dict:
    out = {"data": 1, "fsdp": 1, "tensor": 1}
    for part in filter(None, s.split(",")):
        k, v = part.split("=")
        out[k.strip()] = int(v)
    return out


def measure(model: str, mesh: dict, seq: int, batch: int, remat: bool, dtype: str,
            targets=("q_proj", "k_proj", "v_proj", "o_proj"), rank: int = 16, layers: int = 0,
            frozen_dtype: str = "float32", devices=None) -> dict:
    import jax

    from gmem.config import load_config, to_object
    from gmem.systems.lm import LMSystem

    fields = [f"model.{k}={v}" for k, v in MODELS[model].items()]
    if layers:
        fields.append(f"model.num_hidden_layers={layers}")
    fields.append(f"model.frozen_dtype={frozen_dtype}")
    cfg = to_object(load_config(None, fields + [
        "model.source=random", f"model.dtype={dtype}", f"model.remat={str(remat).lower()}",
        f"data.seq_len={seq}", f"data.batch_size={batch}", f"adapters.0.targets=[{','.join(targets)}]",
        f"adapters.0.rank={rank}", *(f"sharding.mesh.{k}={v}" for k, v in mesh.items())]))
    system = LMSystem(cfg, load_data=False)
    plan, compiled, secs = compile_abstract_step(cfg, system, devices)
    mem = step_memory_gib(compiled)
    n_base = sum(x.size for x in jax.tree_util.tree_leaves(plan.abstract_frozen))
    n_train = sum(x.size for x in jax.tree_util.tree_leaves(plan.abstract_trainable))
    return {"compiler": compiler_name(devices, plan.mesh.devices.size), "model": model, "mesh": ",".join(f"{k}={v}" for k, v in mesh.items() if v != 1) or "1 device",
            "devices": plan.mesh.devices.size, "seq": seq, "batch": batch, "remat": remat, "dtype": dtype,
            "base_params_M": n_base / 1e6, "trainable_M": n_train / 1e6, **mem, "compile_s": secs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama2-7b", choices=sorted(MODELS))
    ap.add_argument("--mesh", default="fsdp=8")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--no-remat", action="store_true")
    ap.add_argument("--dtype", default="bfloat16")
    add_target_args(ap)
    ap.add_argument("--layers", type=int, default=0, help="override the number of layers (quick probes)")
    ap.add_argument("--frozen-dtype", default="bfloat16", help="storage dtype of the frozen base")
    ap.add_argument("--limit-gib", type=float, default=16.0)
    ap.add_argument("--write", action="store_true", help="rewrite bench/RESULTS.md section aot_memory")
    a = ap.parse_args(argv)
    devices = target_devices(a)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = measure_or_report(measure, a.model, parse_mesh(a.mesh), a.seq, a.batch, not a.no_remat, a.dtype,
                          layers=a.layers, frozen_dtype=a.frozen_dtype, devices=devices)
    if r is None:
        return 1
    ok = print_memory(r, a.limit_gib)
    if a.write:
        from bench.results import table, write_section
        head = ["model", "mesh", "seq", "global batch", "remat", "compute", "base params (M)",
                "LoRA params (M)", "args GiB/dev", "temp GiB/dev", "total GiB/dev", "compile s"]
        row = [r["model"], r["mesh"], r["seq"], r["batch"], r["remat"], r["dtype"], r["base_params_M"],
               round(r["trainable_M"], 2), round(r["args_GiB"], 2), round(r["temp_GiB"], 2),
               round(r["total_GiB"], 2), r["compile_s"]]
        body = ("## AOT memory of a LoRA train step (`python bench/aot_memory.py --write`)\n\n"
                "Compiled from ShapeDtypeStructs with shardings (no weights allocated) on virtual CPU "
                "devices; per-device bytes from `compiled.memory_analysis()` (arguments include the "
                "fp32 frozen base shard, LoRA params and Adam state; temp = activations and "
                "workspace). LoRA r=16 on q/k/v/o.\n\n" + table(head, [row]))
        write_section("aot_memory", body)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
