"""Relation-centric message passing on knowledge-graph edges: segment softmax, the top-k
relation context, the context layer and the Semantic Graph Module (SGM) of GMT
(specs/gofa-gmt.md B5), over jraph.GraphsTuples. Shapes: E edges, N nodes, R edge relations,
D graph_dim.

The SGM reads a graph's `edges["relation"]` [E], `senders` [E] (each edge's neighbour) and
`nodes["rel_hist"]` [N, R] (how many edges of each relation every node has); it never embeds
entity identity. What GMT builds on it (the edges of a query, the memory tokenizer, the edge
table, stage 1) is in gmem.systems.gmt.graph.

Faithful to the reference with these notes:
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

from gmem.graph.batching import check_graph
from gmem.nn.attention import constrain
from gmem.nn.norms import LayerNorm
from gmem.nn.projection import Projection


@dataclasses.dataclass(frozen=True)
class SemanticGraphConfig:
    """Hyper-parameters of the SGM (defaults as GMT's CLIs, B12).

    num_edge_relations: R_edge (2R with add_inverse); rel_dim: width of the relation-semantic
    table (384 for all-MiniLM-L6-v2, 256 for the random fallback).
    """

    num_edge_relations: int
    rel_dim: int = 256
    graph_dim: int = 256
    sgm_layers: int = 2
    sgm_heads: int = 4
    top_k: int = 8
    dropout: float = 0.1


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

    config: SemanticGraphConfig

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

    config: SemanticGraphConfig

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
