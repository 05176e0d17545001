"""GMT's graph side: the Semantic Graph Module (SGM), the memory tokenizer and the projection to
the LLM width, plus segment softmax and the stage-1 link-prediction loss.

Everything runs on one padded jraph.GraphsTuple (gmem.graph.batching.pad_graphs of
gmem.graph.kg.extract_subgraph outputs): no Python loop over edges. Shapes: E edges, N nodes,
G graphs (B real + padding), R edge relations, D graph_dim, M memory tokens.

Faithful to the reference (specs/gofa-gmt.md B5, B7) with these notes:
- The context layer's attention has exactly one key per query, so its softmax weight is 1 and
  a = W_out(W_v c + b_v) + b_out: W_q/W_k get no gradient in the reference; gmem keeps only
  v_proj and out_proj. Attention dropout on that weight of 1 is kept: per edge and head the
  value is dropped or scaled by 1/(1-p), as torch's MultiheadAttention does in train mode.
- The top-k context of an edge is computed from its neighbour's relation histogram (the
  multiset of incident relation ids): exact, and independent of the max degree.
"""

from __future__ import annotations

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from gmem.graph.batching import check_graph, edge_graph_ids, masks
from gmem.nn.attention import constrain
from gmem.nn.norms import LayerNorm
from gmem.nn.projection import Projection


@dataclasses.dataclass(frozen=True)
class GraphMemoryConfig:
    """Hyper-parameters of GMT's graph encoder (defaults as the reference CLIs, B12).

    num_edge_relations: R_edge (2R with add_inverse); rel_dim: width of the relation-semantic
    table (384 for all-MiniLM-L6-v2, 256 for the random fallback); llm_dim: the LLM width.
    memory_norm: RMS-normalise each memory token after the projection (no parameters; not in
    the reference). Off by default; see `normalize_memory`.
    """

    num_edge_relations: int
    rel_dim: int = 256
    graph_dim: int = 256
    sgm_layers: int = 2
    sgm_heads: int = 4
    top_k: int = 8
    dropout: float = 0.1
    num_memory_tokens: int = 16
    memory_heads: int = 4
    llm_dim: int = 4096
    memory_norm: bool = False


def segment_softmax(logits: jax.Array, segment_ids: jax.Array, num_segments: int,
                    mask: jax.Array | None = None) -> jax.Array:
    """Softmax of logits [E, ...] over the entries sharing a segment id (e.g. the edges of one
    receiver or one graph). Masked entries get weight 0; a segment with no entries gives no
    NaN. Max-subtracted per segment with jax.ops.segment_max for stability."""
    chex.assert_rank(segment_ids, 1)
    chex.assert_equal_shape_prefix([logits, segment_ids] + ([] if mask is None else [mask]), 1)
    if mask is not None:
        mask = mask.reshape(mask.shape + (1,) * (logits.ndim - mask.ndim))
        logits = jnp.where(mask, logits, -jnp.inf)
    mx = jax.ops.segment_max(logits, segment_ids, num_segments)
    mx = jax.lax.stop_gradient(jnp.where(jnp.isfinite(mx), mx, 0.0))
    ex = jnp.exp(logits - mx[segment_ids])
    if mask is not None:
        ex = jnp.where(mask, ex, 0.0)
    den = jax.ops.segment_sum(ex, segment_ids, num_segments)
    return ex / jnp.where(den > 0, den, 1.0)[segment_ids]


