"""Assembling a GraphRecord from a subgraph and task questions: node IDs and prompt nodes (A3).

A question about more than one node, or any question when `add_prompt_graph` is on (GOFA's
fine-tuning default), becomes an extra *prompt node* whose text is the question. It is joined to
each node the question is about by an edge node -> prompt ("This edge connects the nodes in
graph to a prompt node.") and one prompt -> node ("This edge connects the prompt node to a node
in the graph."), and it is the NOG. Otherwise (pretraining sentence completion) the node the
question is about is itself the NOG.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from gmem.graph.text_graph import TextGraph
from gmem.systems.gofa.record import GraphRecord, Target, fill_ids, node_ids

TO_PROMPT = "This edge connects the nodes in graph to a prompt node."
FROM_PROMPT = "This edge connects the prompt node to a node in the graph."
TRAIN_PREFIX = "This is node {id}."    # training graphs (random codes)
CHAT_PREFIX = "This is {id}."          # GOFA's chat script (codes of the indices)


@dataclasses.dataclass(frozen=True)
class Question:
    """A task question before IDs are given: texts use "[NODE_INDEX i]" placeholders; nodes are
    the subgraph nodes it is about (the prompt node is joined to them)."""

    nodes: tuple[int, ...]
    question: str
    answer: str
    label: str = ""


def assemble(sub: TextGraph, questions: Sequence[Question], rng: np.random.Generator | None,
             task: str, node_texts: Sequence[str] | None = None, add_prompt_graph: bool = False,
             prefix: str = TRAIN_PREFIX) -> GraphRecord:
    """The record: node texts prefixed with their IDs (random sorted codes from rng, or the
    index codes with rng=None), placeholders filled, prompt nodes added (module docstring).

    node_texts replaces the subgraph's texts (sentence completion keeps only the left parts).
    """
    base = list(sub.node_texts if node_texts is None else node_texts)
    ids = node_ids(len(base), rng)
    texts = [f"{prefix.format(id=ids[i])} {t}".strip() for i, t in enumerate(base)]
    edges, edge_texts = sub.edges(), list(sub.edge_texts)
    targets = []
    for q in questions:
        question, answer, label = (fill_ids(s, ids) for s in (q.question, q.answer, q.label))
        if add_prompt_graph or len(q.nodes) > 1:
            p = len(texts)
            texts.append(question)
            for v in q.nodes:
                edges += [(v, p), (p, v)]
                edge_texts += [TO_PROMPT, FROM_PROMPT]
            targets.append(Target(p, question, answer, label))
        else:
            targets.append(Target(q.nodes[0], question, answer, label))
    graph = TextGraph.build(texts, edges if edges else np.zeros((0, 2), np.int64), edge_texts, task)
    return GraphRecord(graph, tuple(targets), task)
