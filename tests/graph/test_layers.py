"""Relation-centric message passing (gmem.graph.layers): segment softmax and the top-k relation
context against loop references, the context layer against torch.nn.MultiheadAttention over one
key. GMT's memory path built on them is tested in tests/systems/gmt/test_gmt_graph.py.
Tolerances: 1e-5 absolute on values of scale 1 (fp32)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gmem.graph import kg, layers

TRIPLES = np.asarray([(0, 0, 1), (1, 1, 2), (0, 2, 2), (2, 0, 3), (0, 0, 1), (3, 1, 0),
                      (1, 2, 0), (4, 1, 2), (3, 0, 4), (5, 2, 1)], np.int32)


def _index(add_inverse=True):
    g = kg.KG(tuple(f"e{i}" for i in range(7)), ("a", "b", "c"), TRIPLES, add_inverse)
    return g, kg.NeighbourIndex.build(g)


def _cfg(g, **kw):
    base = dict(num_edge_relations=g.num_edge_relations, rel_dim=12, graph_dim=16, sgm_heads=4, top_k=3)
    base.update(kw)
    return layers.SemanticGraphConfig(**base)


class MessagePassingTest(chex.TestCase):
    """Segment softmax and the memory tokenizer's per-graph attention, eagerly and under jit."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_segment_softmax_matches_loop(self):
        rng = np.random.default_rng(0)
        e, s = 40, 6
        logits = rng.standard_normal((e, 3)).astype(np.float32) * 5
        seg = rng.integers(0, s - 1, e)                   # segment s-1 stays empty
        mask = rng.random(e) > 0.2
        softmax = self.variant(lambda x, ids, m: layers.segment_softmax(x, ids, s, m))
        got = np.asarray(softmax(jnp.asarray(logits), jnp.asarray(seg), jnp.asarray(mask)))
        want = np.zeros_like(logits)
        for k in range(s):
            rows = [i for i in range(e) if seg[i] == k and mask[i]]
            if rows:
                x = logits[rows] - logits[rows].max(0)
                want[rows] = np.exp(x) / np.exp(x).sum(0)
        np.testing.assert_allclose(got, want, atol=1e-6)  # probabilities <= 1: 1e-6 of the max
        assert np.isfinite(got).all() and (got[~mask] == 0).all()


def test_shapes_are_checked_at_trace_time():
    with pytest.raises(AssertionError, match="shape"):
        layers.segment_softmax(jnp.zeros((5, 2)), jnp.zeros((4,), jnp.int32), 3)


def test_relation_context_matches_reference_loop():
    """GMT `_encode_edges` as a Python loop over edges vs the vectorised histogram form."""
    g, idx = _index()
    rng = np.random.default_rng(1)
    vec = rng.standard_normal((g.num_edge_relations, 8)).astype(np.float32)
    vec[3] = vec[0]                                   # inverse duplicates: tied similarities
    for top_k in (1, 2, 3, 8):
        for e0 in range(4):                       # the edges of entities 0..3
            rels, nbrs = idx.neighbours(e0)
            got = np.asarray(layers.relation_context(
                jnp.asarray(vec), jnp.asarray(rels), jnp.asarray(idx.relation_histogram(nbrs)), top_k))
            for e, (rel, n) in enumerate(zip(rels, nbrs)):
                nbr_rels, _ = idx.neighbours(int(n))
                nbr = vec[nbr_rels]
                u = vec[rel] / np.linalg.norm(vec[rel])
                sims = (nbr / np.linalg.norm(nbr, axis=1, keepdims=True)) @ u
                top = np.argsort(-sims, kind="stable")[:min(top_k, len(nbr))]
                np.testing.assert_allclose(got[e], nbr[top].mean(0), atol=1e-5)


def _torch_mha(d, h, q_p, k_p, v_p, o_p):
    mha = torch.nn.MultiheadAttention(d, h, dropout=0.0, batch_first=True)
    with torch.no_grad():
        w = [torch.tensor(np.asarray(p["kernel"]).T) for p in (q_p, k_p, v_p)]
        b = [torch.tensor(np.asarray(p["bias"])) for p in (q_p, k_p, v_p)]
        mha.in_proj_weight.copy_(torch.cat(w, 0))
        mha.in_proj_bias.copy_(torch.cat(b, 0))
        mha.out_proj.weight.copy_(torch.tensor(np.asarray(o_p["kernel"]).T))
        mha.out_proj.bias.copy_(torch.tensor(np.asarray(o_p["bias"])))
    return mha


def test_context_layer_matches_torch_single_key_mha():
    g, _ = _index()
    cfg = _cfg(g)
    d = cfg.graph_dim
    s = jax.random.normal(jax.random.key(0), (9, d))
    c = jax.random.normal(jax.random.key(1), (9, d))
    layer = layers.RelationContextLayer(cfg)
    p = nn.unbox(layer.init(jax.random.key(2), s, c))["params"]
    got = layer.apply({"params": p}, s, c)
    rnd = lambda: {"kernel": np.random.default_rng(3).standard_normal((d, d)).astype(np.float32),
                   "bias": np.zeros(d, np.float32)}
    mha = _torch_mha(d, cfg.sgm_heads, rnd(), rnd(), p["v_proj"], p["out_proj"])
    lin = lambda q: (lambda x: x @ torch.tensor(np.asarray(q["kernel"])) + torch.tensor(np.asarray(q["bias"])))
    ln = lambda q: (lambda x: torch.nn.functional.layer_norm(
        x, (d,), torch.tensor(np.asarray(q["scale"])), torch.tensor(np.asarray(q["bias"])), 1e-5))
    ts, tc = torch.tensor(np.asarray(s))[:, None], torch.tensor(np.asarray(c))[:, None]
    with torch.no_grad():
        a, _ = mha(ts, tc, tc)                                   # one key per query (B5)
        x = ln(p["norm1"])(ts + a)
        x = ln(p["norm2"])(x + lin(p["linear2"])(torch.nn.functional.gelu(lin(p["linear1"])(x))))
    np.testing.assert_allclose(got, x[:, 0].numpy(), atol=1e-5)
    # Train mode: dropout draws, finite, differs from eval.
    tr = layer.apply({"params": p}, s, c, False, rngs={"dropout": jax.random.key(4)})
    assert np.isfinite(np.asarray(tr)).all() and float(jnp.abs(tr - got).max()) > 1e-4
