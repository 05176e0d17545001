"""Batching graphs into one padded jraph.GraphsTuple with static, bucketed sizes.

`jit` compiles once per distinct shape; subgraph sizes vary per query, so node and edge counts
are rounded up to the next size bucket (default: powers of two from 16). A batch of B graphs
is padded to a fixed B + 1 graphs (jraph's padding graph holds the padding nodes and edges),
so a short last batch keeps the shapes of a full one.

jraph functions used (pinned by tests/graph/test_batching.py): batch_np, pad_with_graphs,
get_node_padding_mask, get_edge_padding_mask, get_graph_padding_mask. Not used:
zero_out_padding and get_fully_connected_graph (they call APIs that JAX removed).
"""

from __future__ import annotations

from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from gmem.errors import GmemError

DEFAULT_BUCKETS = tuple(2 ** i for i in range(4, 17))  # 16 .. 65536


def bucket(n: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """Smallest bucket >= n; past the largest, the next power of two (a new shape, noted)."""
    for b in sorted(buckets):
        if b >= n:
            return int(b)
    return int(2 ** int(np.ceil(np.log2(max(n, 1)))))


def pad_graphs(graphs: Sequence[jraph.GraphsTuple], num_graphs: int | None = None,
               node_buckets: Sequence[int] = DEFAULT_BUCKETS,
               edge_buckets: Sequence[int] = DEFAULT_BUCKETS) -> jraph.GraphsTuple:
    """Batch graphs (numpy GraphsTuples) and pad to bucketed sizes.

    num_graphs: the batch size B the shapes are built for (default len(graphs)); the result
    has B + 1 graphs, at least one padding node (jraph needs it) and bucketed node and edge
    counts. Real graphs come first, in order.
    """
    graphs = list(graphs)
    b = len(graphs) if num_graphs is None else int(num_graphs)
    if not graphs:
        raise GmemError("pad_graphs: no graphs to batch")
    if len(graphs) > b:
        raise GmemError(f"pad_graphs: {len(graphs)} graphs do not fit num_graphs={b}")
    g = jraph.batch_np(graphs) if len(graphs) > 1 else graphs[0]
    n_node = bucket(int(np.sum(g.n_node)) + 1, node_buckets)
    n_edge = bucket(max(int(np.sum(g.n_edge)), 1), edge_buckets)
    return jraph.pad_with_graphs(g, n_node, n_edge, b + 1)


def check_graph(graph: jraph.GraphsTuple) -> None:
    """Shape checks (chex, trace-time under jit: shapes only) of a batched GraphsTuple: senders
    and receivers [E], n_node and n_edge [G], every edge feature E rows, every node feature the
    same number of rows N."""
    chex.assert_rank([graph.senders, graph.receivers, graph.n_node, graph.n_edge], 1)
    chex.assert_equal_shape([graph.senders, graph.receivers])
    chex.assert_equal_shape([graph.n_node, graph.n_edge])
    if graph.edges is not None:
        chex.assert_tree_shape_prefix(graph.edges, graph.senders.shape)
    if jax.tree_util.tree_leaves(graph.nodes):
        chex.assert_equal_shape_prefix(jax.tree_util.tree_leaves(graph.nodes), 1)


def masks(graph: jraph.GraphsTuple) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """(node_mask [N], edge_mask [E], graph_mask [G]) for a graph padded by `pad_graphs`;
    True = real. Jittable: sizes come from shapes. Real graphs must have >= 1 node (ours
    always have two centre nodes), since jraph counts trailing empty graphs as padding."""
    check_graph(graph)
    return (jraph.get_node_padding_mask(graph), jraph.get_edge_padding_mask(graph),
            jraph.get_graph_padding_mask(graph))


def edge_graph_ids(graph: jraph.GraphsTuple) -> jnp.ndarray:
    """int32 [E]: the index of the graph each edge belongs to (segment ids for per-graph
    reductions). Jittable: the length is the static edge count."""
    check_graph(graph)
    e = graph.senders.shape[0]
    g = graph.n_edge.shape[0]
    return jnp.repeat(jnp.arange(g, dtype=jnp.int32), graph.n_edge, total_repeat_length=e)


def node_graph_ids(graph: jraph.GraphsTuple) -> jnp.ndarray:
    """int32 [N]: the index of the graph each node belongs to."""
    check_graph(graph)
    n = jax_leaf_rows(graph.nodes)
    g = graph.n_node.shape[0]
    return jnp.repeat(jnp.arange(g, dtype=jnp.int32), graph.n_node, total_repeat_length=n)


def jax_leaf_rows(tree) -> int:
    """Rows of the first array in a feature tree (the static node count)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise GmemError("graph: nodes hold no arrays, so the node count is unknown")
    return leaves[0].shape[0]


def shape_key(graph: jraph.GraphsTuple) -> tuple[int, int, int]:
    """(nodes, edges, graphs) of a padded graph: one jit compilation per distinct key."""
    return (jax_leaf_rows(graph.nodes), int(graph.senders.shape[0]), int(graph.n_node.shape[0]))
