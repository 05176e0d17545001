"""GMT graph layers: segment softmax and top-k context against loop references, the context
layer and memory tokenizer against torch.nn.MultiheadAttention, encoder shapes, padding
invariance, compile count and the stage-1 loss. Tolerances: 1e-5 absolute (fp32)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gmem.graph import batching, kg, layers

TRIPLES = np.asarray([(0, 0, 1), (1, 1, 2), (0, 2, 2), (2, 0, 3), (0, 0, 1), (3, 1, 0),
                      (1, 2, 0), (4, 1, 2), (3, 0, 4), (5, 2, 1)], np.int32)


def _index(add_inverse=True):
    g = kg.KG(tuple(f"e{i}" for i in range(7)), ("a", "b", "c"), TRIPLES, add_inverse)
    return g, kg.NeighbourIndex.build(g)


def _cfg(g, **kw):
    base = dict(num_edge_relations=g.num_edge_relations, rel_dim=12, graph_dim=16, sgm_heads=4,
                top_k=3, num_memory_tokens=5, memory_heads=4, llm_dim=24)
    base.update(kw)
    return layers.GraphMemoryConfig(**base)


def _jnp(tree):
    return jax.tree.map(jnp.asarray, tree)


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

    @chex.variants(with_jit=True, without_jit=True)
    def test_tokenizer_matches_torch_mha_with_key_padding(self):
        g, idx = _index()
        cfg = _cfg(g)
        graph = _batch(idx, [(0, 0, 1), (6, 1, 6), (3, 1, 4)])          # entity 6: no edges
        e = graph.senders.shape[0]
        s = jax.random.normal(jax.random.key(0), (e, cfg.graph_dim))
        tok = layers.MemoryTokenizer(cfg)
        p = nn.unbox(tok.init(jax.random.key(1), s, graph))["params"]
        got = np.asarray(self.variant(lambda p, s, graph: tok.apply({"params": p}, s, graph))(p, s, graph))
        assert got.shape == (4, cfg.num_memory_tokens, cfg.graph_dim)
        mha = _torch_mha(cfg.graph_dim, cfg.memory_heads, p["q_proj"], p["k_proj"], p["v_proj"], p["out_proj"])
        q = torch.tensor(np.asarray(p["memory_queries"]))[None]
        offs = np.concatenate([[0], np.cumsum(graph.n_edge)])
        for i in range(3):
            kv = torch.tensor(np.asarray(s[offs[i]:offs[i + 1]]))[None]
            if kv.shape[1] == 0:
                np.testing.assert_array_equal(got[i], 0.0)            # edgeless -> zeros, no NaN
                continue
            with torch.no_grad():
                want, _ = mha(q, kv, kv)
            np.testing.assert_allclose(got[i], want[0].numpy(), atol=1e-5)


def test_shapes_are_checked_at_trace_time():
    g, idx = _index()
    cfg = _cfg(g)
    with pytest.raises(AssertionError, match="shape"):
        layers.segment_softmax(jnp.zeros((5, 2)), jnp.zeros((4,), jnp.int32), 3)
    graph = _batch(idx, [(0, 0, 1)])
    tok = layers.MemoryTokenizer(cfg)
    s = jax.ShapeDtypeStruct((graph.senders.shape[0] - 1, cfg.graph_dim), jnp.float32)
    with pytest.raises(AssertionError, match="shape"):                   # one state per edge
        jax.eval_shape(lambda s, gr: tok.init(jax.random.key(0), s, gr), s, graph)
    with pytest.raises(AssertionError, match="dimension"):                # triples are (h, r, t)
        layers.distmult(jnp.zeros((4, 8)), jnp.zeros((3, 8)), jnp.zeros((2, 2), jnp.int32))


def test_relation_context_matches_reference_loop():
    """GMT `_encode_edges` as a Python loop over edges vs the vectorised histogram form."""
    g, idx = _index()
    rng = np.random.default_rng(1)
    vec = rng.standard_normal((g.num_edge_relations, 8)).astype(np.float32)
    vec[3] = vec[0]                                   # inverse duplicates: tied similarities
    for top_k in (1, 2, 3, 8):
        for (h, r, t) in TRIPLES[:4]:
            sg = kg.extract_subgraph(idx, int(h), int(r), int(t), mask_query=False)
            got = np.asarray(layers.relation_context(
                jnp.asarray(vec), jnp.asarray(sg.edges["relation"]),
                jnp.asarray(sg.nodes["rel_hist"][sg.senders]), top_k))
            for e, (rel, s) in enumerate(zip(sg.edges["relation"], sg.senders)):
                nbr_rels, _ = idx.neighbours(int(sg.nodes["entity"][s]))
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


def _batch(idx, queries, num_graphs=None, mask_query=True):
    gs = [kg.extract_subgraph(idx, *map(int, q), mask_query=mask_query) for q in queries]
    return _jnp(batching.pad_graphs(gs, num_graphs))


def test_encoder_shapes_padding_invariance_and_compile_count():
    g, idx = _index()
    cfg = _cfg(g, rel_dim=12)
    enc = layers.GraphMemoryEncoder(cfg)
    one = _batch(idx, [(0, 0, 1)], num_graphs=3)
    variables = enc.init(jax.random.key(0), one)
    assert "rel_proj" in variables["params"]["sgm"]          # rel_dim != graph_dim
    traces = []

    @jax.jit
    def run(v, graph):
        traces.append(1)
        return enc.apply(v, graph)

    a = run(variables, one)
    assert a.shape == (4, cfg.num_memory_tokens, cfg.llm_dim) and np.isfinite(np.asarray(a)).all()
    b = run(variables, _batch(idx, [(3, 1, 4), (0, 0, 1), (6, 0, 5)], num_graphs=3))
    assert len(traces) == 1                                  # same bucket, same batch size
    np.testing.assert_allclose(b[1], a[0], atol=1e-5)         # a graph's memory ignores batchmates
    bias = nn.unbox(variables["params"]["proj"]["bias"])
    edgeless = run(variables, _batch(idx, [(6, 0, 6)], num_graphs=3))
    np.testing.assert_allclose(edgeless[0], np.broadcast_to(bias, edgeless[0].shape), atol=1e-7)
    # mask_query changes the memory of a training fact (its own edge is removed).
    c = run(variables, _batch(idx, [(0, 0, 1)], num_graphs=3, mask_query=False))
    assert float(jnp.abs(c[0] - a[0]).max()) > 1e-6


def test_stage1_loss_and_negatives():
    g, idx = _index(add_inverse=False)
    cfg = _cfg(g, rel_dim=16)                                 # rel_dim == graph_dim: no rel_proj
    sgm = layers.SemanticGraphModule(cfg)
    full = _jnp(kg.entity_graph(idx))
    pos = jnp.asarray(TRIPLES[:4])
    neg = jax.jit(layers.sample_negatives, static_argnums=(2, 3))(jax.random.key(1), pos,
                                                                  g.num_entities, 6)
    assert neg.shape == (4, 6, 3)
    np.testing.assert_array_equal(neg[..., 1], np.broadcast_to(pos[:, None, 1], (4, 6)))
    kept_h = neg[..., 0] == pos[:, None, 0]
    kept_t = neg[..., 2] == pos[:, None, 2]
    assert bool(jnp.all(kept_h | kept_t))                     # one side corrupted at most
    v = jax.jit(sgm.init)(jax.random.key(0), full)
    assert "rel_proj" not in v["params"]

    @jax.jit   # one compile: graph and triples are arguments (not constants to fold)
    def run(params, graph, pos, neg):
        def loss_fn(p):
            return sgm.apply({"params": p}, graph, pos, neg, method=sgm.link_loss)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        z = sgm.apply({"params": params}, graph, method=sgm.encode_entities)
        return loss, grads, z, sgm.apply({"params": params}, graph)

    loss, grads, z, s = run(v["params"], full, pos, neg)
    z, s = np.asarray(z), np.asarray(s)
    # Entity encodings = mean of the states of each entity's edges (loop reference).
    recv = np.asarray(full.receivers)[:int(full.n_edge[0])]
    for e in range(g.num_entities):
        rows = np.flatnonzero(recv == e)
        want = s[rows].mean(0) if len(rows) else np.zeros(cfg.graph_dim)
        np.testing.assert_allclose(z[e], want, atol=1e-5)
    # Loss = the formula on DistMult scores.
    w = np.asarray(nn.unbox(v["params"]["rel_semantic"]))
    score = lambda tr: (z[tr[..., 0]] * w[tr[..., 1]] * z[tr[..., 2]]).sum(-1)
    logsig = lambda x: -np.log1p(np.exp(-x))
    want = -np.mean(logsig(score(np.asarray(pos))) + logsig(-score(np.asarray(neg))).mean(-1))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    gk = nn.unbox(grads["layers_0"]["linear1"]["kernel"])
    assert float(jnp.abs(gk).max()) > 0 and np.isfinite(np.asarray(gk)).all()