def relation_context(vec_RD: jax.Array, rel_E: jax.Array, hist_ER: jax.Array,
                     top_k: int) -> jax.Array:
    """c_e = mean of the top-k relation vectors incident to edge e's neighbour, ranked by
    cosine to the edge's own relation vector u_e = vec[rel_e] (GMT `_encode_edges`). [E, D].

    hist_ER counts the neighbour's incident edges per relation. Walking relations from the most
    to the least similar and taking copies until k are taken is top-k on the multiset. The
    ranking is per relation pair, so it is sorted once ([R, R]) and gathered per edge.
    """
    chex.assert_rank([vec_RD, rel_E, hist_ER], [2, 1, 2])
    chex.assert_shape(hist_ER, (rel_E.shape[0], vec_RD.shape[0]))
    unit = vec_RD / jnp.maximum(jnp.linalg.norm(vec_RD, axis=-1, keepdims=True), 1e-12)
    sims = jax.lax.stop_gradient(unit @ unit.T)                     # [R, R]
    order = jnp.argsort(-sims, axis=1, stable=True)                 # most similar first
    rank = jnp.argsort(order, axis=1)                               # inverse permutation
    cnt = jnp.take_along_axis(hist_ER, order[rel_E], axis=1)        # counts in ranked order
    before = jnp.cumsum(cnt, axis=1) - cnt
    take = jnp.clip(top_k - before, 0.0, cnt)                       # copies taken per rank
    w_ER = jnp.take_along_axis(take, rank[rel_E], axis=1)           # back to relation order
    denom = jnp.minimum(hist_ER.sum(-1, keepdims=True), float(top_k))
    return (w_ER @ vec_RD) / jnp.maximum(denom, 1.0)


class RelationContextLayer(nn.Module):
    """s <- LN2(s' + FFN(s')), s' = LN1(s + drop(a)), a = out_proj(v_proj(c)) (see header)."""

    config: GraphMemoryConfig

    @nn.compact
    def __call__(self, s_ED, c_ED, deterministic: bool = True):
        cfg = self.config
        chex.assert_shape([s_ED, c_ED], (None, cfg.graph_dim))
        chex.assert_equal_shape([s_ED, c_ED])
        d, h = cfg.graph_dim, cfg.sgm_heads
        drop = nn.Dropout(cfg.dropout, deterministic=deterministic)
        v = Projection(d, axes=("embed", "heads"), use_bias=True, name="v_proj")(c_ED)
        if not deterministic and cfg.dropout > 0:
            # Dropout on the single attention weight (1.0) of each edge and head.
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1 - cfg.dropout,
                                        (v.shape[0], h, 1))
            v = (v.reshape(v.shape[0], h, d // h) * keep / (1 - cfg.dropout)).reshape(v.shape)
        a = Projection(d, axes=("heads", "embed"), use_bias=True, name="out_proj")(v)
        s = LayerNorm(1e-5, name="norm1")(s_ED + drop(a))
        f = Projection(4 * d, axes=("embed", "mlp"), use_bias=True, name="linear1")(s)
        f = Projection(d, axes=("mlp", "embed"), use_bias=True,
                       name="linear2")(drop(nn.gelu(f, approximate=False)))
        return LayerNorm(1e-5, name="norm2")(s + drop(f))


class SemanticGraphModule(nn.Module):
    """Edge states from relation semantics only (entity identity is never embedded).

    Params: rel_semantic [R_edge, rel_dim] (load the real table with
    gmem.graph.relations.set_relation_semantics), rel_proj (only if rel_dim != graph_dim),
    layers_{i}.
    """

    config: GraphMemoryConfig

    def setup(self):
        cfg = self.config
        self.rel_semantic = self.param(
            "rel_semantic", nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None)),
            (cfg.num_edge_relations, cfg.rel_dim))
        if cfg.rel_dim != cfg.graph_dim:
            self.rel_proj = Projection(cfg.graph_dim, axes=(None, "embed"), use_bias=True)
        self.layers = [RelationContextLayer(cfg) for _ in range(cfg.sgm_layers)]

    def relation_vectors(self) -> jax.Array:
        """rel_vec for every edge relation id: [R_edge, graph_dim]."""
        if self.config.rel_dim != self.config.graph_dim:
            return self.rel_proj(self.rel_semantic)
        return self.rel_semantic

    def __call__(self, graph: jraph.GraphsTuple, deterministic: bool = True) -> jax.Array:
        """Edge states [E, graph_dim] (padding edges hold finite garbage; mask them)."""
        check_graph(graph)
        chex.assert_shape(graph.nodes["rel_hist"], (None, self.config.num_edge_relations))
        vec = self.relation_vectors()
        rel = graph.edges["relation"]
        hist = graph.nodes["rel_hist"][graph.senders]
        s = vec[rel]
        c = relation_context(vec, rel, hist, self.config.top_k)
        for layer in self.layers:
            s = layer(s, c, deterministic)
        return constrain(s, ("edges", "embed"))

    def encode_entities(self, graph: jraph.GraphsTuple, deterministic: bool = True) -> jax.Array:
        """Node states [N, graph_dim]: mean of the states of the edges received (GMT's stage-1
        `encode_entity` on `kg.entity_graph`); nodes with no edges get zeros."""
        s = self(graph, deterministic)
        n = graph.nodes["rel_hist"].shape[0]
        _, emask, _ = masks(graph)
        s = jnp.where(emask[:, None], s, 0.0)
        tot = jax.ops.segment_sum(s, graph.receivers, n)
        cnt = jax.ops.segment_sum(emask.astype(s.dtype), graph.receivers, n)
        return tot / jnp.maximum(cnt, 1.0)[:, None]

    def link_loss(self, graph: jraph.GraphsTuple, pos_B3: jax.Array, neg_BK3: jax.Array,
                  deterministic: bool = True) -> jax.Array:
        """Stage-1 loss on the whole-KG graph: -mean[logσ(s+) + mean_k logσ(-s-)], with
        DistMult scores Σ z_h w_r z_t (z from encode_entities, w_r = rel_vec(r)). Triples
        are (h, r, t) ids; node i of `graph` must be entity i (kg.entity_graph)."""
        z = self.encode_entities(graph, deterministic)
        w = self.relation_vectors()
        return link_prediction_loss(distmult(z, w, pos_B3), distmult(z, w, neg_BK3))


