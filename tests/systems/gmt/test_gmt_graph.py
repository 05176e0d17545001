"""GMT's one graph path (gmem.systems.gmt.graph) against gmt_reference, an independent torch
construction with Python loops (adjacency lists, per-edge top-k, torch MultiheadAttention):
the query edges, the graph memory through the cached edge table and through the SGM, with
mask_query on and off and with and without inverse relations; padding invariance and one
compilation; the stage-1 entity encodings and loss; gradients through the memory into the LLM.

Tolerances: memories and states are O(1) (|values| up to ~5), compared at 1e-5 absolute and
relative in fp32 (matmuls at "highest" precision, tests/conftest.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import gmt_reference as ref
from gmem.graph.kg import KG, NeighbourIndex
from gmem.systems.gmt import checkpoint as C
from gmem.systems.gmt import graph as G

N_ENT, N_REL = 9, 3
# Fact (0, 0, 1) twice, (1, 0, 0) its reverse, (1, 2, 0) another relation between the same
# pair, entity 8 isolated, a self-loop (5, 1, 5).
TRIPLES = np.asarray([(0, 0, 1), (1, 1, 2), (0, 2, 2), (2, 0, 3), (0, 0, 1), (3, 1, 0), (1, 0, 0),
                      (1, 2, 0), (4, 1, 2), (3, 0, 4), (5, 2, 1), (5, 1, 5), (6, 0, 7), (7, 2, 3)], np.int32)
QUERIES = np.asarray([(0, 0, 1), (1, 2, 0), (2, 0, 4), (8, 0, 8), (5, 1, 5), (3, 0, 0), (6, 0, 7)], np.int32)
D_G, D_REL, H, M, TOP_K, D_LLM = 16, 12, 2, 4, 3, 24


def _kg(add_inverse):
    g = KG(tuple(f"e{i}" for i in range(N_ENT)), ("a", "b", "c"), TRIPLES, add_inverse)
    return g, NeighbourIndex.build(g), ref.RefKGIndex(N_ENT, N_REL, TRIPLES.tolist(), add_inverse)


def _cfg(g, **kw):
    return G.GraphMemoryConfig(num_edge_relations=g.num_edge_relations, rel_dim=D_REL, graph_dim=D_G,
                               sgm_heads=H, top_k=TOP_K, dropout=0.0, num_memory_tokens=M,
                               memory_heads=H, llm_dim=D_LLM, **kw)


def _encoder(rindex, seed=0):
    torch.manual_seed(seed)
    enc = ref.RefEncoder(rindex, D_REL, D_G, 2, H, TOP_K, M, H, D_LLM)
    return ref.perturb(enc, 0.3, seed).eval()


def _gmem_params(enc):
    return jax.tree.map(jnp.asarray, C.graph_encoder_params({k: v.numpy() for k, v in enc.state_dict().items()}))


@pytest.mark.parametrize("add_inverse", [False, True])
@pytest.mark.parametrize("mask_query", [False, True])
def test_query_edges_match_reference(add_inverse, mask_query):
    g, idx, ridx = _kg(add_inverse)
    sgm = ref.RefSGM(ridx, D_REL, D_G, 1, H, TOP_K)
    e = G.max_query_edges(idx, QUERIES)
    got = G.query_edges(idx, QUERIES, mask_query, e + 3)
    assert got["edge_rel"].shape == (len(QUERIES), e + 3)
    for i, (h, r, t) in enumerate(QUERIES.tolist()):
        want = sgm.collect_edges(h, r, t, mask_query)
        m = got["edge_mask"][i]
        assert list(zip(got["edge_rel"][i, m].tolist(), got["edge_nbr"][i, m].tolist())) == want
        assert not m[m.sum():].any()                                # real edges first
    # The training fact (0, 0, 1) is in its own unmasked neighbourhood, both ways, and masked
    # away with mask_query (with add_inverse its inverse id too); (1, 2, 0) keeps (0, 0, 1).
    full = sgm.collect_edges(0, 0, 1, False)
    assert (0, 1) in full and ((2 if add_inverse else 0), 0) in full
    assert G.query_edges(idx, QUERIES[:1], True)["edge_mask"][0].sum() < len(full)
    assert G.query_edges(idx, QUERIES[:1], False, 1)["edge_mask"].shape == (1, 1)   # cut to E


@pytest.mark.parametrize("add_inverse", [False, True])
@pytest.mark.parametrize("mask_query", [False, True])
def test_graph_memory_matches_reference(add_inverse, mask_query):
    """Table path (frozen SGM) and SGM path (trainable) against the loop reference."""
    g, idx, ridx = _kg(add_inverse)
    enc = _encoder(ridx)
    p = _gmem_params(enc)
    cfg = _cfg(g)
    hist = jnp.asarray(idx.relation_histogram(np.arange(N_ENT)))
    edges = {k: jnp.asarray(v) for k, v in G.query_edges(idx, QUERIES, mask_query).items()}
    with torch.no_grad():
        want = enc(QUERIES.tolist(), mask_query).numpy()
    assert np.abs(want).max() > 0.5                                   # the scale compared at
    table = G.edge_table(cfg, p["sgm"], hist)
    via_table = np.asarray(G.graph_memory(cfg, p, edges, table=table))
    via_sgm = np.asarray(G.graph_memory(cfg, p, edges, hist))
    np.testing.assert_allclose(via_table, want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(via_sgm, want, atol=1e-5, rtol=1e-5)
    # An edgeless query (entity 8) gets proj.bias: zero memory, projected (as the reference).
    np.testing.assert_allclose(via_table[3], np.broadcast_to(p["proj"]["bias"], (M, D_LLM)), atol=1e-6)
    # mask_query moves the memory of the training fact (0, 0, 1), not of (2, 0, 4) (no such fact).
    other = np.asarray(G.graph_memory(cfg, p, {k: jnp.asarray(v) for k, v in G.query_edges(
        idx, QUERIES, not mask_query).items()}, table=table))
    assert np.abs(other[0] - via_table[0]).max() > 1e-3
    np.testing.assert_allclose(other[2], via_table[2], atol=1e-6)


def test_padding_invariance_and_one_compile():
    g, idx, ridx = _kg(True)
    p = _gmem_params(_encoder(ridx, 1))
    cfg = _cfg(g)
    table = G.edge_table(cfg, p["sgm"], jnp.asarray(idx.relation_histogram(np.arange(N_ENT))))
    traces = []

    @jax.jit
    def run(p, table, edges):
        traces.append(1)
        return G.graph_memory(cfg, p, edges, table=table)

    e = G.max_query_edges(idx, QUERIES) + 5
    a = run(p, table, G.query_edges(idx, QUERIES[:4], True, e))
    b = run(p, table, G.query_edges(idx, QUERIES[[2, 0, 6, 1]], True, e))
    assert len(traces) == 1                                         # same shapes: one compile
    np.testing.assert_allclose(b[1], a[0], atol=1e-6)                # batchmates do not matter
    wide = run(p, table, G.query_edges(idx, QUERIES[:4], True, e + 16))
    np.testing.assert_allclose(wide, a, atol=1e-6)                   # nor does edge padding


@pytest.mark.parametrize("add_inverse", [False, True])
def test_stage1_entities_and_loss_match_reference(add_inverse):
    g, idx, ridx = _kg(add_inverse)
    enc = _encoder(ridx, 2)
    sgm = _gmem_params(enc)["sgm"]
    cfg = _cfg(g)
    hist = jnp.asarray(idx.relation_histogram(np.arange(N_ENT)))
    c = {k: jnp.asarray(v) for k, v in G.stage1_constants(idx).items()}
    z = np.asarray(G.entity_states(cfg, sgm, hist, c))
    with torch.no_grad():
        zr = enc.sgm.encode_entity(range(N_ENT))
        np.testing.assert_allclose(z, zr.numpy(), atol=1e-5, rtol=1e-5)
        pos = torch.as_tensor(TRIPLES[:5], dtype=torch.long)
        neg = torch.as_tensor(np.random.default_rng(0).integers(0, N_ENT, (5, 4, 3)) % [N_ENT, N_REL, N_ENT])
        score = lambda tr: (zr[tr[..., 0]] * enc.sgm.rel_vec(tr[..., 1]) * zr[tr[..., 2]]).sum(-1)
        logsig = torch.nn.functional.logsigmoid
        want = -(logsig(score(pos)) + logsig(-score(neg)).mean(-1)).mean()
    got = G.stage1_loss(cfg, sgm, hist, c, jnp.asarray(pos.numpy()), jnp.asarray(neg.numpy()), deterministic=True)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


def test_graph_memory_gradients_reach_the_llm_loss():
    """Edges -> SGM (trainable) -> tokenizer -> proj -> memory cross-attention of a tiny LLaMA:
    with the gate open, the LM loss reaches the tokenizer, the projection and the SGM layers."""
    from gmem.memory.cross_attention import init_from_self_attention, memory_hook
    from gmem.models.llama import LlamaConfig, LlamaForCausalLM
    lcfg = LlamaConfig(vocab_size=97, hidden_size=D_LLM, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(lcfg, hooks=(memory_hook(lcfg, (1,)),))
    ids = jax.random.randint(jax.random.key(1), (2, 7), 0, 97)
    import flax.linen as nn
    llm = init_from_self_attention(nn.unbox(LlamaForCausalLM(lcfg).init(jax.random.key(0), ids)["params"]), (1,))
    llm["model"]["layers_1"]["memory_attn"]["memory_gate"] = jnp.asarray(0.5)
    g, idx, _ = _kg(True)
    cfg = _cfg(g)
    enc = G.init_encoder(cfg, jax.random.key(2), N_ENT)
    hist = jnp.asarray(idx.relation_histogram(np.arange(N_ENT)))
    edges = {k: jnp.asarray(v) for k, v in G.query_edges(idx, QUERIES[:2], True).items()}

    @jax.jit
    def grads(enc):
        def loss(ep):
            mem = G.graph_memory(cfg, ep, edges, hist)
            logits, _ = model.apply({"params": llm}, ids, hook_inputs={"memory": mem})
            return -jnp.mean(jax.nn.log_softmax(logits)[:, :-1].max(-1))
        return jax.grad(loss)(enc)

    gr = grads(enc)
    for path in (("tokenizer", "memory_queries"), ("proj", "kernel"), ("sgm", "layers_0", "linear1", "kernel")):
        leaf = gr
        for k in path:
            leaf = leaf[k]
        assert float(jnp.abs(leaf).max()) > 0, path
