"""k-hop subgraph sampling around target nodes of a large text graph (TAGLAS-style).

From the targets, each hop takes the not-yet-seen undirected neighbours of the last hop's nodes
and keeps at most `max_nodes_per_hop` of them, drawn uniformly; the subgraph is then induced on
all nodes kept (every edge of the big graph between two kept nodes, with its text). GOFA samples
with hops = 3 and max_nodes_per_hop = 5. Node 0..T-1 of the subgraph are the targets, in order;
the rest follow in hop order.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from gmem.graph.text_graph import TextGraph


@dataclasses.dataclass(frozen=True)
class GraphIndex:
    """Adjacency of a TextGraph built once: undirected neighbours (sorted) and the edges each
    node sends."""

    graph: TextGraph
    neighbours: tuple[np.ndarray, ...]
    out_edges: tuple[np.ndarray, ...]

    @staticmethod
    def build(graph: TextGraph) -> "GraphIndex":
        n = graph.num_nodes
        nb = graph.neighbours()
        order = np.argsort(graph.senders, kind="stable")
        bounds = np.searchsorted(graph.senders[order], np.arange(n + 1))
        return GraphIndex(graph, tuple(np.asarray(sorted(s), np.int64) for s in nb),
                          tuple(order[bounds[i]:bounds[i + 1]] for i in range(n)))


def k_hop_nodes(index: GraphIndex, targets: Sequence[int], hops: int, max_nodes_per_hop: int,
                rng: np.random.Generator) -> list[int]:
    """Targets, then each hop's sampled new neighbours (see the module docstring)."""
    kept = list(dict.fromkeys(int(t) for t in targets))
    seen = set(kept)
    frontier = list(kept)
    for _ in range(hops):
        new = sorted({int(u) for v in frontier for u in index.neighbours[v]} - seen)
        if len(new) > max_nodes_per_hop:
            new = sorted(rng.choice(new, max_nodes_per_hop, replace=False).tolist())
        if not new:
            break
        kept += new
        seen.update(new)
        frontier = new
    return kept


def induced_subgraph(index: GraphIndex, nodes: Sequence[int]) -> TextGraph:
    """The subgraph on `nodes` (renumbered 0.. in the given order), edges in big-graph order."""
    g = index.graph
    local = {int(v): i for i, v in enumerate(nodes)}
    eids = sorted(int(e) for v in local for e in index.out_edges[v]
                  if int(g.receivers[e]) in local)
    snd = np.asarray([local[int(g.senders[e])] for e in eids], np.int64)
    rcv = np.asarray([local[int(g.receivers[e])] for e in eids], np.int64)
    return TextGraph(tuple(g.node_texts[v] for v in nodes), snd, rcv,
                     tuple(g.edge_texts[e] for e in eids))


def sample_subgraph(index: GraphIndex, targets: Sequence[int], rng: np.random.Generator,
                    hops: int = 3, max_nodes_per_hop: int = 5) -> tuple[TextGraph, list[int]]:
    """(subgraph, big-graph ids of its nodes); its first len(targets) nodes are the targets."""
    nodes = k_hop_nodes(index, targets, hops, max_nodes_per_hop, rng)
    return induced_subgraph(index, nodes), nodes
