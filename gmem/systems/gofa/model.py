"""GOFA's model on one frozen LLaMA-family decoder (spec A4-A7): compressor, graph language
encoder, decoder. Pure functions over the decoder module and its variables.

One base serves three passes, told apart by the adapter set passed with the call:
  compress      texts -> memory states [S, K, D]: encoder LoRA `encadapt` on; the final-layer
                (post-final-norm) states at the K memory slots (ICAE).
  graph_encode  the same, with a GNN layer (GraphMemoryBlock, a DecoderHook where="pre",
                input "graph") before each of the last n decoder layers. Edge texts and node
                texts run as two slabs, each as wide as its own longest text (edge texts are
                short): edge rows never change in the GNN and no trainable parameter acts on
                them (the encoder is frozen in GOFA), so the edge slab runs alone under
                stop_gradient, and its memory states at the input of each GNN layer are kept.
                Node texts run layers 0..first-1 once per unique text under stop_gradient,
                node rows are then gathered (node_map), and layers first..L-1 run on them with
                the GNN rewriting their memory columns from the kept edge states. Gates start
                at 0, so this is the compressor exactly.
  decode        memory states as soft input embeddings at the slot columns of decoder rows
                (gofa.layout), decoder LoRA `default` on (or no adapter): logits, loss,
                generation with the KV cache (prefill from input embeddings).

Memory slots sit in the last K columns of every encoder row, so "the memory columns" are a
static slice of any row. The memory table [K + 3, D] embeds ids >= V (gofa.layout.SpecialIds).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gmem.graph.gofa_gnn import GOFAGNNConv
from gmem.models.common import to_dtype
from gmem.models.generate import generate
from gmem.models.hooks import DecoderHook
from gmem.systems.gofa.layout import SpecialIds
from gmem.train.sharding import own_gathers

GNN_NAME = "gnn"      # the hook's scope inside a decoder layer: model/layers_i/gnn/conv/...


class GraphMemoryBlock(nn.Module):
    """(x_RLD, graph) -> x_RLD: the node rows of B graphs (R = B*N, graph-major) whose last k
    columns are memory slots. graph: edge_states [n, B*U, k, D] (edge-text memory at the input
    of GNN layer 0..n-1; this block is layer `index`); per graph, indices local to it:
    senders, receivers, edge_map (edge -> its graph's edge-text row) [B, E], node_mask [B, N],
    edge_mask [B, E]. Only x[:, -k:] changes.

    The layer runs vmapped over the B graphs, with the graph axis on the batch's mesh axes and
    every inner axis unsharded: a graph's nodes and edges stay on the device that holds its
    rows (run on the flat disjoint union, XLA's partitioner replicates the gathers, and with
    them the [E, k, D] scores, on every device)."""

    k: int
    index: int
    eps: float = 1e-6
    mlp_ratio: int = 2

    @nn.compact
    def __call__(self, x_RLD: jax.Array, graph: dict) -> jax.Array:
        b = graph["senders"].shape[0]
        col, d = x_RLD.shape[1] - self.k, x_RLD.shape[2]
        mem = x_RLD[:, col:].reshape(b, -1, self.k, d)
        xe = graph["edge_states"][self.index].reshape(b, -1, self.k, d)
        batch = nn.logical_to_mesh_axes(("batch",))[0]
        conv = nn.vmap(GOFAGNNConv, variable_axes={"params": None}, split_rngs={"params": False},
                       spmd_axis_name=batch)(self.eps, self.mlp_ratio, name="conv")
        with nn.logical_axis_rules([(a, None) for a in ("nodes", "edges", "memory", "embed", "heads", "mlp")]):
            new = conv(mem, xe, graph["senders"], graph["receivers"], graph["node_mask"], graph["edge_mask"],
                       graph["edge_map"])
        return x_RLD.at[:, col:].set(new.reshape(-1, self.k, d).astype(x_RLD.dtype))


def gnn_layers(num_hidden_layers: int, n: int) -> tuple[int, ...]:
    """The last n decoder layers (GOFA on Mistral-7B: 26..31)."""
    return tuple(range(num_hidden_layers - n, num_hidden_layers))


def gnn_hooks(layers, k: int, eps: float) -> tuple[DecoderHook, ...]:
    """One hook per GNN layer (each reads its own edge states), params at
    model/layers_i/gnn/conv."""
    return tuple(DecoderHook(block=functools.partial(GraphMemoryBlock, k=k, index=g, eps=eps), layers=(i,),
                             where="pre", input="graph", name=GNN_NAME) for g, i in enumerate(layers))


def init_gnn(layers, d: int, k: int, key: jax.Array, eps: float) -> tuple[dict, dict]:
    """(params {"layers_i": GOFAGNNConv tree}, logical PartitionSpecs of the same tree):
    kernels normal(0.02), biases 0, norms 1, gates 0 (spec A5)."""
    conv = GOFAGNNConv(eps)
    x, ei = jnp.zeros((2, k, d)), jnp.zeros((1,), jnp.int32)
    params, specs = {}, {}
    for j, i in enumerate(layers):
        boxed = conv.init(jax.random.fold_in(key, j), x, x[:1], ei, ei)["params"]
        params[f"layers_{i}"] = nn.unbox(boxed)
        specs[f"layers_{i}"] = nn.get_partition_spec(boxed)
    return params, specs


def gnn_specs(layers, d: int, k: int) -> dict:
    """Logical PartitionSpecs of init_gnn's tree, from abstract shapes (allocates nothing)."""
    x, ei = jax.ShapeDtypeStruct((2, k, d), jnp.float32), jax.ShapeDtypeStruct((1,), jnp.int32)
    boxed = jax.eval_shape(lambda: GOFAGNNConv().init(jax.random.PRNGKey(0), jnp.zeros(x.shape), jnp.zeros((1, k, d)),
                                                      jnp.zeros(ei.shape, jnp.int32), jnp.zeros(ei.shape, jnp.int32)))
    spec = nn.get_partition_spec(boxed["params"])
    return {f"layers_{i}": spec for i in layers}


def with_gnn(llm: dict, gnn: dict) -> dict:
    """The LLM tree with each GNN layer at model/layers_i/gnn/conv (a new tree; llm unchanged)."""
    layers = dict(llm["model"])
    for name, p in gnn.items():
        layers[name] = dict(layers[name], **{GNN_NAME: {"conv": p}})
    return dict(llm, model=layers)


def embed_ids(embedding_VD: jax.Array, table_RD: jax.Array, ids: jax.Array, dtype) -> jax.Array:
    """Embeddings of extended ids [...] -> [..., D]: ids < V from the LLM's table, ids >= V from
    the memory table (row id - V)."""
    v = embedding_VD.shape[0]
    tok = jnp.take(embedding_VD, jnp.clip(ids, 0, v - 1), axis=0).astype(dtype)
    mem = jnp.take(table_RD, jnp.clip(ids - v, 0, table_RD.shape[0] - 1), axis=0).astype(dtype)
    return jnp.where((ids >= v)[..., None], mem, tok)


def encoder_inputs(text_ids_SL: jax.Array, text_len_S: jax.Array, special: SpecialIds):
    """(ids [S, L+K], position ids [S, L+K], key mask [S, L+K]) of the encoder slab (A15)."""
    s, lt = text_ids_SL.shape
    k = special.k
    slots = jnp.broadcast_to(jnp.asarray(special.slots, jnp.int32), (s, k))
    ids = jnp.concatenate([text_ids_SL.astype(jnp.int32), slots], axis=1)
    col = jnp.arange(lt + k)[None]
    n = text_len_S[:, None].astype(jnp.int32)
    pos = jnp.where(col < lt, col, n + col - lt)
    mask = ((col < n) | (col >= lt)).astype(jnp.int32)
    return ids, pos.astype(jnp.int32), mask


def _tail_states(m, x, pos, mask, k):
    h, _ = m.model(None, mask, pos, inputs_embeds_BLD=x, keep=k)
    return h


def compress(module, variables, table_RD, text_ids_SL, text_len_S, special: SpecialIds, dtype, rngs=None):
    """Memory states [S, K, D] (post-final-norm) of S texts; `variables` carry the encoder
    adapter set; rngs: {"dropout": key} for adapter dropout (training)."""
    ids, pos, mask = encoder_inputs(text_ids_SL, text_len_S, special)
    x = embed_ids(_embedding(variables), table_RD, ids, dtype)
    return module.apply(variables, x, pos, mask, special.k, method=_tail_states, rngs=rngs or {})


def _edge_states(m, x, pos, mask, layers, k):
    """Edge-text memory states [n, U, k, D] at the input of each GNN layer (layers: theirs)."""
    h = m.model.run_layers(x, pos, mask, 0, layers[0])
    states = [h[:, h.shape[1] - k:]]
    for a, b in zip(layers[:-1], layers[1:]):
        h = m.model.run_layers(h, pos, mask, a, b)
        states.append(h[:, h.shape[1] - k:])
    return jnp.stack(states)


def _node_layers(m, x, pos, mask, node_map, first, graph, k):
    h = m.model.run_layers(x, pos, mask, 0, first)
    # partial_grad (A14.7): nothing below the first GNN layer is trained or differentiated.
    h = jax.lax.stop_gradient(h)
    h, pos, mask = h[node_map], pos[node_map], mask[node_map]
    h = m.model.run_layers(h, pos, mask, first, m.config.num_hidden_layers, {"graph": graph})
    return m.model.norm(h[:, h.shape[1] - k:])


def flat_graph(batch: dict) -> dict:
    """The texts and node rows of a batch of B padded graphs, flat. batch: node_text_ids
    [B, Nu, Ln], node_text_len [B, Nu], edge_text_ids [B, U, Le], edge_text_len [B, U],
    node_map / node_mask [B, N], senders / receivers / edge_map / edge_mask [B, E], targets [B, Q].
    -> node_text_ids [B*Nu, Ln], node_text_len, edge_text_ids [B*U, Le], edge_text_len,
    node_map [B*N] (-> flat node text rows), graph (GraphMemoryBlock's input without
    edge_states: per-graph arrays), targets [B*Q] (flat node rows)."""
    b, nu = batch["node_text_len"].shape
    n = batch["node_map"].shape[1]
    off = jnp.arange(b)[:, None]
    flat = lambda a: a.reshape((-1,) + a.shape[2:])
    graph = {"senders": batch["senders"], "receivers": batch["receivers"], "edge_map": batch["edge_map"],
             "node_mask": batch["node_mask"].astype(bool), "edge_mask": batch["edge_mask"].astype(bool)}
    return {"node_text_ids": flat(batch["node_text_ids"]), "node_text_len": flat(batch["node_text_len"]),
            "edge_text_ids": flat(batch["edge_text_ids"]), "edge_text_len": flat(batch["edge_text_len"]),
            "node_map": flat(batch["node_map"] + off * nu), "graph": graph,
            "targets": flat(batch["targets"] + off * n)}


def graph_encode(module, variables, table_RD, batch: dict, special: SpecialIds, layers, dtype,
                 gnn: bool = True, rngs=None):
    """Memory states [B*N, K, D] of every node row after the graph language encoder (A4).
    `module` carries the GNN hooks in `layers` (their params in variables).
    gnn=False: the same computation with the hooks left out (the compressor on the node rows)."""
    f = flat_graph(batch)
    emb = _embedding(variables)
    rngs = rngs or {}
    graph = None
    if gnn:
        ids, pos, mask = encoder_inputs(f["edge_text_ids"], f["edge_text_len"], special)
        x = embed_ids(emb, table_RD, ids, dtype)
        states = module.apply(variables, x, pos, mask, tuple(layers), special.k, method=_edge_states, rngs=rngs)
        graph = dict(f["graph"], edge_states=jax.lax.stop_gradient(states))
    ids, pos, mask = encoder_inputs(f["node_text_ids"], f["node_text_len"], special)
    x = embed_ids(emb, table_RD, ids, dtype)
    if graph is not None:
        # The node texts re-read the base the edge texts just read: their own gathers.
        variables, graph = own_gathers(variables, graph)
    return module.apply(variables, x, pos, mask, f["node_map"], layers[0], graph, special.k,
                        method=_node_layers, rngs=rngs)


def _embedding(variables) -> jax.Array:
    return variables["params"]["model"]["embed_tokens"]["embedding"]


def decoder_embeds(embedding_VD, table_RD, dec_ids_RL, mem_RKD, special: SpecialIds, dtype):
    """Input embeddings [R, L, D] of decoder rows: slot ids take row r's memory state t."""
    x = embed_ids(embedding_VD, table_RD, dec_ids_RL, dtype)
    t = dec_ids_RL - special.vocab
    slot = (t >= 0) & (t < special.k)
    m = jnp.take_along_axis(mem_RKD.astype(dtype), jnp.clip(t, 0, special.k - 1)[:, :, None], axis=1)
    return jnp.where(slot[..., None], m, x)


def decoder_loss(module, variables, table_RD, mem_RKD, dec: dict, special: SpecialIds, dtype, rngs=None):
    """(sum of answer-token cross-entropies, number of answer tokens, correct argmax count);
    dec: dec_ids, dec_mask, dec_target [R, L] (gofa.layout.pad_decoder_rows)."""
    ids = dec["dec_ids"]
    x = decoder_embeds(_embedding(variables), table_RD, ids, mem_RKD, special, dtype)
    logits, _ = module.apply(variables, None, dec["dec_mask"], inputs_embeds_BLD=x, rngs=rngs or {})
    logits, tgt = logits[:, :-1], ids[:, 1:]
    w = dec["dec_target"][:, 1:].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.clip(tgt, 0, logits.shape[-1] - 1))
    hit = (jnp.argmax(logits, -1) == tgt).astype(jnp.float32)
    return (ce * w).sum(), w.sum(), (hit * w).sum()


def generate_from_memory(module, variables, table_RD, mem_RKD, prompt_ids, prompt_mask, special: SpecialIds,
                         dtype, *, max_new_tokens: int, eos_token_id, pad_token_id: int,
                         temperature: float = 0.0, top_k: int = 0, rng=None):
    """Greedy or sampled answers (gmem.models.generate.GenerateOutput) from left-padded prompt
    rows (gofa.layout.prompt_rows) whose slots take mem_RKD: the prompt pass reads input
    embeddings, decoding then feeds the generated token ids through the KV cache."""
    x = decoder_embeds(_embedding(variables), table_RD, jnp.asarray(prompt_ids), mem_RKD, special, dtype)
    ids = jnp.where(jnp.asarray(prompt_ids) < special.vocab, jnp.asarray(prompt_ids), pad_token_id)
    return generate(module, variables, ids, prompt_mask, max_new_tokens=max_new_tokens,
                    eos_token_id=eos_token_id, pad_token_id=pad_token_id, temperature=temperature,
                    top_k=top_k, rng=rng, prefill_kwargs={"inputs_embeds_BLD": x})


def compute_dtype(config):
    return to_dtype(config.dtype)
