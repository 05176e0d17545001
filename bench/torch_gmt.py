#!/usr/bin/env python
"""One GMT stage-2 training step in PyTorch (transformers + peft), timed against gmem's JAX step.

Mirrors the original GMT stage 2 (spec gofa-gmt.md B8/B10) on SmolLM2-135M's shape:
  * frozen fp32 LlamaForCausalLM (random init: speed only), attention "sdpa";
  * memory cross-attention in layers 22..29, between the self-attention residual and
    post_attention_layernorm: x2 = x1 + g * o(Attn(q(RMSNorm_mem(x1)), k(mem), v(mem))),
    q/k/v/o frozen copies of that layer's self_attn (GQA: 3 kv heads repeated to 9), no mask,
    no RoPE, scalar gate g (init 0; the bench sets 0.1 so the path is live), RMSNorm_mem trainable;
  * peft LoRA r 64, alpha 128, dropout 0.01 on the memory q/k/v/o only;
  * full-sequence HF forward (logits at every position), HF's shifted CE, AdamW step.
Proxy: the memory comes from 16 trainable queries [16, 256] -> Linear(256, 576), the same for
every example. GMT's SGM is frozen in stage 2 and its tokenizer + projection are cheap next to
the LLM, so this stands in for them (cost of that part: small, not mirrored exactly).
Batches: gmem's UMLS rows re-packed right-padded to the batch's longest row (pad id 0); labels
are -100 except on the response (gmem's loss_mask).

    python bench/torch_gmt.py [--threads 2] [--first 0] [--steps 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm, repeat_kv

MEMORY_LAYERS = range(22, 30)
NUM_MEMORY, GRAPH_DIM = 16, 256
ATTN = "sdpa"


def smollm2_config() -> LlamaConfig:
    return LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
                       tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5,
                       max_position_embeddings=8192, pad_token_id=0, attn_implementation=ATTN)


class MemoryCrossAttention(nn.Module):
    """softmax(q(x) k(mem)^T / sqrt(64)) v(mem), then o; q/k/v/o copied from the layer's self_attn."""

    def __init__(self, self_attn, config: LlamaConfig):
        super().__init__()
        self.h, self.kv, self.hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            src = getattr(self_attn, name)
            lin = nn.Linear(src.in_features, src.out_features, bias=False)
            lin.weight.data.copy_(src.weight.data)
            setattr(self, name, lin)

    def forward(self, x_BTD, mem_BMD):
        B, T, _ = x_BTD.shape
        q_BHTK = self.q_proj(x_BTD).view(B, T, self.h, self.hd).transpose(1, 2)
        k_BGMK = self.k_proj(mem_BMD).view(B, -1, self.kv, self.hd).transpose(1, 2)
        v_BGMK = self.v_proj(mem_BMD).view(B, -1, self.kv, self.hd).transpose(1, 2)
        rep = self.h // self.kv
        o_BHTK = nn.functional.scaled_dot_product_attention(
            q_BHTK, repeat_kv(k_BGMK, rep), repeat_kv(v_BGMK, rep))
        return self.o_proj(o_BHTK.transpose(1, 2).reshape(B, T, self.h * self.hd))


class MemoryDecoderLayer(nn.Module):
    """transformers 5.23 LlamaDecoderLayer.forward with the GMT memory block after self-attention."""

    def __init__(self, layer, config: LlamaConfig):
        super().__init__()
        self.layer = layer
        self.mem_attn = MemoryCrossAttention(layer.self_attn, config)
        self.mem_norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mem_gate = nn.Parameter(torch.zeros(()))
        self.mem_BMD = None                              # set before each forward

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, position_embeddings=None, **kwargs):
        L = self.layer
        x_BTD, _ = L.self_attn(hidden_states=L.input_layernorm(hidden_states),
                               attention_mask=attention_mask, position_ids=position_ids,
                               past_key_values=past_key_values, use_cache=use_cache,
                               position_embeddings=position_embeddings, **kwargs)
        x1_BTD = hidden_states + x_BTD
        x2_BTD = x1_BTD + self.mem_gate * self.mem_attn(self.mem_norm(x1_BTD), self.mem_BMD)
        return x2_BTD + L.mlp(L.post_attention_layernorm(x2_BTD))


