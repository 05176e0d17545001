"""AOT memory of a GOFA training step on Mistral-7B shapes, from abstract shapes only:
ShapeDtypeStructs with shardings -> plan.step.lower(...).compile().memory_analysis(); no weight
is allocated.

Default: Mistral-7B-v0.2 (32 layers, D 4096, GQA 32/8, vocab 32000), bf16 compute and frozen
storage, remat, 6 GNN layers (fp32, ~1.0 B trainable, AdamW), K = 128 memory slots, ICAE's
encoder LoRA r 512 on q/v (frozen), one graph per device: 20 nodes on 20 unique 128-token texts,
40 edges on 20 unique 128-token edge texts, 4 targets, decoder rows of 256; mesh fsdp = 8, with
the graph axes (nodes, edges) sharded like the batch.

    python bench/aot_gofa.py [--layers 8] [--devices 8] [--write]     # XLA:CPU, 8 virtual devices
    python bench/aot_gofa.py --tpu v5e:2x4 [--write]                  # TPU compiler, 8 v5e chips

Without --tpu it runs on N virtual CPU devices (XLA:CPU's memory-aware scheduler, as
bench/aot_memory.py), which overstates an accelerator's memory (see bench.aot_memory.tpu_devices);
--tpu needs libtpu (pip install -e ".[tpu]") but no TPU, and compiles for minutes (10 for 8 layers
on 2 busy cores).
"""

from __future__ import annotations

import argparse
import os
import sys

MISTRAL = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768)


def measure(layers: int, devices: int, remat: bool = True, k: int = 128, gnn: int = 6, shard_graph: bool = True,
            chips=None) -> dict:
    """One row: per-device GiB of the step, compiled for `chips` (TPU devices) or for `devices`
    virtual CPU devices."""
    import jax

    from gmem.config import load_config, to_object
    from gmem.systems.gofa import GOFASystem

    from bench.aot_memory import compile_abstract_step, compiler_name, step_memory_gib

    model = dict(MISTRAL, num_hidden_layers=layers or MISTRAL["num_hidden_layers"])
    over = [f"model.{a}={b}" for a, b in model.items()] + [
        "model.source=random", "model.dtype=bfloat16", "model.frozen_dtype=bfloat16", f"model.remat={str(remat).lower()}",
        f"system.num_memory_tokens={k}", f"system.gnn_layers={gnn}", "system.compressor_ckpt=''",
        "system.max_text_len=128", "system.text_len_buckets=[128]", "system.nodes_buckets=[20]",
        "system.edges_buckets=[40]", "system.texts_buckets=[20]", "system.targets_buckets=[4]",
        "system.dec_len_buckets=[256]", f"data.batch_size={devices}", "sharding.mesh.data=1",
        f"sharding.mesh.fsdp={devices}",
        *(["sharding.rules={nodes: [data, fsdp], edges: [data, fsdp]}"] if shard_graph else []),
        "adapters=[{name: encadapt, targets: [q_proj, v_proj], rank: 512, alpha: 32.0}]"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = to_object(load_config(os.path.join(root, "configs", "gofa_pretrain.yaml"), over))
    system = GOFASystem(cfg, load_data=False)
    devices = len(chips) if chips else devices
    plan, compiled, secs = compile_abstract_step(cfg, system, chips)
    mem = step_memory_gib(compiled)
    count = lambda t: sum(x.size for x in jax.tree_util.tree_leaves(t))
    gib = 1024 ** 3
    e_scores = devices * 40 * k * MISTRAL["hidden_size"] * 4 / devices / gib
    return {"compiler": compiler_name(chips, devices),
            "layers": model["num_hidden_layers"], "gnn": gnn, "k": k, "devices": devices, "remat": remat,
            "frozen_M": count(plan.abstract_frozen) / 1e6, "trainable_M": count(plan.abstract_trainable) / 1e6,
            "args_GiB": mem["args_GiB"], "temp_GiB": mem["temp_GiB"], "total_GiB": mem["total_GiB"],
            "scores_GiB_per_tensor": e_scores, "compile_s": secs}


def main(argv=None) -> int:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.aot_memory import add_target_args, measure_or_report, print_memory, target_devices

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=0, help="decoder layers (0 = Mistral's 32; probes use fewer)")
    add_target_args(ap)
    ap.add_argument("--no-remat", action="store_true")
    ap.add_argument("--gnn", type=int, default=6, help="GNN layers")
    ap.add_argument("--k", type=int, default=128, help="memory slots per text")
    ap.add_argument("--replicated-graph", action="store_true", help="leave the nodes/edges axes unsharded")
    ap.add_argument("--limit-gib", type=float, default=16.0)
    ap.add_argument("--write", action="store_true", help="add the row to bench/RESULTS.md section aot_gofa")
    a = ap.parse_args(argv)
    chips = target_devices(a)
    r = measure_or_report(measure, a.layers, a.devices, not a.no_remat, a.k, a.gnn, not a.replicated_graph, chips)
    if r is None:
        return 1
    ok = print_memory(r, a.limit_gib)
    if a.write:
        from bench.results import section_rows, table, write_section
        head = ["compiled for", "decoder layers", "GNN layers", "K", "mesh", "remat", "own_gathers", "frozen params (M)",
                "trainable (M)", "args GiB/dev", "temp GiB/dev", "total GiB/dev", "compile s"]
        row = [r["compiler"], r["layers"], r["gnn"], r["k"], f"fsdp={r['devices']}", r["remat"], "yes", r["frozen_M"],
               r["trainable_M"], round(r["args_GiB"], 2), round(r["temp_GiB"], 2), round(r["total_GiB"], 2),
               r["compile_s"]]
        rows = section_rows("aot_gofa", "compiled for")
        body = ("## AOT memory of a GOFA step on Mistral-7B shapes (`python bench/aot_gofa.py [--tpu v5e:2x4] --write`)\n\n"
                "Compiled from ShapeDtypeStructs with shardings (no weights allocated); per-device bytes from "
                "`compiled.memory_analysis()`. bf16 compute and frozen base, 6 GNN layers (fp32 + AdamW), K = 128, "
                "ICAE LoRA r 512 on q/v (frozen), one graph per device (20 nodes, 40 edges, 128-token texts), "
                "fsdp = 8, nodes/edges sharded like the batch. Rows with fewer decoder layers are probes. "
                "`--tpu` compiles with the TPU compiler (libtpu) for chips that are not there: the memory a "
                "16 GiB v5e chip would use. XLA:CPU rows overstate it: XLA:CPU runs bf16 dots in f32 (an f32 "
                "copy of every bf16 weight it multiplies) and merges a rematerialised forward with the "
                "original, so remat keeps every layer's activations there. \"own_gathers\": the node pass and the "
                "decoder read the base through `gmem.train.sharding.own_gathers`.\n\n"
                + "\n".join([table(head, [row])] + rows))
        write_section("aot_gofa", body)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
