"""GMT as specs/gofa-gmt.md part B describes it, in torch with Python loops over edges: an
independent construction for gmem's GMT tests (imported as `gmt_reference`; this folder is on
sys.path). Module and parameter names are the original's, so `state_dict()` has the keys of the
original's graph_encoder.pth / memory_attn.pth. Nothing here is gmem code.

  RefKGIndex       adj[e] = [(relation, neighbour), ...] as KGIndex builds it (B3)
  RefSGM           _collect_edges (mask_query, B6), _encode_edges (top-k by cosine, B5),
                   RelationContextLayer x n (torch MultiheadAttention over one key)
  RefEncoder       sgm -> tokenizer (memory queries, MHA with key padding) -> proj (B7)
  memory_forward   a transformers LLaMA with the memory block after self-attention in chosen
                   layers (B8): x + g * o(Attn(q(RMSNorm(x)), k(mem), v(mem))), LoRA on q/k/v/o
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RefKGIndex:
    def __init__(self, num_entities, num_relations, triples, add_inverse=False):
        self.base_num_relations, self.add_inverse = num_relations, add_inverse
        self.adj = [[] for _ in range(num_entities)]
        for h, r, t in triples:
            self.adj[h].append((r, t))
            self.adj[t].append((r + num_relations if add_inverse else r, h))


class RefContextLayer(nn.Module):
    def __init__(self, dim, heads, dropout):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.linear1, self.linear2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, s, c):                       # [E, D] each: one query, one key per edge
        a, _ = self.attn(s[:, None], c[:, None], c[:, None], need_weights=False)
        s = self.norm1(s + self.dropout(a[:, 0]))
        return self.norm2(s + self.dropout(self.linear2(self.dropout(F.gelu(self.linear1(s))))))


class RefSGM(nn.Module):
    def __init__(self, index, rel_dim, graph_dim, layers, heads, top_k, dropout=0.0):
        super().__init__()
        n_rel = index.base_num_relations * (2 if index.add_inverse else 1)
        self.index, self.top_k, self.graph_dim = index, top_k, graph_dim
        self.rel_semantic = nn.Embedding(n_rel, rel_dim)
        self.rel_proj = nn.Linear(rel_dim, graph_dim) if rel_dim != graph_dim else None
        self.layers = nn.ModuleList([RefContextLayer(graph_dim, heads, dropout) for _ in range(layers)])

    def rel_vec(self, ids):
        v = self.rel_semantic(torch.as_tensor(ids, dtype=torch.long))
        return self.rel_proj(v) if self.rel_proj is not None else v

    def collect_edges(self, h, r, t, mask_query):
        edges = list(self.index.adj[h]) + list(self.index.adj[t])
        if not mask_query:
            return edges
        R = self.index.base_num_relations
        rset = {r % R, r % R + R} if self.index.add_inverse else {r}
        return [(re, n) for re, n in edges if not (n in (h, t) and re in rset)]

    def encode_edges(self, edges):
        if not edges:
            return torch.zeros(0, self.graph_dim)
        u = self.rel_vec([re for re, _ in edges])
        ctx = []
        for i, (_, n) in enumerate(edges):
            nbr = self.index.adj[n]
            if not nbr:
                ctx.append(torch.zeros(self.graph_dim))
                continue
            vecs = self.rel_vec([x for x, _ in nbr])
            sims = F.normalize(vecs, dim=-1) @ F.normalize(u[i], dim=-1)
            ctx.append(vecs[torch.topk(sims, min(self.top_k, len(nbr))).indices].mean(0))
        s, c = u, torch.stack(ctx)
        for layer in self.layers:
            s = layer(s, c)
        return s

    def forward(self, triples, mask_query):
        states = [self.encode_edges(self.collect_edges(h, r, t, mask_query)) for h, r, t in triples]
        e = max(1, max(len(s) for s in states))
        out, mask = torch.zeros(len(states), e, self.graph_dim), torch.zeros(len(states), e, dtype=torch.bool)
        for i, s in enumerate(states):
            out[i, :len(s)], mask[i, :len(s)] = s, True
        return out, mask

    def encode_entity(self, ids):
        out = []
        for e in ids:
            s = self.encode_edges(self.index.adj[e])
            out.append(s.mean(0) if len(s) else torch.zeros(self.graph_dim))
        return torch.stack(out)


class RefTokenizer(nn.Module):
    def __init__(self, m, dim, heads):
        super().__init__()
        self.memory_queries = nn.Parameter(torch.randn(m, dim) * 0.02)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, s, mask):
        if not mask.any():
            return s.new_zeros(s.shape[0], self.memory_queries.shape[0], s.shape[-1])
        q = self.memory_queries[None].expand(s.shape[0], -1, -1)
        mem, _ = self.attn(q, s, s, key_padding_mask=~mask)
        return mem.masked_fill(~mask.any(-1)[:, None, None], 0.0)


class RefEncoder(nn.Module):
    def __init__(self, index, rel_dim, graph_dim, layers, heads, top_k, m, mem_heads, llm_dim):
        super().__init__()
        self.sgm = RefSGM(index, rel_dim, graph_dim, layers, heads, top_k)
        self.tokenizer = RefTokenizer(m, graph_dim, mem_heads)
        self.proj = nn.Linear(graph_dim, llm_dim)

    def forward(self, triples, mask_query):
        return self.proj(self.tokenizer(*self.sgm(triples, mask_query)))


def perturb(module, scale=0.1, seed=0):
    """Non-trivial values everywhere (norm scales, biases) so no term hides behind an init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module


