"""What both GMT stages share: the knowledge graph, its neighbour index, the relation table
and the graph encoder's config, built from GraphOptions."""

from __future__ import annotations

import dataclasses

import numpy as np

from gmem.errors import GmemError
from gmem.graph.kg import NeighbourIndex
from gmem.graph.relations import relation_semantics, relation_texts
from gmem.systems.gmt import data as D
from gmem.systems.gmt.graph import GraphMemoryConfig
from gmem.systems.lm import json_safe


class KGSystemBase:
    """Mixin: self.p (GraphOptions) -> self.kg, self.splits, self.index, self.known, self.hist.

    self._table, when set before the first _rel_table() call, is the relation table to use (an
    imported SGM's); otherwise it is made from rel_semantics, rel_text and rel_definitions."""

    stage: int = 0
    _table = None

    def _init_kg(self, p) -> None:
        self.p = p
        self.kg, self.splits = D.load_kg(p.kg, p.add_inverse, p.triple_file, p.triple_format.value)
        self.index = NeighbourIndex.build(self.kg)
        self.known = np.concatenate([s for s in self.splits.values()], 0)
        self._padded = self.index.padded()
        self.hist = self.index.relation_histogram(np.arange(self.kg.num_entities))
        if self._table is not None and self._table.shape[0] != self.kg.num_edge_relations:
            raise GmemError(f"the imported relation table has {self._table.shape[0]} rows; the KG "
                            f"{p.kg} (add_inverse={p.add_inverse}) has {self.kg.num_edge_relations} edge relations")

    def _graph_config(self, llm_dim: int, **memory) -> GraphMemoryConfig:
        """memory: num_memory_tokens, memory_heads, memory_norm (stage 2; stage 1 has no memory)."""
        p = self.p
        return GraphMemoryConfig(num_edge_relations=self.kg.num_edge_relations, rel_dim=self._rel_table().shape[1],
                                 graph_dim=p.graph_dim, sgm_layers=p.sgm_layers, sgm_heads=p.sgm_heads,
                                 top_k=p.top_k, dropout=p.graph_dropout, llm_dim=llm_dim, **memory)

    def _rel_table(self):
        if self._table is None:
            texts = relation_texts(self.kg.relations, self.p.rel_text.value, self.p.rel_definitions)
            self._table = relation_semantics(texts, self.p.rel_semantics, add_inverse=self.kg.add_inverse,
                                             dim=self.p.graph_dim)
        return self._table

    def _graph_structure(self) -> dict:
        return {"system": "gmt", "stage": self.stage, "kg": self.p.kg,
                "graph": json_safe({k: v for k, v in dataclasses.asdict(self.gcfg).items()
                                    if k != "memory_norm"})}   # no parameters: not structure
