"""Padded GraphsTuple batches: buckets, masks, one compilation per bucket, and the jraph
functions gmem relies on (pinned: jraph is unmaintained)."""

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from gmem.errors import GmemError
from gmem.graph import batching


def _graph(n, e, seed=0):
    rng = np.random.default_rng(seed)
    return jraph.GraphsTuple(
        nodes={"x": rng.standard_normal((n, 3)).astype(np.float32)},
        edges={"relation": rng.integers(0, 4, e).astype(np.int32)},
        senders=rng.integers(0, n, e).astype(np.int32),
        receivers=rng.integers(0, n, e).astype(np.int32),
        n_node=np.asarray([n], np.int32), n_edge=np.asarray([e], np.int32),
        globals={"query": np.zeros((1, 3), np.int32)})


def test_bucket():
    assert batching.bucket(1) == 16 and batching.bucket(16) == 16 and batching.bucket(17) == 32
    assert batching.bucket(5, (4, 8)) == 8 and batching.bucket(9, (4, 8)) == 16
    assert batching.bucket(100_000) == 131072


def test_pad_graphs_shapes_and_masks():
    gs = [_graph(3, 5, 0), _graph(2, 0, 1), _graph(4, 7, 2)]
    pg = batching.pad_graphs(gs, num_graphs=4)
    assert batching.shape_key(pg) == (16, 16, 5)   # 9 + 1 nodes -> 16, 12 edges -> 16, 4 + 1
    node_m, edge_m, graph_m = jax.jit(batching.masks)(pg)
    np.testing.assert_array_equal(node_m, np.arange(16) < 9)
    np.testing.assert_array_equal(edge_m, np.arange(16) < 12)
    np.testing.assert_array_equal(graph_m, [True, True, True, False, False])
    np.testing.assert_array_equal(jax.jit(batching.edge_graph_ids)(pg),
                                  [0] * 5 + [2] * 7 + [3] * 4)
    np.testing.assert_array_equal(batching.node_graph_ids(pg), [0] * 3 + [1] * 2 + [2] * 4 + [3] * 7)
    # Offsets: graph 2's senders point into its own nodes (5..8).
    assert pg.senders[5:12].min() >= 5 and pg.senders[5:12].max() <= 8
    with pytest.raises(GmemError, match="do not fit"):
        batching.pad_graphs(gs, num_graphs=2)
    with pytest.raises(GmemError, match="no graphs"):
        batching.pad_graphs([])


def test_graph_shapes_are_checked():
    pg = batching.pad_graphs([_graph(3, 5, 0)])
    batching.check_graph(pg)
    with pytest.raises(AssertionError, match="shape"):
        batching.masks(pg._replace(receivers=pg.receivers[:-1]))      # senders and receivers differ
    with pytest.raises(AssertionError, match="shape"):
        batching.edge_graph_ids(pg._replace(edges={"relation": pg.edges["relation"][:-1]}))
    with pytest.raises(AssertionError, match="rank"):
        batching.node_graph_ids(pg._replace(n_node=pg.n_node[:, None]))


def test_one_compile_per_bucket():
    traces = []

    @jax.jit
    def f(g):
        traces.append(1)   # runs only while tracing
        _, emask, _ = batching.masks(g)
        gid = batching.edge_graph_ids(g)
        return jax.ops.segment_sum(jnp.where(emask, g.edges["relation"], 0), gid, g.n_edge.shape[0])

    sizes = [(3, 5), (5, 9), (6, 14), (2, 1)]          # all fit the (16, 16) bucket
    for i, (n, e) in enumerate(sizes):
        out = f(batching.pad_graphs([_graph(n, e, i), _graph(2, 1, 9)], num_graphs=2))
        want = [_graph(n, e, i).edges["relation"].sum(), _graph(2, 1, 9).edges["relation"].sum()]
        np.testing.assert_array_equal(out[:2], want)
    assert len(traces) == 1
    f(batching.pad_graphs([_graph(20, 40)], num_graphs=2))  # next bucket: one more compile
    f(batching.pad_graphs([_graph(25, 33)], num_graphs=2))
    assert len(traces) == 2
    # A short last batch keeps the shapes of a full one.
    f(batching.pad_graphs([_graph(3, 4)], num_graphs=2))
    assert len(traces) == 2


def test_pinned_jraph_functions():
    """The exact behaviour gmem uses from jraph (version pinned too)."""
    assert jraph.__version__ == "0.0.6.dev0"
    a, b = _graph(2, 3, 0), _graph(3, 1, 1)
    bt = jraph.batch_np([a, b])
    np.testing.assert_array_equal(bt.n_node, [2, 3])
    np.testing.assert_array_equal(bt.senders, np.concatenate([a.senders, b.senders + 2]))
    np.testing.assert_array_equal(bt.receivers, np.concatenate([a.receivers, b.receivers + 2]))
    np.testing.assert_array_equal(bt.nodes["x"], np.concatenate([a.nodes["x"], b.nodes["x"]]))
    p = jraph.pad_with_graphs(bt, n_node=8, n_edge=6, n_graph=4)
    assert isinstance(p.senders, np.ndarray)      # numpy in, numpy out: host-side batching
    np.testing.assert_array_equal(p.n_node, [2, 3, 3, 0])
    np.testing.assert_array_equal(p.n_edge, [3, 1, 2, 0])
    np.testing.assert_array_equal(p.senders[4:], 5)   # padding edges: first padding node
    np.testing.assert_array_equal(p.receivers[4:], 5)
    np.testing.assert_array_equal(p.nodes["x"][5:], 0)
    np.testing.assert_array_equal(jraph.get_node_padding_mask(p), np.arange(8) < 5)
    np.testing.assert_array_equal(jraph.get_edge_padding_mask(p), np.arange(6) < 4)
    np.testing.assert_array_equal(jraph.get_graph_padding_mask(p), [True, True, False, False])
    with pytest.raises(RuntimeError):
        jraph.pad_with_graphs(bt, n_node=5, n_edge=6, n_graph=4)   # needs >= 1 padding node
