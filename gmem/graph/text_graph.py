"""Text graphs: nodes and edges that carry text, as plain Python/numpy records.

A TextGraph is what the text-attributed-graph builders, the task samplers and the user-file
readers produce, and what `gmem.graph.text_buckets` pads for the model. Messages flow
senders[e] -> receivers[e] (GOFA's edge_index rows 0 and 1).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from gmem.errors import GmemError


@dataclasses.dataclass(frozen=True, eq=False)
class TextGraph:
    """node_texts [N]; senders, receivers int64 [E]; edge_texts [E] (one text per edge)."""

    node_texts: tuple[str, ...]
    senders: np.ndarray
    receivers: np.ndarray
    edge_texts: tuple[str, ...]

    def __eq__(self, other) -> bool:
        return (isinstance(other, TextGraph) and self.node_texts == other.node_texts
                and self.edge_texts == other.edge_texts
                and np.array_equal(self.senders, other.senders)
                and np.array_equal(self.receivers, other.receivers))

    __hash__ = None

    @staticmethod
    def build(node_texts: Sequence[str], edges: Sequence[tuple[int, int]] | np.ndarray,
              edge_texts: Sequence[str], where: str = "graph") -> "TextGraph":
        """From a list of (sender, receiver) pairs; checked (see `check`)."""
        e = np.asarray(edges, np.int64).reshape(-1, 2)
        g = TextGraph(tuple(node_texts), e[:, 0].copy(), e[:, 1].copy(), tuple(edge_texts))
        return g.check(where)

    @property
    def num_nodes(self) -> int:
        return len(self.node_texts)

    @property
    def num_edges(self) -> int:
        return int(self.senders.shape[0])

    def edges(self) -> list[tuple[int, int]]:
        """[(sender, receiver), ...] in edge order."""
        return list(zip(self.senders.tolist(), self.receivers.tolist()))

    def check(self, where: str = "graph") -> "TextGraph":
        """GmemError (one line naming `where` and the field) unless the graph is consistent:
        every edge index names a node, one text per edge, texts are strings."""
        n, e = self.num_nodes, self.num_edges
        if self.senders.shape != (e,) or self.receivers.shape != (e,):
            raise GmemError(f"{where}: senders/receivers must both have shape [E]")
        if len(self.edge_texts) != e:
            raise GmemError(f"{where}: edge_texts has {len(self.edge_texts)} texts for {e} edges")
        for field, idx in (("senders", self.senders), ("receivers", self.receivers)):
            bad = np.flatnonzero((idx < 0) | (idx >= n))
            if bad.size:
                raise GmemError(f"{where}: edge {int(bad[0])} {field[:-1]} {int(idx[bad[0]])} is not "
                                f"a node (the graph has {n} nodes)")
        for field, texts in (("node_texts", self.node_texts), ("edge_texts", self.edge_texts)):
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise GmemError(f"{where}: {field}[{i}] is {type(t).__name__}, not text")
        return self

    def with_reverse_edges(self) -> "TextGraph":
        """Every edge plus its reverse with the same text, unless the reverse pair already
        exists (an undirected view for message passing; the text still says who did what)."""
        have = set(self.edges())
        extra = [(r, s, t) for (s, r), t in zip(self.edges(), self.edge_texts) if (r, s) not in have]
        if not extra:
            return self
        s, r, t = zip(*extra)
        return TextGraph(self.node_texts, np.concatenate([self.senders, np.asarray(s, np.int64)]),
                         np.concatenate([self.receivers, np.asarray(r, np.int64)]),
                         self.edge_texts + tuple(t))

    def neighbours(self) -> list[set[int]]:
        """Undirected neighbour sets (self-loops excluded)."""
        nb: list[set[int]] = [set() for _ in range(self.num_nodes)]
        for s, r in self.edges():
            if s != r:
                nb[s].add(r)
                nb[r].add(s)
        return nb