def distmult(z_ND: jax.Array, w_RD: jax.Array, triples: jax.Array) -> jax.Array:
    """score(h, r, t) = Σ_d z_h[d] w_r[d] z_t[d] for triples [..., 3] (h, r, t) -> [...]."""
    chex.assert_rank([z_ND, w_RD], 2)
    chex.assert_equal_shape_suffix([z_ND, w_RD], 1)
    chex.assert_axis_dimension(triples, -1, 3)
    return jnp.sum(z_ND[triples[..., 0]] * w_RD[triples[..., 1]] * z_ND[triples[..., 2]], -1)


def link_prediction_loss(pos_B: jax.Array, neg_BK: jax.Array) -> jax.Array:
    """GMT stage 1: L = -mean_b[logσ(s_pos) + mean_k logσ(-s_neg_k)]."""
    chex.assert_rank([pos_B, neg_BK], [1, 2])
    chex.assert_equal_shape_prefix([pos_B, neg_BK], 1)
    return -jnp.mean(jax.nn.log_sigmoid(pos_B) + jnp.mean(jax.nn.log_sigmoid(-neg_BK), -1))


def sample_negatives(rng: jax.Array, pos_B3: jax.Array, num_entities: int, k: int) -> jax.Array:
    """k corruptions per positive [B, k, 3]: each replaces the head (p=0.5) or else the tail by
    a uniform random entity; the relation is kept; true triples are not filtered (as GMT)."""
    chex.assert_shape(pos_B3, (None, 3))
    r_side, r_ent = jax.random.split(rng)
    b = pos_B3.shape[0]
    head = jax.random.bernoulli(r_side, 0.5, (b, k))
    ent = jax.random.randint(r_ent, (b, k), 0, num_entities, dtype=pos_B3.dtype)
    neg = jnp.broadcast_to(pos_B3[:, None, :], (b, k, 3))
    return jnp.stack([jnp.where(head, ent, neg[..., 0]), neg[..., 1],
                      jnp.where(head, neg[..., 2], ent)], -1)


