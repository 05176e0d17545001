"""Padding text graphs to a few static size buckets, so `jit` compiles once per bucket.

A text graph becomes a table of unique texts plus index maps into it (GOFA's `x` / `node_map`
and `edge_attr` / `edge_map`, pooled into one table): the LLM encodes each unique text once and
node rows are expanded by a gather, h_nodes = h_texts[node_map]. Every count is rounded up to
the smallest bucket that holds it:

    nodes   N -> N_pad      node_map [N_pad], node_mask
    edges   E -> E_pad      senders, receivers, edge_map [E_pad], edge_mask
    texts   T -> T_pad      texts [T_pad] (node texts first, then edge texts not already there)
    targets Q -> Q_pad      targets [Q_pad] (the nodes to generate from), target_mask

Padding entries point at row / node 0 and are masked, so any index stays in range; padding
texts are "". A graph over the largest bucket of any field is a GmemError naming that field.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jraph
import numpy as np

from gmem.errors import GmemError
from gmem.graph.text_graph import TextGraph


@dataclasses.dataclass(frozen=True)
class TextGraphBuckets:
    """Allowed padded sizes per field, ascending. Defaults fit GOFA's size filter (A8:
    N + unique edge texts < 40) with prompt nodes added."""

    nodes: tuple[int, ...] = (8, 16, 32, 64)
    edges: tuple[int, ...] = (16, 32, 64, 128, 256)
    texts: tuple[int, ...] = (8, 16, 32, 64, 128)
    targets: tuple[int, ...] = (1, 2, 4, 8)

    def fit(self, field: str, n: int, where: str = "graph") -> int:
        """Smallest bucket of `field` that holds n; GmemError past the largest."""
        sizes = sorted(getattr(self, field))
        for b in sizes:
            if b >= n:
                return int(b)
        raise GmemError(f"{where}: {n} {field} exceed the largest bucket {sizes[-1]} "
                        f"(buckets.{field} = {list(sizes)}); make the graph smaller or add a bucket")


@dataclasses.dataclass(frozen=True)
class PaddedTextGraph:
    """A text graph at bucketed sizes; see the module docstring. Arrays are numpy int32/bool."""

    texts: tuple[str, ...]
    text_mask: np.ndarray
    node_map: np.ndarray
    node_mask: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    edge_map: np.ndarray
    edge_mask: np.ndarray
    targets: np.ndarray
    target_mask: np.ndarray

    @property
    def shape_key(self) -> tuple[int, int, int, int]:
        """(N_pad, E_pad, T_pad, Q_pad): one compilation per distinct key."""
        return (self.node_map.shape[0], self.senders.shape[0], len(self.texts),
                self.targets.shape[0])

    def graphs_tuple(self) -> jraph.GraphsTuple:
        """The structure as a jraph.GraphsTuple: graph 0 is the real graph, graph 1 holds the
        padding (jraph's convention); nodes/edges features hold the text rows and masks."""
        n, e = int(self.node_mask.sum()), int(self.edge_mask.sum())
        return jraph.GraphsTuple(
            nodes={"text_row": self.node_map, "mask": self.node_mask},
            edges={"text_row": self.edge_map, "mask": self.edge_mask},
            senders=self.senders, receivers=self.receivers, globals=None,
            n_node=np.asarray([n, self.node_map.shape[0] - n], np.int32),
            n_edge=np.asarray([e, self.senders.shape[0] - e], np.int32))


def unique_texts(node_texts: Sequence[str], edge_texts: Sequence[str]
                 ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, node_map, edge_map): unique texts in first-appearance order, node texts first."""
    rows: dict[str, int] = {}
    node_map = [rows.setdefault(t, len(rows)) for t in node_texts]
    edge_map = [rows.setdefault(t, len(rows)) for t in edge_texts]
    return list(rows), np.asarray(node_map, np.int32), np.asarray(edge_map, np.int32)


def _pad(a: Sequence[int], size: int, dtype=np.int32) -> np.ndarray:
    out = np.zeros(size, dtype)
    out[:len(a)] = a
    return out


def _mask(n: int, size: int) -> np.ndarray:
    return np.arange(size) < n


def pad_text_graph(graph: TextGraph, targets: Sequence[int] = (),
                   buckets: TextGraphBuckets = TextGraphBuckets(),
                   where: str = "graph") -> PaddedTextGraph:
    """Pad one checked text graph (and its target nodes) to the buckets.

    `where` names the source (a file, a sample) in errors. Real entries keep their order, so
    node i of `graph` is row i of node_map and edge e is entry e of senders."""
    graph.check(where)
    targets = [int(t) for t in targets]
    bad = [t for t in targets if not 0 <= t < graph.num_nodes]
    if bad:
        raise GmemError(f"{where}: target {bad[0]} is not a node (the graph has "
                        f"{graph.num_nodes} nodes)")
    texts, node_map, edge_map = unique_texts(graph.node_texts, graph.edge_texts)
    n_pad = buckets.fit("nodes", max(graph.num_nodes, 1), where)
    e_pad = buckets.fit("edges", max(graph.num_edges, 1), where)
    t_pad = buckets.fit("texts", max(len(texts), 1), where)
    q_pad = buckets.fit("targets", max(len(targets), 1), where)
    return PaddedTextGraph(
        texts=tuple(texts) + ("",) * (t_pad - len(texts)), text_mask=_mask(len(texts), t_pad),
        node_map=_pad(node_map, n_pad), node_mask=_mask(graph.num_nodes, n_pad),
        senders=_pad(graph.senders, e_pad), receivers=_pad(graph.receivers, e_pad),
        edge_map=_pad(edge_map, e_pad), edge_mask=_mask(graph.num_edges, e_pad),
        targets=_pad(targets, q_pad), target_mask=_mask(len(targets), q_pad))
