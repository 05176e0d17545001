"""GMT's graph side (specs/gofa-gmt.md B5-B7, B9), vectorised: the edges of each query as dense
[B, E] arrays gathered on the host from the padded adjacency (`query_edges`), the SGM
(gmem.graph.layers) over those flat edges, the memory tokenizer, the projection to the LLM
width, a cached edge-state table for a frozen SGM (spec B14) and the stage-1 loss over unique
(relation, neighbour) pairs. This is the one path: the systems, the tests, the README and the
notebook all use it.

Why no per-query jraph batch: the train loop needs static batch shapes, and an edge's state
depends only on its (relation, neighbour) pair, so a [R_edge, N, D] table (frozen SGM) or the
SGM over the B*E gathered edges (trainable SGM) replaces per-query graphs. The parameter tree
is the reference GraphMemoryEncoder's ({sgm, tokenizer, proj}), so original checkpoints load.

mask_query (B6) removes the query fact from the collected edges: every edge between h and t
whose relation is the query's (or its inverse's, with add_inverse). As in the reference, the
neighbours' top-k contexts are computed from the full adjacency.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import chex
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from gmem.graph.kg import NeighbourIndex
from gmem.graph.layers import SemanticGraphConfig, SemanticGraphModule
from gmem.nn.projection import Projection


@dataclasses.dataclass(frozen=True)
class GraphMemoryConfig(SemanticGraphConfig):
    """The SGM's hyper-parameters plus the memory's: num_memory_tokens M queries of memory_heads
    heads, llm_dim the LLM width; memory_norm RMS-normalises each memory token after the
    projection (no parameters; not in the reference; see `normalize_memory`)."""

    num_memory_tokens: int = 16
    memory_heads: int = 4
    llm_dim: int = 4096
    memory_norm: bool = False


def query_edges(index: NeighbourIndex, triples: np.ndarray, mask_query: bool, num_edges: int | None = None,
                padded=None) -> dict:
    """Edges of adj[h] ++ adj[t] per query (GMT `_collect_edges`: head's edges first, each in
    the index's append order), masked as B6 when mask_query.

    triples int [B, 3] (h, r, t). Returns {edge_rel int32 [B, E], edge_nbr int32 [B, E],
    edge_mask bool [B, E]}, real edges first. E = num_edges (default: the largest query's edge
    count); a query with more than E edges keeps its first E."""
    rel_N, nbr_N, m_N = padded if padded is not None else index.padded()
    t = np.asarray(triples, np.int64).reshape(-1, 3)
    if num_edges is None:
        num_edges = max_query_edges(index, t)
    h, r, tl = t[:, 0], t[:, 1], t[:, 2]
    rel = np.concatenate([rel_N[h], rel_N[tl]], 1)
    nbr = np.concatenate([nbr_N[h], nbr_N[tl]], 1)
    m = np.concatenate([m_N[h], m_N[tl]], 1)
    if mask_query:
        R = index.num_relations
        base = r % R if index.add_inverse else r
        inq = (rel == base[:, None]) | ((rel == base[:, None] + R) if index.add_inverse else False)
        m = m & ~(((nbr == h[:, None]) | (nbr == tl[:, None])) & inq)
    order = np.argsort(~m, axis=1, kind="stable")      # real edges first, order kept
    rel, nbr, m = (np.take_along_axis(a, order, 1)[:, :num_edges] for a in (rel, nbr, m))
    if rel.shape[1] < num_edges:
        pad = num_edges - rel.shape[1]
        rel, nbr = (np.pad(a, ((0, 0), (0, pad))) for a in (rel, nbr))
        m = np.pad(m, ((0, 0), (0, pad)))
    return {"edge_rel": rel.astype(np.int32), "edge_nbr": nbr.astype(np.int32), "edge_mask": m}


def max_query_edges(index: NeighbourIndex, triples: np.ndarray) -> int:
    deg = index.degree
    t = np.asarray(triples).reshape(-1, 3)
    return int((deg[t[:, 0]] + deg[t[:, 2]]).max(initial=1))


def flat_graph(hist_NR, rel_E, nbr_E) -> jraph.GraphsTuple:
    """A GraphsTuple view of flat edges for SemanticGraphModule (it reads edges.relation,
    nodes.rel_hist and senders only)."""
    e = rel_E.shape[0]
    return jraph.GraphsTuple(nodes={"rel_hist": hist_NR}, edges={"relation": rel_E},
                             senders=nbr_E, receivers=jnp.zeros((e,), jnp.int32),
                             n_node=jnp.asarray([hist_NR.shape[0]]), n_edge=jnp.asarray([e]), globals=None)


def sgm_states(cfg: GraphMemoryConfig, sgm_params, hist_NR, rel, nbr, deterministic=True, rng=None):
    """Edge states [..., D] for edges given by (rel, nbr) of any shape."""
    shape = rel.shape
    g = flat_graph(hist_NR, rel.reshape(-1), nbr.reshape(-1))
    rngs = {"dropout": rng} if (rng is not None and not deterministic) else {}
    s = SemanticGraphModule(cfg).apply({"params": sgm_params}, g, deterministic, rngs=rngs)
    return s.reshape(shape + (s.shape[-1],))


def edge_table(cfg: GraphMemoryConfig, sgm_params, hist_NR) -> jax.Array:
    """States of every (relation, neighbour) pair [R_edge, N, D] (frozen SGM, deterministic)."""
    r, n = cfg.num_edge_relations, hist_NR.shape[0]
    rel = jnp.repeat(jnp.arange(r, dtype=jnp.int32), n).reshape(r, n)
    nbr = jnp.tile(jnp.arange(n, dtype=jnp.int32), r).reshape(r, n)
    return jax.jit(lambda p, h: sgm_states(cfg, p, h, rel, nbr))(sgm_params, hist_NR)


class MemoryTokenizer(nn.Module):
    """GMT's GraphMemoryTokenizer: M learnable queries attend over each query's edge states
    [B, E, D] (padding masked) -> [B, M, D]; a query with no edge gives zeros (the reference's
    masked_fill after the MHA), without the NaN an all-masked softmax would give. Params:
    memory_queries [M, D] and q/k/v/out_proj (torch MultiheadAttention's in_proj split in three)."""

    config: GraphMemoryConfig

    @nn.compact
    def __call__(self, s_BED: jax.Array, mask_BE: jax.Array) -> jax.Array:
        cfg = self.config
        d, h, m = cfg.graph_dim, cfg.memory_heads, cfg.num_memory_tokens
        hd = d // h
        b, e = mask_BE.shape
        queries = self.param("memory_queries", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("memory", "embed")), (m, d))
        proj = lambda n, axes: Projection(d, axes=axes, use_bias=True, name=n)
        q = proj("q_proj", ("embed", "heads"))(queries).reshape(m, h, hd)
        k = proj("k_proj", ("embed", "heads"))(s_BED).reshape(b, e, h, hd)
        v = proj("v_proj", ("embed", "heads"))(s_BED).reshape(b, e, h, hd)
        logits = jnp.einsum("mhd,behd->bhme", q, k) * hd ** -0.5
        logits = jnp.where(mask_BE[:, None, None, :], logits, -1e30)
        w = jax.nn.softmax(logits, axis=-1) * mask_BE[:, None, None, :]
        out = jnp.einsum("bhme,behd->bmhd", w, v).reshape(b, m, d)
        out = proj("out_proj", ("heads", "embed"))(out)
        has = mask_BE.any(-1)
        return jnp.where(has[:, None, None], out, 0.0)


def normalize_memory(mem_BMD: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Each memory token divided by its root mean square (no learned scale).

    Why: the memory block adds g * o with o linear in the memory, and Adam moves the one gate
    scalar g about as far per step as each of the many projection weights, so training grows
    the memory (norm 0.53 -> 50 in 600 UMLS steps) instead of the gate. Fixing the tokens'
    scale removes that freedom; the frozen k/v projections then see inputs at the scale of
    RMS-normalised hidden states, which is what they were trained on."""
    return mem_BMD * jax.lax.rsqrt(jnp.mean(jnp.square(mem_BMD), -1, keepdims=True) + eps)


def init_encoder(cfg: GraphMemoryConfig, rng, num_entities: int, init: str = "gmem") -> dict:
    """Fresh {sgm, tokenizer, proj} params (GraphMemoryEncoder's tree), unboxed. init: "gmem"
    (normal(0.02) kernels, zero biases) or "torch" (the original's PyTorch defaults,
    `torch_default_init`)."""
    k1, k2, k3 = jax.random.split(rng, 3)
    hist = jnp.zeros((num_entities, cfg.num_edge_relations), jnp.float32)
    z = jnp.zeros((1,), jnp.int32)
    sgm = SemanticGraphModule(cfg).init(k1, flat_graph(hist, z, z))["params"]
    tok = MemoryTokenizer(cfg).init(k2, jnp.zeros((1, 1, cfg.graph_dim)), jnp.ones((1, 1), bool))["params"]
    proj = Projection(cfg.llm_dim, axes=(None, "embed"), use_bias=True).init(k3, jnp.zeros((1, cfg.graph_dim)))["params"]
    enc = nn.unbox({"sgm": sgm, "tokenizer": tok, "proj": proj})
    return torch_default_init(enc, jax.random.fold_in(rng, 1)) if init == "torch" else enc


_MHA_IN = ("q_proj", "k_proj", "v_proj")     # rows of torch's packed in_proj_weight [3D, D]


def torch_default_init(enc: dict, rng) -> dict:
    """The values PyTorch gives the original's modules at construction: nn.Linear (rel_proj,
    linear1/2, proj, each MHA's out_proj): kernel and bias U(+-1/sqrt(fan_in)) (kaiming-uniform
    with a = sqrt 5); nn.MultiheadAttention in-projection: xavier-uniform over the packed
    [3D, D] matrix, U(+-sqrt(6 / 4D)), in-projection and out_proj biases 0; LayerNorm 1 / 0.
    memory_queries (randn * 0.02) and the relation table are kept."""
    leaves = jax.tree_util.tree_flatten_with_path(enc)[0]
    keys = iter(jax.random.split(rng, len(leaves)))
    out = {}
    for path, x in leaves:
        names = [getattr(k, "key", str(k)) for k in path]
        mod, leaf = names[-2] if len(names) > 1 else "", names[-1]
        key = next(keys)
        mha = mod in _MHA_IN + ("out_proj",)         # the SGM's and the tokenizer's MultiheadAttention
        if leaf == "kernel" and mha and mod in _MHA_IN:
            bound = (6.0 / (4 * x.shape[0])) ** 0.5
        elif leaf == "kernel":
            bound = x.shape[0] ** -0.5
        elif leaf == "bias" and mha:
            bound = 0.0
        elif leaf == "bias" and mod.startswith(("linear", "rel_proj", "proj")):
            bound = _fan_in(enc, names) ** -0.5
        else:
            bound = None
        if bound is not None:
            x = jax.random.uniform(key, x.shape, x.dtype, -bound, bound) if bound else jnp.zeros_like(x)
        node = out
        for n in names[:-1]:
            node = node.setdefault(n, {})
        node[leaf] = x
    return out


def _fan_in(enc, names) -> int:
    node = enc
    for n in names[:-1]:
        node = node[n]
    return node["kernel"].shape[0]


def graph_memory(cfg: GraphMemoryConfig, enc: dict, edges: dict, hist_NR=None, table=None,
                 deterministic=True, rng=None) -> jax.Array:
    """Graph memory [B, M, llm_dim] from batch edges {edge_rel, edge_nbr, edge_mask} [B, E]:
    states from the cached table (frozen SGM) or the SGM (trainable), tokenizer, projection."""
    rel, nbr, mask = edges["edge_rel"], edges["edge_nbr"], edges["edge_mask"].astype(bool)
    if table is not None:
        s = table[rel, nbr]
    else:
        s = sgm_states(cfg, enc["sgm"], hist_NR, rel, nbr, deterministic, rng)
    mem = MemoryTokenizer(cfg).apply({"params": enc["tokenizer"]}, s, mask)
    mem = Projection(cfg.llm_dim, axes=(None, "embed"), use_bias=True).apply({"params": enc["proj"]}, mem)
    return normalize_memory(mem) if cfg.memory_norm else mem


# ---- stage 1 ------------------------------------------------------------------------------------

def distmult(z_ND: jax.Array, w_RD: jax.Array, triples: jax.Array) -> jax.Array:
    """score(h, r, t) = sum_d z_h[d] w_r[d] z_t[d] for triples [..., 3] (h, r, t) -> [...]."""
    chex.assert_rank([z_ND, w_RD], 2)
    chex.assert_axis_dimension(triples, -1, 3)
    return jnp.sum(z_ND[triples[..., 0]] * w_RD[triples[..., 1]] * z_ND[triples[..., 2]], -1)


def link_prediction_loss(pos_B: jax.Array, neg_BK: jax.Array) -> jax.Array:
    """GMT stage 1: L = -mean_b[log sigmoid(s_pos) + mean_k log sigmoid(-s_neg_k)]."""
    return -jnp.mean(jax.nn.log_sigmoid(pos_B) + jnp.mean(jax.nn.log_sigmoid(-neg_BK), -1))


def stage1_constants(index: NeighbourIndex) -> dict:
    """Unique (relation, neighbour) pairs of the whole KG and, per adjacency entry, its pair and
    owner: encode_entity(e) = mean over adj[e] of pair states, computed once per pair."""
    key = index.rel.astype(np.int64) * index.num_entities + index.nbr
    uniq, inv = np.unique(key, return_inverse=True)
    owner = np.repeat(np.arange(index.num_entities), index.degree)
    return {"pair_rel": (uniq // index.num_entities).astype(np.int32),
            "pair_nbr": (uniq % index.num_entities).astype(np.int32),
            "edge_pair": inv.astype(np.int32).reshape(-1), "edge_owner": owner.astype(np.int32),
            "degree": index.degree.astype(np.float32)}


def entity_states(cfg, sgm_params, hist_NR, c: dict, deterministic=True, rng=None) -> jax.Array:
    """z [N, D]: GMT's encode_entity for every entity (isolated entities: zeros).

    With dropout active, one dropout mask per unique pair is shared by that pair's copies (the
    reference draws one per adjacency entry): same expectation, fewer draws."""
    s = sgm_states(cfg, sgm_params, hist_NR, c["pair_rel"], c["pair_nbr"], deterministic, rng)
    n = hist_NR.shape[0]
    tot = jax.ops.segment_sum(s[c["edge_pair"]], c["edge_owner"], n)
    return tot / jnp.maximum(c["degree"], 1.0)[:, None]


def stage1_loss(cfg, sgm_params, hist_NR, c, pos_B3, neg_BK3, deterministic=False, rng=None):
    """-mean[logσ(s+) + mean_k logσ(-s-)] with DistMult scores (B9); relation vectors are not
    passed through the context layers."""
    z = entity_states(cfg, sgm_params, hist_NR, c, deterministic, rng)
    w = SemanticGraphModule(cfg).apply({"params": sgm_params}, method=SemanticGraphModule.relation_vectors)
    return link_prediction_loss(distmult(z, w, pos_B3), distmult(z, w, neg_BK3))
