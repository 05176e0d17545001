"""Shared pieces of the GOFA model tests: a tiny random LLaMA in transformers with two named PEFT
LoRA sets (encadapt, default), its gmem twin, a hand-made graph, and the PyTorch reference of
GOFA's forward written from spec A4-A6 (GOFA's own layout: right padding, no padding mask,
positions 0..L-1, node rows expanded before the first GNN layer) with a torch GNN from A5
(PyG's segment softmax, index_add_ for the sum over in-edges)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import peft
import torch
import transformers
from torch_geometric.utils import softmax as pyg_softmax

from gmem.adapters import AdapterSpec
from gmem.graph.text_buckets import TextGraphBuckets
from gmem.graph.text_graph import TextGraph
from gmem.hf.keymap import apply_transform, hf_to_gmem
from gmem.hf.keymaps.llama import RULES
from gmem.models.family import causal_lm
from gmem.models.llama import LlamaConfig
from gmem.systems.gofa import model as M
from gmem.systems.gofa.batch import Packer
from gmem.systems.gofa.layout import ChatLayout, SpecialIds, TextCache
from gmem.systems.gofa.record import GraphRecord, Target
from gmem.tree import unflatten

V, D, LAYERS, K, N_GNN = 64, 32, 4, 3, 2
EPS = 1e-6
PAD, BOS, EOS = 0, 1, 2
ENC = AdapterSpec(targets=("q_proj", "v_proj"), rank=4, alpha=8.0, name="encadapt")
DEC = AdapterSpec(targets=("q_proj", "v_proj"), rank=2, alpha=2.0, name="default")
CHAT = ChatLayout(prefix=(BOS, 5), suffix=(6, 7), eos=EOS)


class IdTokenizer:
    """Texts are space-separated token ids (so the test controls every id)."""

    eos_token_id, bos_token_id, pad_token_id = EOS, BOS, PAD

    def encode(self, text, add_special_tokens=False):
        return [int(x) for x in text.split()]

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def hf_model(seed=0):
    """A transformers LLaMA with PEFT adapters `default` and `encadapt`, every weight random."""
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=48, num_hidden_layers=LAYERS,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=EPS,
                                   attn_implementation="eager", initializer_range=0.1)
    torch.manual_seed(seed)
    base = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in base.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    model = peft.get_peft_model(base, peft.LoraConfig(r=DEC.rank, lora_alpha=DEC.alpha,
                                                      target_modules=["q_proj", "v_proj"]), adapter_name="default")
    model.add_adapter("encadapt", peft.LoraConfig(r=ENC.rank, lora_alpha=ENC.alpha, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.3)
    return cfg, model


def gmem_twin(cfg, model):
    """(module with GNN hooks, base params, {"encadapt": tree, "default": tree}) from the HF model."""
    flat, lora = {}, {"encadapt": {}, "default": {}}
    for k, v in model.state_dict().items():
        v = v.float().numpy()
        if "lora_" in k:
            # base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
            module, ab, name, _ = k.replace("base_model.model.", "").rsplit(".", 3)
            path = re.sub(r"layers\.(\d+)", r"layers_\1", module).replace(".", "/")
            lora[name][f"{path}/{ab}"] = jnp.asarray(v.T)
            continue
        hit = hf_to_gmem(k.replace("base_model.model.", "").replace(".base_layer", ""), RULES)
        if hit is not None:
            flat[hit[0]] = jnp.asarray(apply_transform(v, hit[1]))
    config = LlamaConfig.from_hf(cfg)
    layers = M.gnn_layers(LAYERS, N_GNN)
    module = causal_lm(config, M.gnn_hooks(layers, K, EPS))
    return module, unflatten(flat), {n: unflatten(t) for n, t in lora.items()}


def random_gnn(seed=1, gate=(0.6, -0.9), scale=0.3):
    """GNN params of the last N_GNN layers, every leaf random (gates non-zero unless gate=None)."""
    layers = M.gnn_layers(LAYERS, N_GNN)
    params, _ = M.init_gnn(layers, D, K, jax.random.PRNGKey(0), EPS)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "gate" in name:
            return jnp.zeros(leaf.shape) if gate is None else jnp.full(leaf.shape, gate[0] if "attn" in name else gate[1])
        if "scale" in name:
            return jnp.asarray(1 + 0.1 * rng.standard_normal(leaf.shape), jnp.float32)
        return jnp.asarray((scale if "kernel" in name else 0.1) * rng.standard_normal(leaf.shape), jnp.float32)
    return jax.tree_util.tree_map_with_path(draw, params)


def record():
    """4 nodes on 3 unique texts (nodes 0 and 3 share one), 2 unique edge texts on 5 edges (a
    multi-edge 3 -> 1), node 2 without in-edges; targets: node 1 with a question, node 3 to
    complete."""
    nodes = ["10 11 12 13 14", "15 16 17", "18 19 20 21 22 23", "10 11 12 13 14"]
    edges = [(0, 1), (1, 0), (3, 1), (3, 1), (1, 3)]
    etexts = ["30 31", "32 33 34 35", "30 31", "32 33 34 35", "30 31"]
    g = TextGraph.build(nodes, edges, etexts)
    return GraphRecord(g, (Target(1, "40 41 42", "50 51"), Target(3, "", "52 53 54")), "test")


def packer(buckets=TextGraphBuckets(nodes=(8,), edges=(8,), texts=(4,), targets=(4,)), text_len=(8,), dec_len=(32,)):
    tok = IdTokenizer()
    return Packer(TextCache(tok, True), TextCache(tok, False), CHAT, SpecialIds(V, K), buckets, tuple(text_len),
                  tuple(dec_len), 16, 16, 16, PAD)


# ---- the PyTorch reference ------------------------------------------------------------------

def torch_gnn(p, x, xe, senders, receivers):
    """A5 with torch tensors; p: a flax GOFAGNNConv tree (kernels [in, out])."""
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)
    rms = lambda h, w: t(w) * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS))
    q, k, v = (rms(x, p["x_norm"]["scale"]) @ t(p["lin_qkv"]["kernel"])).chunk(3, -1)
    ek, ev = (rms(xe, p["xe_norm"]["scale"]) @ t(p["e_proj"]["kernel"])).chunk(2, -1)
    key, val = k[senders] + ek, v[senders] + ev
    alpha = pyg_softmax(q[receivers] * key, receivers, num_nodes=x.shape[0], dim=0)
    agg = torch.zeros_like(x).index_add_(0, receivers, alpha * val)
    h = x + torch.tanh(t(p["attn_gate"])) * (agg @ t(p["o_proj"]["kernel"]))
    ff = p["ff"]
    f = rms(h, p["post_gnn_norm"]["scale"]) @ t(ff["lins_0"]["kernel"]) + t(ff["lins_0"]["bias"])
    f = torch.relu(rms(f, ff["norms_0"]["scale"])) @ t(ff["lins_1"]["kernel"]) + t(ff["lins_1"]["bias"])
    return h + torch.tanh(t(p["ff_gate"])) * f


def _embed(model, table, ids):
    tok = model.get_input_embeddings()(ids.clamp(max=V - 1))
    mem = torch.tensor(np.asarray(table))[(ids - V).clamp(min=0)]
    return torch.where((ids >= V)[..., None], mem, tok)


def torch_encode(model, table, gnn, rec: GraphRecord):
    """GOFA's encoder (A4) in GOFA's layout: memory states [N, K, D] of every node."""
    g = rec.graph
    tok = IdTokenizer()
    node_texts = list(dict.fromkeys(g.node_texts))
    edge_texts = list(dict.fromkeys(g.edge_texts))
    node_map = torch.tensor([node_texts.index(s) for s in g.node_texts])
    edge_map = torch.tensor([edge_texts.index(s) for s in g.edge_texts])
    seqs = [tok.encode(s) + list(range(V, V + K)) for s in node_texts + edge_texts]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [EOS] * (width - len(s)) for s in seqs])
    nu, n = len(node_texts), g.num_nodes
    lm = model.base_model.model
    model.set_adapter("encadapt")
    layers = M.gnn_layers(LAYERS, N_GNN)
    with torch.no_grad():
        h = _embed(lm, table, ids)
        pos = torch.arange(width)[None]   # one row: broadcasts over any number of rows
        cos_sin = lm.model.rotary_emb(h, pos)
        causal = torch.full((width, width), torch.finfo(torch.float32).min).triu(1)[None, None]
        mem_mask = ids >= V
        snd, rcv = torch.tensor(g.senders), torch.tensor(g.receivers)
        for i, layer in enumerate(lm.model.layers):
            if i in layers:
                if i == layers[0]:
                    h = torch.cat([h[:nu][node_map], h[nu:]])
                    mem_mask = torch.cat([mem_mask[:nu][node_map], mem_mask[nu:]])
                mem = h[mem_mask].view(-1, K, D)
                x2 = torch_gnn(gnn[f"layers_{i}"], mem[:n], mem[n:][edge_map], snd, rcv)
                h = h.clone()
                node_rows = h[:n]
                node_rows[mem_mask[:n]] = x2.reshape(-1, D)
                h[:n] = node_rows
            h = layer(h, attention_mask=causal.expand(h.shape[0], 1, -1, -1), position_embeddings=cos_sin)
        out = lm.model.norm(h)
    return out[:n][mem_mask[:n]].view(n, K, D)


def torch_decode(model, table, mem_nodes, rec: GraphRecord):
    """GOFA's decoder (A6) with the `default` adapter: logits [Q, L, V] of the right-padded
    rows (no attention mask, as GOFA) and the rows' lengths."""
    tok = IdTokenizer()
    rows = []
    for tg in rec.targets:
        q, a = tok.encode(tg.decoder_prompt), tok.encode(tg.answer) + [EOS]
        slots = list(range(V, V + K))
        rows.append(list(CHAT.prefix) + slots + [V + K + 2] + q + list(CHAT.suffix) + a if q else slots + a)
    width = max(map(len, rows))
    ids = torch.tensor([r + [EOS] * (width - len(r)) for r in rows])
    lm = model.base_model.model
    model.set_adapter("default")
    with torch.no_grad():
        x = _embed(lm, table, ids)
        for r, tg in enumerate(rec.targets):
            cols = [c for c in range(width) if V <= int(ids[r, c]) < V + K]
            x[r, cols] = mem_nodes[tg.node]
        logits = lm(inputs_embeds=x).logits
    return logits.numpy(), [len(r) for r in rows]
