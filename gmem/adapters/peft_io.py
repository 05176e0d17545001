"""LoRA adapters in PEFT's on-disk format: adapter_config.json + adapter_model.safetensors.

Keys are PEFT's: `base_model.model.<HF module>.lora_A.weight` [r, D_in] and `.lora_B.weight`
[D_out, r] (torch Linear layout; gmem's lora_A/lora_B are their transposes). The HF module
name comes from the base family's key map (gmem.hf.keymaps.<family>.RULES) through
gmem_to_hf / hf_to_gmem, so every family gets PEFT interop from its table alone.
"""

from __future__ import annotations

import json
import os
import re
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from gmem.adapters.core import AdapterSpec, flatten_modules, unflatten_modules
from gmem.adapters.targets import hf_name, layer_index, projection_paths
from gmem.errors import GmemError, collect_errors
from gmem.hf.keymap import Rule, gmem_to_hf, hf_to_gmem

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
_PLAIN = re.compile(r"^[A-Za-z_][\w.]*$")


def _hf_module(path: str, rules: Sequence[Rule]) -> str:
    """The live transformers module name PEFT keys use (gmem modules carry those names; the
    key map confirms it, or supplies its spelling when the convention is not known to it)."""
    got = gmem_to_hf(path + "/kernel", rules)
    if got is None or not got[0].endswith(".weight"):
        raise GmemError(f"{path}: the family key map has no HF name for this projection")
    return hf_name(path, rules)


def _peft_would_select(targets, layers, names: dict[str, str]) -> set[str]:
    """Module paths PEFT selects with plain suffix targets (its list semantics)."""
    keep = None if layers is None else ({layers} if isinstance(layers, int) else set(layers))
    out = set()
    for path, name in names.items():
        if keep is not None and layer_index(name) not in keep:
            continue
        if any(name == t or name.endswith("." + t) for t in targets):
            out.add(path)
    return out


def peft_state_dict(tree: dict, rules: Sequence[Rule]) -> dict[str, np.ndarray]:
    """gmem LoRA tree -> {PEFT key: torch-layout array}."""
    out = {}
    for path, e in flatten_modules(tree).items():
        mod = PREFIX + _hf_module(path, rules)
        out[mod + ".lora_A.weight"] = np.ascontiguousarray(np.asarray(e["lora_A"], np.float32).T)
        out[mod + ".lora_B.weight"] = np.ascontiguousarray(np.asarray(e["lora_B"], np.float32).T)
    return out


def peft_config(spec: AdapterSpec, tree: dict, rules: Sequence[Rule],
                base_model_name_or_path: Optional[str] = None,
                task_type: Optional[str] = None, base_params=None) -> dict:
    """PEFT LoraConfig fields for `spec`. With base_params, plain targets are written as given
    when PEFT's suffix matching selects exactly the modules gmem adapted; otherwise (regexes,
    ':' notation, aliases, other spellings, or no base_params) the exact module names."""
    targets = spec.targets
    layers = spec.layers_to_transform
    adapted = set(flatten_modules(tree))
    names = {p: _hf_module(p, rules) for p in (adapted if base_params is None else
                                               projection_paths(base_params))}
    plain = (not isinstance(targets, str) and "all-linear" not in targets
             and all(_PLAIN.match(t) for t in targets))
    if plain and base_params is not None and _peft_would_select(targets, layers, names) == adapted:
        target_modules = list(targets)
    else:   # exact live module names: PEFT selects exactly what gmem adapted
        target_modules = sorted(names[p] for p in adapted)
        layers = None
    return {
        "peft_type": "LORA", "task_type": task_type, "r": spec.rank,
        "lora_alpha": spec.alpha, "lora_dropout": spec.dropout, "use_rslora": spec.use_rslora,
        "target_modules": target_modules,
        "layers_to_transform": list(layers) if isinstance(layers, tuple) else layers,
        "layers_pattern": None, "bias": "none", "fan_in_fan_out": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
        "rank_pattern": {}, "alpha_pattern": {}, "use_dora": False,
        "base_model_name_or_path": base_model_name_or_path,
    }


def save_peft(directory: str, spec: AdapterSpec, tree: dict, rules: Sequence[Rule],
              base_model_name_or_path: Optional[str] = None, task_type: Optional[str] = None,
              base_params=None) -> None:
    """Write a LoRA tree as a PEFT adapter folder (PeftModel.from_pretrained reads it)."""
    if spec.kind != "lora":
        raise GmemError(f"adapter {spec.name!r}: PEFT export is for LoRA; GIFT checkpoints "
                        "use gmem.adapters.gift_io.to_gift_state_dict")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG), "w") as f:
        json.dump(peft_config(spec, tree, rules, base_model_name_or_path, task_type, base_params),
                  f, indent=2)
    save_file(peft_state_dict(tree, rules), os.path.join(directory, WEIGHTS),
              metadata={"format": "pt"})


