"""GraphRecords -> one padded numpy batch for gofa.model (static shapes from a few buckets).

For B records, every count is rounded up to the smallest bucket that holds the batch's largest
(so `jit` compiles once per bucket combination; unique node texts and unique edge texts are
fitted to the `texts` buckets separately):

  node_text_ids [B, Nu, Ln], node_text_len [B, Nu]   unique node texts (GOFA's x)
  edge_text_ids [B, U, Le],  edge_text_len [B, U]    unique edge texts (GOFA's edge_attr)
  node_map [B, N] (-> node text row), node_mask [B, N]
  senders, receivers [B, E] (node indices), edge_map [B, E] (-> edge text row), edge_mask [B, E]
  targets [B, Q] (NOG node indices), target_mask [B, Q]
  dec_ids, dec_mask, dec_target [B, Q, Ld]           decoder rows (gofa.layout), one per target

Padding entries point at row / node 0 and are masked; padding texts are one pad token. Texts
are cut to max_text_len tokens; node and edge slabs are each padded to the smallest of
text_len_buckets that holds their longest text (edge texts are short); a decoder row is cut (question to max_question_len, answer to max_answer_len) and
padded to a dec_len bucket. A graph over the largest bucket of any field is a GmemError naming
the field and `where` (training skips such samples first with `fits`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from gmem.graph.text_buckets import TextGraphBuckets, unique_texts
from gmem.systems.gofa.layout import (ChatLayout, SpecialIds, TextCache, bucket, encoder_slab,
                                      pad_decoder_rows, question_row)
from gmem.systems.gofa.record import GraphRecord


@dataclasses.dataclass(frozen=True)
class Packer:
    """Everything packing needs: tokenizer caches (texts with the tokenizer's special tokens,
    prompts and answers without), the chat layout, the id space, sizes and buckets."""

    texts: TextCache
    plain: TextCache
    chat: ChatLayout
    special: SpecialIds
    buckets: TextGraphBuckets
    text_len_buckets: tuple[int, ...]
    dec_len_buckets: tuple[int, ...]
    max_text_len: int
    max_question_len: int
    max_answer_len: int
    pad_id: int

    def counts(self, rec: GraphRecord) -> dict[str, int]:
        g = rec.graph
        return {"nodes": g.num_nodes, "edges": g.num_edges, "texts": max(len(set(g.node_texts)),
                len(set(g.edge_texts))), "node_texts": len(set(g.node_texts)),
                "edge_texts": len(set(g.edge_texts)), "targets": len(rec.targets)}

    def fits(self, rec: GraphRecord) -> bool:
        """Whether the record fits the largest bucket of every field (training skips others)."""
        c = self.counts(rec)
        return all(c[f] <= max(getattr(self.buckets, f)) for f in ("nodes", "edges", "texts", "targets")) and all(
            len(self._row(rec, t)[0]) <= max(self.dec_len_buckets) for t in rec.targets)

    def _row(self, rec: GraphRecord, target) -> tuple[list[int], int]:
        q = target.decoder_prompt
        q_ids = self.plain(q)[:self.max_question_len] if q else []
        return question_row(self.chat, self.special, q_ids, self.plain(target.answer), self.max_answer_len)

    def pack(self, records: Sequence[GraphRecord], where: str = "graph", decoder: bool = True
             ) -> dict[str, np.ndarray]:
        """The batch of the module docstring (decoder=False: without the dec_* rows, for
        generation, which builds its own prompts)."""
        most = lambda f: max(max(self.counts(r)[f] for r in records), 1)
        sizes = {f: self.buckets.fit(f, most(f), where) for f in ("nodes", "edges", "targets")}
        sizes.update({f: self.buckets.fit("texts", most(f), where) for f in ("node_texts", "edge_texts")})
        n, e, q = sizes["nodes"], sizes["edges"], sizes["targets"]
        t = {"node": sizes["node_texts"], "edge": sizes["edge_texts"]}
        tables, rows = [], []
        for r in records:
            g = r.graph
            node_texts, node_map, _ = unique_texts(g.node_texts, [])
            edge_texts, _, edge_map = unique_texts([], g.edge_texts)
            tables.append((node_texts, node_map, edge_texts, edge_map))
            rows.append([self._row(r, tg) for tg in r.targets] if decoder else [])
        width = {}
        for key, col in (("node", 0), ("edge", 2)):
            longest = max([len(self.texts(s)) for tb in tables for s in tb[col]] + [1])
            width[key] = bucket(min(longest, self.max_text_len), self.text_len_buckets, f"{where}: text length")
        ld = bucket(max([len(x) for rs in rows for x, _ in rs] + [1]), self.dec_len_buckets,
                    f"{where}: decoder row length (question + answer)") if decoder else 0
        b = len(records)
        out = {k: np.zeros((b,) + s, dt) for k, s, dt in (
            ("node_text_ids", (t["node"], width["node"]), np.int32), ("node_text_len", (t["node"],), np.int32),
            ("edge_text_ids", (t["edge"], width["edge"]), np.int32), ("edge_text_len", (t["edge"],), np.int32),
            ("node_map", (n,), np.int32), ("node_mask", (n,), bool),
            ("senders", (e,), np.int32), ("receivers", (e,), np.int32), ("edge_map", (e,), np.int32),
            ("edge_mask", (e,), bool), ("targets", (q,), np.int32), ("target_mask", (q,), bool))}
        dec = []
        for i, (r, (node_texts, node_map, edge_texts, edge_map), rs) in enumerate(zip(records, tables, rows)):
            g = r.graph
            for key, texts in (("node", node_texts), ("edge", edge_texts)):
                ids, lens = encoder_slab([self.texts(s) for s in texts] + [[]] * (t[key] - len(texts)), width[key],
                                         self.pad_id)
                out[f"{key}_text_ids"][i], out[f"{key}_text_len"][i] = ids, lens
            out["node_map"][i, :g.num_nodes] = node_map
            out["node_mask"][i, :g.num_nodes] = True
            out["senders"][i, :g.num_edges] = g.senders
            out["receivers"][i, :g.num_edges] = g.receivers
            out["edge_map"][i, :g.num_edges] = edge_map
            out["edge_mask"][i, :g.num_edges] = True
            out["targets"][i, :len(r.targets)] = r.target_nodes
            out["target_mask"][i, :len(r.targets)] = True
            dec += rs + [([self.pad_id], 1)] * (q - len(rs))
        if decoder:
            d = pad_decoder_rows(dec, ld, self.pad_id)
            out.update({k: v.reshape(b, q, ld) for k, v in d.items()})
        return out


def make_packer(tokenizer, options, special: SpecialIds, pad_id: int) -> Packer:
    """From a GOFAOptions-like section (buckets, lengths)."""
    o = options
    return Packer(TextCache(tokenizer, True), TextCache(tokenizer, False), ChatLayout.from_tokenizer(tokenizer),
                  special, TextGraphBuckets(tuple(o.nodes_buckets), tuple(o.edges_buckets), tuple(o.texts_buckets),
                                            tuple(o.targets_buckets)),
                  tuple(o.text_len_buckets), tuple(o.dec_len_buckets), o.max_text_len, o.max_question_len,
                  o.max_answer_len, pad_id)
