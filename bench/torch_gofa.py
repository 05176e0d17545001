#!/usr/bin/env python
"""One GOFA training step in PyTorch (transformers + peft + PyG), timed against gmem's JAX step.

Mirrors the original GOFA step (spec gofa-gmt.md A4-A6, A8) on SmolLM2-135M's shape:
  * frozen fp32 LlamaForCausalLM (random init: speed only), attention "sdpa", with a PEFT LoRA
    `encadapt` (r 32 on q/v, frozen) for the encoder and, with --dec-lora, `default` (trained);
  * GOFA's encoder layout: every unique node and edge text of the graph in one batch, BOS-less
    tokens + K memory ids, right-padded to the longest, no padding mask, positions 0..L-1;
    blocks 0..first-1 under no_grad; node rows expanded by node_map; before each of the last
    n blocks a GNN layer (A5, written here on torch_geometric.utils.softmax and index_add_)
    rewrites the node rows' memory positions; final norm;
  * decoder: the target nodes' memory states as input embeddings in the chat layout, HF
    forward at every position, CE on the answer tokens, AdamW over the GNN (+ decoder LoRA).
Inputs are the gmem packer's records (same texts, same token ids, same targets).

    python bench/torch_gofa.py [--steps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn
from torch_geometric.utils import softmax as pyg_softmax
from transformers import LlamaConfig, LlamaForCausalLM

ATTN = "sdpa"


def smollm2_config() -> LlamaConfig:
    return LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                       num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
                       rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
                       attn_implementation=ATTN)


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class GNNLayer(nn.Module):
    """GOFAGNNConv (A5): head = dim, token-aligned attention over in-edges, gp MLP, tanh gates."""

    def __init__(self, d, eps):
        super().__init__()
        self.lin_qkv = nn.Linear(d, 3 * d, bias=False)
        self.e_proj = nn.Linear(d, 2 * d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.x_norm, self.xe_norm, self.post_gnn_norm = RMSNorm(d, eps), RMSNorm(d, eps), RMSNorm(d, eps)
        self.lins = nn.ModuleList([nn.Linear(d, 2 * d), nn.Linear(2 * d, d)])
        self.norm = RMSNorm(2 * d, eps)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff_gate = nn.Parameter(torch.zeros(1))
        for lin in (self.lin_qkv, self.e_proj, self.o_proj, *self.lins):
            nn.init.normal_(lin.weight, std=0.02)

    def forward(self, x, xe, src, dst):
        q, k, v = self.lin_qkv(self.x_norm(x)).chunk(3, -1)
        ek, ev = self.e_proj(self.xe_norm(xe)).chunk(2, -1)
        alpha = pyg_softmax(q[dst] * (k[src] + ek), dst, num_nodes=x.shape[0], dim=0)
        agg = torch.zeros_like(x).index_add_(0, dst, alpha * (v[src] + ev))
        h = x + torch.tanh(self.attn_gate) * self.o_proj(agg)
        f = self.lins[1](torch.relu(self.norm(self.lins[0](self.post_gnn_norm(h)))))
        return h + torch.tanh(self.ff_gate) * f


def build(k: int, n_gnn: int, dec_lora: bool):
    """(peft model, memory table, GNN layers, trainable params)."""
    import peft
    cfg = smollm2_config()
    torch.manual_seed(0)
    model = peft.get_peft_model(LlamaForCausalLM(cfg).float(), peft.LoraConfig(
        r=32, lora_alpha=32, target_modules=["q_proj", "v_proj"]), adapter_name="encadapt")
    if dec_lora:
        model.add_adapter("default", peft.LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.requires_grad_(False)
    for n, p in model.named_parameters():
        p.requires_grad_(dec_lora and ".default." in n)
    table = torch.randn(k + 3, cfg.hidden_size) * 0.02
    gnn = nn.ModuleList([GNNLayer(cfg.hidden_size, cfg.rms_norm_eps) for _ in range(n_gnn)])
    trainable = list(gnn.parameters()) + [p for p in model.parameters() if p.requires_grad]
    return model, table, gnn, trainable


def repack(rec, packer) -> dict:
    """A GraphRecord in GOFA's layout, token ids from gmem's packer (so both sides read the same)."""
    sp, g = packer.special, rec.graph
    node_texts = list(dict.fromkeys(g.node_texts))
    edge_texts = list(dict.fromkeys(g.edge_texts))
    seqs = [packer.texts(s)[:packer.max_text_len] + sp.slots for s in node_texts + edge_texts]
    width = max(map(len, seqs))
    eos = packer.chat.eos
    rows = [packer._row(rec, t) for t in rec.targets]
    dwidth = max(len(r) for r, _ in rows)
    dec = torch.full((len(rows), dwidth), eos)
    labels = torch.full((len(rows), dwidth), -100)
    for i, (r, start) in enumerate(rows):
        dec[i, :len(r)] = torch.tensor(r)
        labels[i, start:len(r)] = torch.tensor(r[start:])
    return {"ids": torch.tensor([s + [eos] * (width - len(s)) for s in seqs]), "nu": len(node_texts),
            "node_map": torch.tensor([node_texts.index(s) for s in g.node_texts]),
            "edge_map": torch.tensor([edge_texts.index(s) for s in g.edge_texts], dtype=torch.long),
            "src": torch.tensor(g.senders), "dst": torch.tensor(g.receivers),
            "targets": torch.tensor(rec.target_nodes), "dec": dec, "labels": labels,
            "tokens": sum(len(s) - sp.k for s in seqs) + sum(len(r) for r, _ in rows)}


def _embed(lm, table, ids, vocab):
    tok = lm.get_input_embeddings()(ids.clamp(max=vocab - 1))
    return torch.where((ids >= vocab)[..., None], table[(ids - vocab).clamp(min=0)], tok)


def activate(model, name, dec_lora):
    """set_adapter(name), then back to only the decoder LoRA trainable (peft's set_adapter marks
    the active set trainable; the encoder LoRA is frozen in GOFA)."""
    model.set_adapter(name)
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.requires_grad_(dec_lora and ".default." in n)


def loss_of(model, table, gnn, b, k, dec_lora):
    lm = model.base_model.model
    vocab, n_layers, n_gnn = lm.config.vocab_size, lm.config.num_hidden_layers, len(gnn)
    first, n = n_layers - n_gnn, len(b["node_map"])
    activate(model, "encadapt", dec_lora)
    ids = b["ids"]
    mem_mask = ids >= vocab
    pos = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        h = _embed(lm, table, ids, vocab)
        cos_sin = lm.model.rotary_emb(h, pos)
        for layer in lm.model.layers[:first]:
            h = layer(h, attention_mask=None, position_embeddings=cos_sin)
    nu = b["nu"]
    h = torch.cat([h[:nu][b["node_map"]], h[nu:]])
    mem_mask = torch.cat([mem_mask[:nu][b["node_map"]], mem_mask[nu:]])
    node_mem = mem_mask.clone()
    node_mem[n:] = False
    for g, layer in enumerate(lm.model.layers[first:]):
        mem = h[mem_mask].view(-1, k, h.shape[-1])
        x2 = gnn[g](mem[:n], mem[n:][b["edge_map"]], b["src"], b["dst"])
        h = h.masked_scatter(node_mem[..., None], x2)
        # (a causal-only mask, as GOFA: the model's default when none is given)
        h = layer(h, attention_mask=None, position_embeddings=cos_sin)
    out = lm.model.norm(h)
    emb = out[:n][mem_mask[:n]].view(n, k, -1)[b["targets"]]
    if dec_lora:
        activate(model, "default", dec_lora)
    x = _embed(lm, table, b["dec"], vocab)
    slot = (b["dec"] >= vocab) & (b["dec"] < vocab + k)
    x = x.masked_scatter(slot[..., None], emb.reshape(-1, emb.shape[-1]))
    if dec_lora:
        logits = lm(inputs_embeds=x).logits
    else:
        with model.disable_adapter():
            logits = lm(inputs_embeds=x).logits
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), b["labels"][:, 1:].reshape(-1))


def torch_gofa_steps(records, packer, k, n_gnn, threads, dec_lora=False, warmup=1) -> dict:
    """Warm up, then one step per record: median seconds per step, tokens/s."""
    torch.set_num_threads(threads)
    model, table, gnn, trainable = build(k, n_gnn, dec_lora)
    model.train()
    opt = torch.optim.AdamW(trainable, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    bs = [repack(r, packer) for r in records]

    def step(b):
        loss = loss_of(model, table, gnn, b, k, dec_lora)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())
    for i in range(warmup):
        step(bs[i % len(bs)])
    times = []
    for b in bs:
        t0 = time.perf_counter()
        step(b)
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    return {"s_per_step": s, "tokens_per_s": float(np.mean([b["tokens"] for b in bs])) / s,
            "total_s": sum(times), "total_tokens": sum(b["tokens"] for b in bs)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    from gmem import config as gconfig
    from gmem.systems.gofa import GOFASystem
    cfg = gconfig.to_object(gconfig.load_config(os.path.join(root, "configs", "gofa_pretrain.yaml"),
                                                ["system.compressor_ckpt=''"]))
    s = GOFASystem(cfg)
    recs = [r for i in range(a.steps) for r in s.records(i)]
    print(torch_gofa_steps(recs, s.packer, s.special.k, len(s.gnn_layers), a.threads))


if __name__ == "__main__":
    main()
