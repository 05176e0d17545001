"""GOFA's model (gmem.systems.gofa.model) on a tiny random LLaMA against the PyTorch reference of
gofa_helpers (transformers layers, PEFT adapters encadapt / default, a torch GNN from A5, GOFA's
own right-padded layout): memory states and decoder logits; zero gates are the compressor
exactly; no gradient below the first GNN layer; bucket padding changes no real output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmem.adapters import adapter_collection
from gmem.graph.text_buckets import TextGraphBuckets
from gmem.systems.gofa import model as M
from gmem.systems.gofa.layout import SpecialIds

import gofa_helpers as H

SP = SpecialIds(H.V, H.K)
LAYERS = M.gnn_layers(H.LAYERS, H.N_GNN)
FIRST = LAYERS[0]


@pytest.fixture(scope="module")
def twin():
    cfg, model = H.hf_model()
    module, base, lora = H.gmem_twin(cfg, model)
    table = np.random.default_rng(3).normal(0, 0.5, (SP.table_rows, H.D)).astype(np.float32)
    return model, module, base, lora, jnp.asarray(table)


@pytest.fixture(scope="module")
def forward(twin):
    """The jitted forward (base, lora, table, gnn, batch) -> (memory, logits): one compilation
    per batch shape, shared by the tests."""
    module = twin[1]
    return jax.jit(lambda base, lora, table, gnn, b: _gmem_forward(module, base, lora, table, gnn, b))


def _vars(base, gnn, lora, name):
    spec = {"encadapt": H.ENC, "default": H.DEC}[name]
    return {"params": M.with_gnn(base, gnn), "adapter": adapter_collection([spec], {name: lora[name]})}


def _gmem_forward(module, base, lora, table, gnn, batch):
    """(memory states of the node rows [N_pad, K, D], decoder logits [Q_pad, Ld, V])."""
    mem = M.graph_encode(module, _vars(base, gnn, lora, "encadapt"), table, batch, SP, LAYERS, jnp.float32)
    f = M.flat_graph(batch)
    dv = _vars(base, gnn, lora, "default")
    dec = {k: batch[k].reshape((-1,) + batch[k].shape[2:]) for k in ("dec_ids", "dec_mask", "dec_target")}
    x = M.decoder_embeds(dv["params"]["model"]["embed_tokens"]["embedding"], table, dec["dec_ids"],
                         mem[f["targets"]], SP, jnp.float32)
    logits, _ = module.apply(dv, None, dec["dec_mask"], inputs_embeds_BLD=x)
    return mem, logits


def _batch(packer=None):
    return {k: jnp.asarray(v) for k, v in (packer or H.packer()).pack([H.record()]).items()}


def test_forward_matches_torch_reference(twin, forward):
    model, module, base, lora, table = twin
    gnn = H.random_gnn()
    rec = H.record()
    mem, logits = forward(base, lora, table, gnn, _batch())
    want_mem = H.torch_encode(model, table, gnn, rec)
    want, lens = H.torch_decode(model, table, want_mem, rec)
    n = rec.graph.num_nodes
    scale = float(np.abs(want_mem.numpy()).max())
    np.testing.assert_allclose(np.asarray(mem[:n]), want_mem.numpy(), rtol=0, atol=1e-5 * scale)
    for r, length in enumerate(lens):
        np.testing.assert_allclose(np.asarray(logits[r, :length]), want[r, :length], rtol=0, atol=1e-4)
    # The GNN is live: the same forward with zero gates gives other memory states.
    mem0, _ = forward(base, lora, table, H.random_gnn(gate=None), _batch())
    assert float(jnp.abs(mem0[:n] - mem[:n]).max()) > 1e-2


def _enc(module, base, lora, table, gnn_params, batch, **kw):
    return M.graph_encode(module, _vars(base, gnn_params, lora, "encadapt"), table, batch, SP, LAYERS, jnp.float32,
                          **kw)


def test_zero_gates_are_the_compressor_exactly(twin):
    """Fresh GNN layers (gates 0): the graph encoder's memory states equal, bit for bit, the same
    encoder with the GNN left out; and the stand-alone compressor of the node texts within
    float rounding (another program: the last layer computes only the memory columns)."""
    _, module, base, lora, table = twin
    gnn, _ = M.init_gnn(M.gnn_layers(H.LAYERS, H.N_GNN), H.D, H.K, jax.random.PRNGKey(5), H.EPS)
    batch = _batch()
    run = jax.jit(lambda b, use: _enc(module, base, lora, table, gnn, b, gnn=use), static_argnums=1)
    got, plain = run(batch, True), run(batch, False)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(plain))
    f = M.flat_graph(batch)
    alone = jax.jit(lambda ids, lens: M.compress(module, _vars(base, gnn, lora, "encadapt"), table, ids, lens,
                                                 SP, jnp.float32))(f["node_text_ids"], f["node_text_len"])
    n = H.record().graph.num_nodes
    want = np.asarray(alone)[np.asarray(f["node_map"][:n])]
    np.testing.assert_allclose(np.asarray(got[:n]), want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.fixture(scope="module")
def grads(twin):
    """jitted (lora_enc, table, gnn, batch) -> their gradients of a weighted sum of the node
    memory states."""
    _, module, base, _, table = twin

    def loss(lora_enc, table, gnn, batch):
        mem = _enc(module, base, {"encadapt": lora_enc}, table, gnn, batch)[:4]
        return jnp.sum(mem * jnp.arange(mem.size).reshape(mem.shape) / mem.size)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def test_no_gradient_below_the_first_gnn_layer(twin, grads):
    """partial_grad: the encoder LoRA of layers below the first GNN layer and the memory table
    get exactly zero gradient; the layers from the first GNN layer up and the GNN do not. With
    fresh (zero-gate) GNN layers only the gates get a gradient (spec A5)."""
    _, module, base, lora, table = twin
    batch = _batch()
    g_lora, g_table, g_gnn = grads(lora["encadapt"], table, H.random_gnn(), batch)
    assert not np.asarray(g_table).any()
    for i in range(H.LAYERS):
        norm = sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g_lora["model"][f"layers_{i}"]))
        assert (norm > 0) == (i >= FIRST), (i, norm)
    assert all(float(jnp.abs(x).sum()) > 0 for x in jax.tree.leaves(
        {k: v for k, v in g_gnn[f"layers_{FIRST}"].items() if not k.startswith("layer_norm_e")}))
    fresh, _ = M.init_gnn(M.gnn_layers(H.LAYERS, H.N_GNN), H.D, H.K, jax.random.PRNGKey(5), H.EPS)
    _, _, g0 = grads(lora["encadapt"], table, fresh, batch)
    for path, leaf in jax.tree_util.tree_leaves_with_path(g0):
        assert bool(np.asarray(leaf).any()) == ("gate" in jax.tree_util.keystr(path)), jax.tree_util.keystr(path)


def test_bucket_padding_changes_no_real_output(twin, forward):
    """The same record at the tightest buckets and at larger ones (more nodes, edges, texts,
    targets, a wider text slab and decoder rows): equal real memory states and logits."""
    _, module, base, lora, table = twin
    gnn = H.random_gnn()
    rec = H.record()
    small = H.packer(TextGraphBuckets(nodes=(4,), edges=(5,), texts=(3,), targets=(2,)), (6,), (17,))
    large = H.packer(TextGraphBuckets(nodes=(16,), edges=(32,), texts=(8,), targets=(4,)), (12,), (40,))
    outs = []
    for p in (small, large):
        b = _batch(p)
        mem, logits = forward(base, lora, table, gnn, b)
        outs.append((np.asarray(mem[:rec.graph.num_nodes]), np.asarray(logits), np.asarray(b["dec_mask"][0])))
    (m1, l1, d1), (m2, l2, d2) = outs
    np.testing.assert_allclose(m1, m2, rtol=0, atol=1e-5 * np.abs(m1).max())
    for r in range(len(rec.targets)):
        n = int(d1[r].sum())
        assert n == int(d2[r].sum())
        np.testing.assert_allclose(l1[r, :n], l2[r, :n], rtol=0, atol=1e-5)


def test_run_layers_in_two_parts_equal_the_model(twin):
    """gmem.models.llama.LlamaModel.run_layers (the shared addition GOFA uses): layers 0..a-1
    then a..L-1, then the final norm, give the model's own hidden states."""
    _, module, base, _, _ = twin
    ids = jnp.asarray(np.random.default_rng(0).integers(0, H.V, (2, 7)))

    def parts(m, ids):
        x = m.model.embed_tokens(ids)
        pos = jnp.broadcast_to(jnp.arange(7), ids.shape)
        mask = jnp.ones(ids.shape, jnp.int32)
        x = m.model.run_layers(x, pos, mask, 0, 1)
        return m.model.norm(m.model.run_layers(x, pos, mask, 1, H.LAYERS))
    _, _, want = module.apply({"params": base}, ids, return_hidden=True)
    got = module.apply({"params": base}, ids, method=parts)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-6)


def test_sharded_over_graphs_equals_one_device(twin, forward):
    """8 graphs on a fsdp=8 mesh of the suite's virtual devices (the GNN vmapped with the graph
    axis on the batch's mesh axes): the same memory states and logits as without a mesh."""
    import flax.linen as nn
    from jax.sharding import NamedSharding, PartitionSpec as P
    from gmem.train import sharding as shd
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (virtual) devices")
    _, module, base, lora, table = twin
    gnn = H.random_gnn()
    batch = {k: jnp.asarray(v) for k, v in H.packer().pack([H.record()] * 8).items()}
    want = forward(base, lora, table, gnn, batch)
    mesh = shd.make_mesh(data=1, fsdp=8)
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(shd.RULES)):
        rows = {k: jax.device_put(v, NamedSharding(mesh, P(("data", "fsdp")))) for k, v in batch.items()}
        got = jax.jit(lambda b: _gmem_forward(module, base, lora, table, gnn, b))(rows)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=1e-5 * max(1.0, float(np.abs(w).max())))
