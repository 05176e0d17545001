"""Exports of a trained run: adapters alone in PEFT format, or the merged model as an HF folder."""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from gmem.adapters import merge
from gmem.adapters.peft_io import save_peft
from gmem.errors import GmemError
from gmem.hf.registry import family_for
from gmem.hf.writer import save_pretrained


def _rules(system):
    return family_for(system.model_config.to_hf()).rules


def export_peft(system, trainable, out) -> list[str]:
    """One PEFT folder per LoRA set (OUT, or OUT/NAME when there are several)."""
    host = jax.device_get(trainable)
    lora = [s for s in system.specs if s.kind == "lora"]
    if not lora:
        raise GmemError("--export-peft: this run has no LoRA adapter set")
    written = []
    for s in lora:
        d = pathlib.Path(out) if len(lora) == 1 else pathlib.Path(out) / s.name
        save_peft(str(d), s, host[s.name], _rules(system),
                  base_model_name_or_path=str(system.path) if system.path else None,
                  task_type="CAUSAL_LM")
        written.append(str(d))
    return written


def export_hf(system, trainable, frozen, out) -> str:
    """The base with every adapter merged into its kernels, as an HF folder (config.json +
    safetensors, + the tokenizer when it can save itself)."""
    host_base = jax.tree_util.tree_map(np.asarray, jax.device_get(frozen))
    merged = merge(system.specs, host_base, jax.device_get(trainable), _rules(system))
    tok = system.tokenizer if hasattr(system.tokenizer, "save_pretrained") else None
    return str(save_pretrained(out, system.model_config, merged, tok))