class MemoryTokenizer(nn.Module):
    """M learnable queries cross-attend to each graph's edge states -> [G, M, graph_dim].

    Attention per graph is a segment softmax over that graph's edges (padding edges masked);
    graphs with no edges give zeros (the reference's masked_fill after the MHA), without the
    NaN an all-masked softmax would give.
    """

    config: GraphMemoryConfig

    @nn.compact
    def __call__(self, s_ED: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
        cfg = self.config
        check_graph(graph)
        chex.assert_shape(s_ED, (graph.senders.shape[0], cfg.graph_dim))
        d, h, m = cfg.graph_dim, cfg.memory_heads, cfg.num_memory_tokens
        hd = d // h
        g = graph.n_edge.shape[0]
        queries = self.param("memory_queries", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("memory", "embed")), (m, d))
        proj = lambda n, axes: Projection(d, axes=axes, use_bias=True, name=n)
        q = proj("q_proj", ("embed", "heads"))(queries).reshape(m, h, hd)
        k = proj("k_proj", ("embed", "heads"))(s_ED).reshape(-1, h, hd)
        v = proj("v_proj", ("embed", "heads"))(s_ED).reshape(-1, h, hd)
        _, emask, _ = masks(graph)
        gid = edge_graph_ids(graph)
        logits = jnp.einsum("mhd,ehd->ehm", q, k) * hd ** -0.5
        w = segment_softmax(logits, gid, g, emask)                    # [E, H, M]
        out = jax.ops.segment_sum(jnp.einsum("ehm,ehd->emhd", w, v), gid, g)
        out = proj("out_proj", ("heads", "embed"))(out.reshape(g, m, d))
        has_edges = jax.ops.segment_sum(emask.astype(jnp.int32), gid, g) > 0
        return constrain(jnp.where(has_edges[:, None, None], out, 0.0), ("batch", "memory", "embed"))


def normalize_memory(mem_BMD: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Each memory token divided by its root mean square (no learned scale).

    Why: the memory block adds g * o with o linear in the memory, and Adam moves the one gate
    scalar g about as far per step as each of the many projection weights, so training grows
    the memory (norm 0.53 -> 50 in 600 UMLS steps) instead of the gate. Fixing the tokens'
    scale removes that freedom; the frozen k/v projections then see inputs at the scale of
    RMS-normalised hidden states, which is what they were trained on."""
    return mem_BMD * jax.lax.rsqrt(jnp.mean(jnp.square(mem_BMD), -1, keepdims=True) + eps)


class GraphMemoryEncoder(nn.Module):
    """Subgraphs -> graph memory [G, M, llm_dim] for the LLM's memory cross-attention.

    __call__(graph) runs sgm, tokenizer and proj (Linear graph_dim -> llm_dim with bias; an
    edgeless graph therefore gets proj.bias, as in the reference). Rows past the real batch
    (jraph's padding graphs) are garbage-free but meaningless: slice [:B].
    """

    config: GraphMemoryConfig

    def setup(self):
        self.sgm = SemanticGraphModule(self.config)
        self.tokenizer = MemoryTokenizer(self.config)
        self.proj = Projection(self.config.llm_dim, axes=(None, "embed"), use_bias=True)

    def __call__(self, graph: jraph.GraphsTuple, deterministic: bool = True) -> jax.Array:
        s = self.sgm(graph, deterministic)
        mem = self.proj(self.tokenizer(s, graph))
        return normalize_memory(mem) if self.config.memory_norm else mem

    def link_loss(self, graph, pos_B3, neg_BK3, deterministic: bool = True):
        """Stage 1 on the encoder's own SGM (see SemanticGraphModule.link_loss)."""
        return self.sgm.link_loss(graph, pos_B3, neg_BK3, deterministic)