def spec_from_peft_config(cfg: dict, name: str = "default", where: str = CONFIG) -> AdapterSpec:
    """PEFT LoraConfig dict -> AdapterSpec, refusing what gmem's LoRA does not compute."""
    errors = []
    if cfg.get("peft_type", "LORA") != "LORA":
        errors.append(f"peft_type={cfg.get('peft_type')!r} (gmem reads LORA)")
    if cfg.get("use_dora"):
        errors.append("use_dora=true (DoRA is not supported)")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        errors.append(f"bias={cfg.get('bias')!r} (only 'none')")
    for k in ("rank_pattern", "alpha_pattern"):
        if cfg.get(k):
            errors.append(f"{k}={cfg[k]!r} (per-module ranks/alphas are not supported)")
    if cfg.get("layers_pattern"):
        errors.append(f"layers_pattern={cfg['layers_pattern']!r} (not supported)")
    collect_errors(errors, where)
    targets = cfg.get("target_modules") or ()
    targets = targets if isinstance(targets, str) else tuple(targets)
    layers = cfg.get("layers_to_transform")
    return AdapterSpec(kind="lora", targets=targets, rank=int(cfg["r"]),
                       alpha=float(cfg.get("lora_alpha", 8)), dropout=float(cfg.get("lora_dropout", 0.0)),
                       use_rslora=bool(cfg.get("use_rslora", False)),
                       layers_to_transform=tuple(layers) if isinstance(layers, list) else layers,
                       name=name)


def from_peft_state_dict(state: dict, rules: Sequence[Rule], base_params=None,
                         where: str = WEIGHTS) -> dict:
    """{PEFT key: array} -> gmem LoRA tree; with base_params, shapes are checked."""
    shapes = projection_paths(base_params) if base_params is not None else None
    flat: dict[str, dict] = {}
    errors = []
    for key, v in state.items():
        k = key[len(PREFIX):] if key.startswith(PREFIX) else key
        m = re.match(r"^(.*)\.(lora_A|lora_B)(?:\.[\w-]+)?\.weight$", k)
        if m is None:
            errors.append(f"{key}: not a lora_A/lora_B weight (modules_to_save and "
                          "lora_embedding are not read here)")
            continue
        mod, which = m.groups()
        got = hf_to_gmem(mod + ".weight", rules)
        if got is None or not got[0].endswith("/kernel"):
            errors.append(f"{key}: module {mod!r} is not a projection of this family")
            continue
        path = got[0][: -len("/kernel")]
        arr = np.asarray(v, np.float32).T  # torch [out, in] -> [in, out]
        if shapes is not None:
            if path not in shapes:
                errors.append(f"{key}: the base model has no {path}")
                continue
            d_in, d_out = shapes[path]
            dim, want = (0, d_in) if which == "lora_A" else (1, d_out)
            if arr.shape[dim] != want:
                errors.append(f"{key}: shape {tuple(v.shape)} does not fit {path} [{d_in}, {d_out}]")
                continue
        flat.setdefault(path, {})[which] = jnp.asarray(arr)
    for path, e in flat.items():
        if set(e) != {"lora_A", "lora_B"}:
            errors.append(f"{path}: has {sorted(e)}, needs lora_A and lora_B")
    collect_errors(errors, where)
    return unflatten_modules(flat)


def load_peft(directory: str, rules: Sequence[Rule], base_params=None,
              name: str = "default") -> tuple[AdapterSpec, dict]:
    """Read a PEFT LoRA folder -> (AdapterSpec, trainable tree) for gmem.adapters."""
    cfg_path = os.path.join(directory, CONFIG)
    if not os.path.exists(cfg_path):
        raise GmemError(f"{cfg_path}: not found (is {directory!r} a PEFT adapter folder?)")
    with open(cfg_path) as f:
        cfg = json.load(f)
    spec = spec_from_peft_config(cfg, name, where=cfg_path)
    w = os.path.join(directory, WEIGHTS)
    if os.path.exists(w):
        state = load_file(w)
    elif os.path.exists(os.path.join(directory, "adapter_model.bin")):
        import torch  # optional and slow to import (~4 s): only for .bin adapters
        sd = torch.load(os.path.join(directory, "adapter_model.bin"), map_location="cpu",
                        weights_only=True)
        state = {k: t.float().numpy() for k, t in sd.items()}
        w = os.path.join(directory, "adapter_model.bin")
    else:
        raise GmemError(f"{w}: not found")
    tree = from_peft_state_dict(state, rules, base_params, where=w)
    ranks = {a.shape[1] for e in flatten_modules(tree).values() for a in [e["lora_A"]]}
    if ranks != {spec.rank}:
        raise GmemError(f"{w}: lora_A ranks {sorted(ranks)} differ from r={spec.rank} in {cfg_path}")
    return spec, tree
