"""GOFA's GNN layer against a PyTorch reference written here from spec A5, with PyG's segment
softmax (torch_geometric.utils.softmax) and torch index_add_ for the sum over in-edges.

Random graphs have isolated nodes (no in-edges), multi-edges, a self-edge and padding (masked
nodes and edges whose indices point at real nodes). Weights are drawn at a scale where the
softmax is far from uniform, and gates are non-zero so every path carries gradient.
Tolerances: float64 in both (jax x64, torch.float64) at 1e-10 relative to the largest value;
float32 at 2e-5 x max|reference| (values are O(10), so this is ~1e-5 relative), values and
gradients with respect to the inputs and every parameter.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch_geometric.utils import softmax as pyg_softmax

from tolerance import assert_close_to_scale
from gmem.errors import GmemError
from gmem.graph.gofa_gnn import GOFAGNNConv
from gmem.graph.text_buckets import TextGraphBuckets, pad_text_graph
from gmem.graph.text_graph import TextGraph

K, D = 3, 8
EPS = 1e-6


def _graph(seed=0, n=7, n_pad=10, e_pad=20):
    """Real nodes 0..n-1 where nodes n-2, n-1 receive nothing; 14 real edges incl. a repeated
    pair and a self-edge; padding edges point at real nodes (the masks must stop them)."""
    rng = np.random.default_rng(seed)
    snd = list(rng.integers(0, n, 11)) + [1, 1, 2]
    rcv = list(rng.integers(0, n - 2, 11)) + [3, 3, 2]
    e = len(snd)
    senders = np.asarray(snd + list(rng.integers(0, n, e_pad - e)), np.int32)
    receivers = np.asarray(rcv + list(rng.integers(0, n, e_pad - e)), np.int32)
    return dict(n=n, e=e, senders=senders, receivers=receivers,
                node_mask=np.arange(n_pad) < n, edge_mask=np.arange(e_pad) < e,
                x=rng.standard_normal((n_pad, K, D)), xe=rng.standard_normal((e_pad, K, D)))


def _random_params(module, dtype, seed=1):
    """The module's tree with every leaf redrawn: kernels N(0, 0.5^2), norms 1 + N(0, 0.1^2),
    biases N(0, 0.1^2), gates 0.6 / -0.9."""
    x = jnp.zeros((2, K, D), dtype)
    ei = jnp.zeros((1,), jnp.int32)
    tree = nn.unbox(jax.jit(module.init)(jax.random.PRNGKey(0), x, x[:1], ei, ei))["params"]
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "gate" in name:
            v = np.full(leaf.shape, 0.6 if "attn" in name else -0.9)
        elif "scale" in name:
            v = 1 + 0.1 * rng.standard_normal(leaf.shape)
        elif "bias" in name:
            v = 0.1 * rng.standard_normal(leaf.shape)
        else:
            v = 0.5 * rng.standard_normal(leaf.shape)
        return jnp.asarray(v, dtype)
    return jax.tree_util.tree_map_with_path(draw, tree)


def _torch_params(p, dtype):
    t = lambda a: torch.tensor(np.asarray(a), dtype=dtype, requires_grad=True)
    ff = p["ff"]
    return {"lin_qkv": t(p["lin_qkv"]["kernel"].T), "e_proj": t(p["e_proj"]["kernel"].T),
            "o_proj": t(p["o_proj"]["kernel"].T), "x_norm": t(p["x_norm"]["scale"]),
            "xe_norm": t(p["xe_norm"]["scale"]), "post_gnn_norm": t(p["post_gnn_norm"]["scale"]),
            "lins_0_w": t(ff["lins_0"]["kernel"].T), "lins_0_b": t(ff["lins_0"]["bias"]),
            "norms_0": t(ff["norms_0"]["scale"]), "lins_1_w": t(ff["lins_1"]["kernel"].T),
            "lins_1_b": t(ff["lins_1"]["bias"]), "attn_gate": t(p["attn_gate"]),
            "ff_gate": t(p["ff_gate"])}


def _torch_params_as_flax(tp):
    """Torch grads back in the flax tree layout (kernels transposed)."""
    g = {k: v.grad.numpy() for k, v in tp.items()}
    return {"lin_qkv": {"kernel": g["lin_qkv"].T}, "e_proj": {"kernel": g["e_proj"].T},
            "o_proj": {"kernel": g["o_proj"].T}, "x_norm": {"scale": g["x_norm"]},
            "xe_norm": {"scale": g["xe_norm"]}, "post_gnn_norm": {"scale": g["post_gnn_norm"]},
            "ff": {"lins_0": {"kernel": g["lins_0_w"].T, "bias": g["lins_0_b"]},
                   "norms_0": {"scale": g["norms_0"]},
                   "lins_1": {"kernel": g["lins_1_w"].T, "bias": g["lins_1_b"]}},
            "attn_gate": g["attn_gate"], "ff_gate": g["ff_gate"]}


def _rms(h, w):
    return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS))


def torch_reference(p, x, xe, senders, receivers):
    """A5 on the real graph only: x [N, K, D], xe [E, K, D], edges senders -> receivers."""
    q, k, v = (_rms(x, p["x_norm"]) @ p["lin_qkv"].T).chunk(3, -1)
    ek, ev = (_rms(xe, p["xe_norm"]) @ p["e_proj"].T).chunk(2, -1)
    key, val = k[senders] + ek, v[senders] + ev
    alpha = pyg_softmax(q[receivers] * key, receivers, num_nodes=x.shape[0], dim=0)
    agg = torch.zeros_like(x).index_add_(0, receivers, alpha * val)
    h = x + torch.tanh(p["attn_gate"]) * (agg @ p["o_proj"].T)
    f = _rms(h, p["post_gnn_norm"]) @ p["lins_0_w"].T + p["lins_0_b"]
    f = torch.relu(_rms(f, p["norms_0"])) @ p["lins_1_w"].T + p["lins_1_b"]
    return h + torch.tanh(p["ff_gate"]) * f


def _compare(jdtype, tdtype, rtol):
    g = _graph()
    n, e = g["n"], g["e"]
    module = GOFAGNNConv(dtype=jdtype, param_dtype=jdtype)
    params = _random_params(module, jdtype)
    cot = np.random.default_rng(2).standard_normal((n, K, D))
    idx = {k: jnp.asarray(g[k]) for k in ("senders", "receivers", "node_mask", "edge_mask")}

    def loss(p, x, xe):
        y = module.apply({"params": p}, x, xe, idx["senders"], idx["receivers"],
                         idx["node_mask"], idx["edge_mask"])
        return jnp.sum(y[:n] * jnp.asarray(cot, jdtype)), y

    (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
        params, jnp.asarray(g["x"], jdtype), jnp.asarray(g["xe"], jdtype))
    gp, gx, gxe = grads

    tp = _torch_params(params, tdtype)
    tx = torch.tensor(g["x"][:n], dtype=tdtype, requires_grad=True)
    txe = torch.tensor(g["xe"][:e], dtype=tdtype, requires_grad=True)
    ref = torch_reference(tp, tx, txe, torch.tensor(g["senders"][:e], dtype=torch.long),
                          torch.tensor(g["receivers"][:e], dtype=torch.long))
    (ref * torch.tensor(cot, dtype=tdtype)).sum().backward()

    def close(got, want, what):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        tol = rtol * max(np.abs(want).max(), 1.0)
        np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg=what)

    close(y[:n], ref.detach().numpy(), "values")
    close(y[n:], g["x"][n:], "padding rows keep their input")
    close(gx[:n], tx.grad.numpy(), "d/dx")
    close(gx[n:], 0 * g["x"][n:], "d/dx padding")
    close(gxe[:e], txe.grad.numpy(), "d/dxe")
    close(gxe[e:], 0 * g["xe"][e:], "d/dxe padding edges")
    want = _torch_params_as_flax(tp)
    for path, leaf in jax.tree_util.tree_leaves_with_path(want):
        got = gp
        for key in path:
            got = got[key.key]
        close(got, leaf, f"d/d{jax.tree_util.keystr(path)}")
    for unused in ("layer_norm_ek", "layer_norm_ev"):
        assert not np.asarray(gp[unused]["scale"]).any()
    # The reference graph has isolated receivers: their attention output is exactly zero.
    assert set(range(n)) - set(g["receivers"][:e].tolist())


def test_matches_torch_reference_float64():
    with jax.enable_x64(True):
        _compare(jnp.float64, torch.float64, 1e-10)


def test_matches_torch_reference_float32():
    _compare(jnp.float32, torch.float32, 2e-5)


def test_zero_gates_are_exact_identity():
    """Default init (gates 0): output == input bit for bit, also for bf16 inputs."""
    g = _graph(3)
    module = GOFAGNNConv()
    args = [jnp.asarray(g[k]) for k in ("senders", "receivers", "node_mask", "edge_mask")]
    for dtype in (jnp.float32, jnp.bfloat16):
        x, xe = jnp.asarray(g["x"], dtype), jnp.asarray(g["xe"], dtype)
        variables = module.init(jax.random.PRNGKey(0), x, xe, *args)
        y = module.apply(variables, x, xe, *args)
        assert y.dtype == dtype
        np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(x, np.float32))


def test_param_tree_and_logical_axes():
    x = jnp.zeros((4, K, D))
    ei = jnp.zeros((2,), jnp.int32)
    v = GOFAGNNConv().init(jax.random.PRNGKey(0), x, x[:2], ei, ei)["params"]
    shapes = jax.tree.map(lambda a: a.value.shape if isinstance(a, nn.Partitioned) else a.shape,
                          v, is_leaf=lambda a: isinstance(a, nn.Partitioned))
    assert shapes == {
        "layer_norm_ek": {"scale": (D,)}, "layer_norm_ev": {"scale": (D,)},
        "x_norm": {"scale": (D,)}, "xe_norm": {"scale": (D,)},
        "lin_qkv": {"kernel": (D, 3 * D)}, "e_proj": {"kernel": (D, 2 * D)},
        "o_proj": {"kernel": (D, D)}, "attn_gate": (1,), "ff_gate": (1,),
        "post_gnn_norm": {"scale": (D,)},
        "ff": {"lins_0": {"kernel": (D, 2 * D), "bias": (2 * D,)}, "norms_0": {"scale": (2 * D,)},
               "lins_1": {"kernel": (2 * D, D), "bias": (D,)}}}
    axes = nn.get_partition_spec(v)
    assert tuple(axes["lin_qkv"]["kernel"]) == ("embed", "heads")
    assert tuple(axes["o_proj"]["kernel"]) == ("heads", "embed")
    assert tuple(axes["ff"]["lins_0"]["kernel"]) == ("embed", "mlp")
    assert tuple(axes["ff"]["norms_0"]["scale"]) == ("mlp",)


def test_edge_map_equals_gathered_edge_states():
    g = _graph(4)
    module = GOFAGNNConv()
    params = _random_params(module, jnp.float32)
    rng = np.random.default_rng(5)
    uniq = jnp.asarray(rng.standard_normal((4, K, D)), jnp.float32)
    emap = jnp.asarray(rng.integers(0, 4, g["senders"].shape[0]), jnp.int32)
    args = [jnp.asarray(g[k]) for k in ("senders", "receivers", "node_mask", "edge_mask")]
    x = jnp.asarray(g["x"], jnp.float32)
    a = module.apply({"params": params}, x, uniq, *args, edge_map_E=emap)
    b = module.apply({"params": params}, x, uniq[emap], *args)
    # The edge projection runs on U unique rows vs E gathered rows: other matmul shapes, so
    # float32 rounding may differ; 1e-5 of the values' scale (tests/tolerance.py).
    assert_close_to_scale(a, b, rel=1e-5)


def _text_graph(n=6):
    edges = [(0, 1), (1, 2), (2, 0), (3, 1), (3, 1), (4, 0)]   # node 5: no edges at all
    return TextGraph.build([f"node {i}" for i in range(n - 1)] + ["node 0"], edges,
                           ["a", "b", "a", "c", "d", "b"])


def test_bucket_padding_changes_no_real_output():
    """The same graph, unpadded and padded to two different bucket sets: identical real rows;
    one compilation per bucket."""
    tg = _text_graph()
    rng = np.random.default_rng(6)
    module = GOFAGNNConv()
    params = _random_params(module, jnp.float32)
    mem_T = rng.standard_normal((16, K, D)).astype(np.float32)   # per unique text row
    traces = []

    @jax.jit
    def run(p, x, xe, s, r, nm, em):
        traces.append(1)
        return module.apply({"params": p}, x, xe, s, r, nm, em)

    outs = []
    for buckets in (TextGraphBuckets(nodes=(6,), edges=(6,), texts=(9,)),
                    TextGraphBuckets(), TextGraphBuckets(nodes=(16,), edges=(32,), texts=(16,))):
        pg = pad_text_graph(tg, [0], buckets)
        y = run(params, mem_T[pg.node_map], mem_T[pg.edge_map], pg.senders, pg.receivers,
                pg.node_mask, pg.edge_mask)
        outs.append(np.asarray(y)[:tg.num_nodes])
    np.testing.assert_array_equal(outs[1], outs[2])
    assert_close_to_scale(outs[0], outs[1], rel=1e-5)    # other bucket, other matmul shapes
    assert len(traces) == 3
    pg = pad_text_graph(tg, [0], TextGraphBuckets())
    run(params, mem_T[pg.node_map], mem_T[pg.edge_map] * 2, pg.senders, pg.receivers,
        pg.node_mask, pg.edge_mask)
    assert len(traces) == 3   # same bucket, new values: no new compilation


def test_padding_helper_maps_and_masks():
    tg = _text_graph()
    pg = pad_text_graph(tg, [5, 2], TextGraphBuckets(nodes=(8,), edges=(8,), texts=(12,), targets=(4,)))
    assert pg.shape_key == (8, 8, 12, 4)
    assert pg.texts == ("node 0", "node 1", "node 2", "node 3", "node 4", "a", "b", "c", "d") + ("",) * 3
    assert pg.text_mask.sum() == 9
    # node_map expands unique rows: nodes 0 and 5 share a text.
    assert [pg.texts[i] for i in pg.node_map[:6]] == list(tg.node_texts)
    assert [pg.texts[i] for i in pg.edge_map[:6]] == list(tg.edge_texts)
    assert pg.node_mask.tolist() == [True] * 6 + [False] * 2
    assert pg.edge_mask.tolist() == [True] * 6 + [False] * 2
    assert pg.targets[:2].tolist() == [5, 2] and pg.target_mask.tolist() == [True, True, False, False]
    gt = pg.graphs_tuple()
    assert gt.n_node.tolist() == [6, 2] and gt.n_edge.tolist() == [6, 2]


def test_padding_helper_errors_name_the_field():
    tg = _text_graph()
    with pytest.raises(GmemError, match=r"^g.json: 6 nodes exceed the largest bucket 4 \(buckets.nodes"):
        pad_text_graph(tg, [0], TextGraphBuckets(nodes=(2, 4)), where="g.json")
    with pytest.raises(GmemError, match=r"6 edges exceed the largest bucket 5 \(buckets.edges"):
        pad_text_graph(tg, [0], TextGraphBuckets(edges=(5,)))
    with pytest.raises(GmemError, match=r"9 texts exceed .* \(buckets.texts"):
        pad_text_graph(tg, [0], TextGraphBuckets(texts=(4,)))
    with pytest.raises(GmemError, match=r"target 9 is not a node"):
        pad_text_graph(tg, [9])
    with pytest.raises(GmemError, match=r"edge 0 receiver 7 is not a node"):
        TextGraph.build(["a", "b"], [(0, 7)], ["x"])