# ---- the memory-augmented LLaMA (B8) ----------------------------------------------------------

class RefLoRALinear(nn.Module):
    def __init__(self, d_in, d_out, r, alpha):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) * d_in ** -0.5)
        self.lora_A = nn.Linear(d_in, r, bias=False)
        self.lora_B = nn.Linear(r, d_out, bias=False)
        self.scaling = alpha / r

    def forward(self, x):
        return F.linear(x, self.weight) + self.lora_B(self.lora_A(x)) * self.scaling


class RefMemoryBlock(nn.Module):
    """memory_layernorm, memory_attn.{q,k,v,o}_proj (LoRALinear), memory_gate [1]."""

    def __init__(self, hidden, heads, r, alpha, eps):
        super().__init__()
        self.heads = heads
        self.memory_layernorm = _RMSNorm(hidden, eps)
        self.memory_attn = nn.Module()
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self.memory_attn, n, RefLoRALinear(hidden, hidden, r, alpha))
        self.memory_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x, mem):
        a, (b, t, d), m = self.memory_attn, x.shape, mem.shape[1]
        hd = d // self.heads
        xn = self.memory_layernorm(x)
        q = a.q_proj(xn).view(b, t, self.heads, hd).transpose(1, 2)
        k = a.k_proj(mem).view(b, m, self.heads, hd).transpose(1, 2)
        v = a.v_proj(mem).view(b, m, self.heads, hd).transpose(1, 2)
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1)
        return x + self.memory_gate * a.o_proj((w @ v).transpose(1, 2).reshape(b, t, d))


class _RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def memory_blocks(hf_config, layers, r, alpha):
    """{layer index: RefMemoryBlock}; their state dict keys as the original's memory_attn.pth."""
    return nn.ModuleDict({str(i): RefMemoryBlock(hf_config.hidden_size, hf_config.num_attention_heads, r, alpha,
                                                 hf_config.rms_norm_eps) for i in layers})


def memory_state_dict(blocks) -> dict:
    return {f"model.layers.{i}.{k}": v for i, blk in blocks.items() for k, v in blk.state_dict().items()}


@torch.no_grad()
def memory_forward(hf_model, blocks, input_ids, attention_mask, memory):
    """Logits [B, T, V] of a transformers LlamaForCausalLM (eager attention) with the memory
    blocks after self-attention. Position ids count real tokens (gmem's; equal to arange(T)
    for rows without left padding)."""
    m = hf_model.model
    x = m.embed_tokens(input_ids)
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    pe = m.rotary_emb(x, pos)
    t = input_ids.shape[1]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))[None, None] & attention_mask.bool()[:, None, None, :]
    add = torch.zeros(causal.shape).masked_fill(~causal, torch.finfo(torch.float32).min)
    for i, layer in enumerate(m.layers):
        h = x + layer.self_attn(layer.input_layernorm(x), position_embeddings=pe, attention_mask=add)[0]
        if str(i) in blocks:
            h = blocks[str(i)](h, memory)
        x = h + layer.mlp(layer.post_attention_layernorm(h))
    return hf_model.lm_head(m.norm(x))