class MemoryProxy(nn.Module):
    """Stands in for GMT's memory tokenizer + projection: [16, 256] queries -> Linear(256, 576)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.queries_MG = nn.Parameter(torch.randn(NUM_MEMORY, GRAPH_DIM) * 0.02)
        self.proj = nn.Linear(GRAPH_DIM, hidden)

    def forward(self, batch: int):
        return self.proj(self.queries_MG).expand(batch, -1, -1)


def build(gate: float = 0.1):
    """(model with memory layers and LoRA, memory proxy, memory layers, trainable params)."""
    from peft import LoraConfig, inject_adapter_in_model
    config = smollm2_config()
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float()
    model.requires_grad_(False)
    layers = []
    for i in MEMORY_LAYERS:
        model.model.layers[i] = MemoryDecoderLayer(model.model.layers[i], config)
        layers.append(model.model.layers[i])
    lora = LoraConfig(r=64, lora_alpha=128, lora_dropout=0.01, bias="none",
                      target_modules=r".*\.mem_attn\.(q_proj|k_proj|v_proj|o_proj)")
    model = inject_adapter_in_model(lora, model)
    model.requires_grad_(False)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n or ".mem_norm." in n or n.endswith("mem_gate"))
    for layer in layers:
        layer.mem_gate.data.fill_(gate)
    proxy = MemoryProxy(config.hidden_size)
    trainable = [p for p in model.parameters() if p.requires_grad] + list(proxy.parameters())
    model.train()
    return model, proxy, layers, trainable


def repack(batch: dict) -> dict:
    """gmem rows [prefix | pads | rest] -> real tokens right-padded to the longest row, pad 0."""
    att_BT = np.asarray(batch["attention_mask"]) == 1
    rows = [(np.asarray(batch["input_ids"])[b][att_BT[b]], np.asarray(batch["loss_mask"])[b][att_BT[b]])
            for b in range(att_BT.shape[0])]
    T = max(len(ids) for ids, _ in rows)
    ids_BT = torch.zeros(len(rows), T, dtype=torch.long)
    mask_BT = torch.zeros(len(rows), T, dtype=torch.long)
    labels_BT = torch.full((len(rows), T), -100, dtype=torch.long)
    for b, (ids, lm) in enumerate(rows):
        ids_T = torch.as_tensor(ids, dtype=torch.long)
        ids_BT[b, :len(ids)], mask_BT[b, :len(ids)] = ids_T, 1
        labels_BT[b, :len(ids)] = torch.where(torch.as_tensor(lm) > 0, ids_T, -100)
    return {"input_ids": ids_BT, "attention_mask": mask_BT, "labels": labels_BT}


def step(model, proxy, layers, opt, tb: dict) -> float:
    mem_BMD = proxy(tb["input_ids"].shape[0])
    for layer in layers:
        layer.mem_BMD = mem_BMD
    loss = model(**tb).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def torch_gmt_steps(batches: list[dict], threads: int, warmup: int = 1) -> dict:
    """Warm up on the first batches, then time one step per batch; median seconds per step."""
    torch.set_num_threads(threads)
    model, proxy, layers, trainable = build()
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    tbs = [repack(b) for b in batches]
    losses = [step(model, proxy, layers, opt, tbs[i % len(tbs)]) for i in range(warmup)]
    times = []
    for tb in tbs:
        t0 = time.perf_counter()
        losses.append(step(model, proxy, layers, opt, tb))
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    tokens = [int(tb["attention_mask"].sum()) for tb in tbs]
    return {"s_per_step": s, "tokens_per_s": float(np.mean(tokens)) / s,
            "total_s": sum(times), "total_tokens": sum(tokens),
            "trainable_params": int(sum(p.numel() for p in trainable)),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "first_loss": losses[0], "attn": ATTN}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--first", type=int, default=0, help="first GMT training batch to time")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print only the result, as one JSON line")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    from gmem import config as gconfig
    from gmem.systems.gmt import GMTSystem
    cfg = gconfig.to_object(gconfig.load_config(os.path.join(root, "configs", "default.yaml"), []))
    system = GMTSystem(cfg)
    out = torch_gmt_steps([system.batch(args.first + i) for i in range(args.steps)], args.threads)
    print(json.dumps(out) if args.json else out)


if __name__ == "__main__":
    main()
