"""Shared by the ReGrad tests: a tiny random transformers LLaMA with PEFT LoRA on the MLPs of its
upper half, the same weights in gmem, and task rows of random tokens.

lora_B is drawn non-zero (PEFT starts it at 0, which would make every lora_A gradient 0 and
hide a transposed or misplaced A); alpha values differ per tensor so a mixed-up tensor shows.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from gmem.adapters import AdapterSpec
from gmem.hf.keymap import apply_transform, hf_to_gmem
from gmem.hf.keymaps.llama import RULES
from gmem.models.llama import LlamaConfig, LlamaForCausalLM
from gmem.systems.regrad.meta import Model
from gmem.tree import unflatten

VOCAB, LAYERS, RANK, LORA_ALPHA = 97, 2, 4, 8.0
UPPER = (1,)
TARGETS = ("gate_proj", "up_proj", "down_proj")


def torch_llama(seed: int = 0):
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=LAYERS, num_attention_heads=4,
                                   num_key_value_heads=2, attn_implementation="eager")
    return transformers.LlamaForCausalLM(cfg).eval(), cfg


def gmem_params(hf) -> dict:
    flat = {}
    for k, v in hf.state_dict().items():
        hit = hf_to_gmem(k, RULES)
        if hit is not None:
            flat[hit[0]] = jnp.asarray(apply_transform(v.detach().float().numpy(), hit[1]))
    return unflatten(flat)


def peft_wrap(hf, seed: int = 1):
    """PEFT LoRA (r=4, alpha=8: scale 2) on gate/up/down of layers 2-3, lora_B ~ N(0, 0.3)."""
    import peft
    import torch

    cfg = peft.LoraConfig(r=RANK, lora_alpha=LORA_ALPHA, target_modules=list(TARGETS),
                          layers_to_transform=list(UPPER), lora_dropout=0.0)
    model = peft.get_peft_model(hf, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def lora_name_to_path(name: str) -> tuple[str, str]:
    """PEFT parameter name -> (gmem LoRA tree path, transform): A/B are transposed."""
    # base_model.model.model.layers.2.mlp.gate_proj.lora_A.default.weight
    parts = name.split(".")
    i = parts.index("layers")
    layer, mod, kind = parts[i + 1], parts[i + 3], parts[i + 4]
    return f"model/layers_{layer}/mlp/{mod}/{kind}", "T"


def gmem_lora(peft_model) -> tuple[dict, dict[str, str]]:
    """(gmem LoRA tree, {gmem path: PEFT name}) with PEFT's current values."""
    flat, names = {}, {}
    for n, p in peft_model.named_parameters():
        if "lora_" in n:
            path, t = lora_name_to_path(n)
            flat[path] = jnp.asarray(apply_transform(p.detach().numpy(), t))
            names[path] = n
    return unflatten(flat), names


def gmem_model(hf_cfg, alpha_mode="tie", dtype="float32", passage_loop=False,
               meta_grad="reverse") -> Model:
    cfg = LlamaConfig.from_hf(hf_cfg, dtype=dtype)
    spec = AdapterSpec(targets=TARGETS, rank=RANK, alpha=LORA_ALPHA, layers_to_transform=UPPER)
    return Model(LlamaForCausalLM(cfg), spec, alpha_mode, passage_loop=passage_loop,
                 meta_grad=meta_grad)


def task(seed: int = 0, k: int = 2, lp: int = 12, lq: int = 14, lens=(12, 8), prompt: int = 9,
         answer: int = 3) -> dict:
    """One task of random tokens: K passages right-padded to lp (lengths `lens`), a QA row of
    `prompt` prompt tokens and `answer` answer tokens right-padded to lq."""
    r = np.random.RandomState(seed)
    pids = r.randint(3, VOCAB, (k, lp)).astype(np.int32)
    pmask = np.zeros((k, lp), np.int32)
    for i, n in enumerate(lens[:k]):
        pmask[i, :n] = 1
    pids = np.where(pmask > 0, pids, 0).astype(np.int32)
    qids = np.zeros((lq,), np.int32)
    qids[:prompt + answer] = r.randint(3, VOCAB, prompt + answer)
    qmask = (np.arange(lq) < prompt + answer).astype(np.int32)
    labels = ((np.arange(lq) >= prompt) & (np.arange(lq) < prompt + answer)).astype(np.int32)
    return {"passage_ids": pids, "passage_mask": pmask, "qa_ids": qids, "qa_mask": qmask,
            "qa_labels": labels}


def scaled_err(a, b) -> float:
    """max |a - b| / max(max |b|, 1e-12): the error relative to the reference's scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))
