"""The original GMT's run settings (specs/gofa-gmt.md B9-B12) applied to a gmem config.

The original writes its argparse namespace beside the weights: `gmt_config.json` (stage 2,
finetune_gmt.py) and `sgm_config.json` (stage 1, pretrain_gmt.py). Every setting there that
changes numbers is mapped to gmem's option below. On import (`system.import_ckpt`, or
`system.sgm_ckpt` on an original stage-1 folder):

- a gmem option equal to the original's value: nothing to do;
- a gmem option left at gmem's default: it takes the original's value (the run's saved config
  then shows it);
- a gmem option set to a third value: a mismatch. All mismatches are listed in one GmemError.

"gmem's default" is the option's schema default, and for the memory LoRA (adapters entry on
memory_attn) the original's own defaults r 64 / alpha 128 / dropout 0.01. Settings absent from
the file are not applied. The original's gate is a plain scalar (no tanh form exists there).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

from gmem.errors import GmemError

# original key -> gmem `system.` option, for both stages' files.
GRAPH = {"graph_dim": "graph_dim", "sgm_layers": "sgm_layers", "sgm_heads": "sgm_heads", "top_k": "top_k",
         "add_inverse": "add_inverse", "triple_format": "triple_format", "triple_file": "triple_file"}
STAGE2 = dict(GRAPH, graph_dropout="graph_dropout", mask_query="mask_query", num_memory_tokens="num_memory_tokens",
              memory_heads="memory_heads", train_graph_module="train_graph_module",
              train_on_inputs="train_on_inputs", add_eos_token="add_eos", max_new_tokens="max_new_tokens")
STAGE1 = dict(GRAPH, dropout="graph_dropout")
LORA = {"lora_r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout"}
LORA_DEFAULTS = {"rank": 64, "alpha": 128.0, "dropout": 0.01}     # finetune_gmt.py's
MEMORY_TARGET = "memory_attn"


def read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise GmemError(f"{path}: not found")
    try:
        cfg = json.loads(open(path, encoding="utf-8").read())
    except json.JSONDecodeError as e:
        raise GmemError(f"{path}:{e.lineno}: bad JSON: {e.msg}") from None
    if not isinstance(cfg, dict):
        raise GmemError(f"{path}: expected a JSON object (the original's argparse settings)")
    return cfg


def parse_layers(value, one_based: bool = False) -> list[int]:
    """memory_layers as the original writes it ("24,25,..." or a list), 0-based."""
    if isinstance(value, str):
        ids = [int(x) for x in value.replace(" ", "").split(",") if x]
    else:
        ids = [int(x) for x in value or []]
    return [i - 1 for i in ids] if one_based else ids


def memory_adapter(cfg):
    """The adapters entry that puts LoRA on the memory cross-attention, or None."""
    for a in cfg.adapters:
        if a.kind == "lora" and a.targets and all(str(t).startswith(MEMORY_TARGET) for t in a.targets):
            return a
    return None


def _defaults(options) -> dict:
    out = {}
    for f in dataclasses.fields(options):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
        except (TypeError, ValueError):
            return False
    return getattr(a, "value", a) == getattr(b, "value", b)


def apply_settings(cfg, orig: dict, where: str, stage: int = 2, lora_rank: int | None = None) -> list[str]:
    """Apply the original's settings `orig` (a gmt_config.json / sgm_config.json dict) to the
    resolved config `cfg` in place (its `system` options and the memory LoRA entry). Returns
    one line per setting taken from the original; raises GmemError listing every mismatch.
    lora_rank: the rank the LoRA tensors of memory_attn.pth have (checked against lora_r)."""
    p = cfg.system
    dflt = _defaults(type(p))
    applied, bad = [], []

    def take(key, cur, default, want, put):
        if _same(cur, want):
            return
        if _same(cur, default):
            put(want)
            applied.append(f"{key}={want!r}")
        else:
            bad.append(f"{key}: {getattr(cur, 'value', cur)!r} here, {want!r} in the original run")

    for okey, gkey in (STAGE2 if stage == 2 else STAGE1).items():
        if okey in orig and hasattr(p, gkey):
            want = type(dflt[gkey])(orig[okey]) if dflt[gkey] is not None else orig[okey]
            take(f"system.{gkey}", getattr(p, gkey), dflt[gkey], want, lambda v, k=gkey: setattr(p, k, v))
    if stage == 2:
        if orig.get("memory_layers"):
            want = parse_layers(orig["memory_layers"], bool(orig.get("memory_layers_1based")))
            take("system.memory_layers", list(p.memory_layers), [], want, lambda v: setattr(p, "memory_layers", v))
        if getattr(p.gate, "value", p.gate) != "scalar":
            bad.append(f"system.gate: {p.gate.value!r} here; the original's gate is a plain scalar (gate=scalar)")
        _apply_lora(cfg, orig, lora_rank, take, bad, where)
        _warn_not_reproduced(orig, where)
    if bad:
        raise GmemError(f"{where}: the original run's settings differ from this config; set each as the original "
                        f"has it (or leave it at gmem's default to take the original's): " + "; ".join(bad))
    return applied


def _apply_lora(cfg, orig, lora_rank, take, bad, where):
    if lora_rank is not None and "lora_r" in orig and int(orig["lora_r"]) != lora_rank:
        raise GmemError(f"{where}: lora_r is {orig['lora_r']} but memory_attn.pth holds rank-{lora_rank} LoRA tensors")
    want = {"rank": int(orig.get("lora_r", lora_rank or 0))} if ("lora_r" in orig or lora_rank) else {}
    for okey, field in LORA.items():
        if okey in orig and field != "rank":
            want[field] = float(orig[okey])
    if not want or want.get("rank", 1) == 0:
        return
    a = memory_adapter(cfg)
    if a is None:
        bad.append(f"adapters: no LoRA on {MEMORY_TARGET} here; the original run has r={want.get('rank')}")
        return
    for field, v in want.items():
        take(f"adapters[{a.name}].{field}", getattr(a, field), LORA_DEFAULTS[field], v,
             lambda x, f=field: setattr(a, f, x))


def _warn_not_reproduced(orig, where):
    """Settings that change only further training, which gmem does not do the original's way."""
    notes = []
    if orig.get("train_cross_attn_base"):
        notes.append("train_cross_attn_base: the memory blocks' q/k/v/o copies are imported as trained "
                     "but stay frozen if training goes on")
    if orig.get("trainable_rel_semantics") and orig.get("train_graph_module"):
        notes.append("trainable_rel_semantics: the imported relation table stays frozen if training goes on")
    for n in notes:
        warnings.warn(f"{where}: {n}", stacklevel=3)
