"""GOFA's graph record: a text graph plus the nodes to generate from, and GOFA's node IDs.

A GraphRecord is what the task samplers (`tasks`) and the user-file readers (`graph_io`) give
the model side: plain Python and numpy, no tokens yet. Each Target names its node of generation
(NOG): the decoder reads that node's memory, then the question, and is trained on the answer.

Node IDs are text: "[NODEID.XY]" with XY a two-letter code AA..ZZ. Training graphs give the N
nodes N distinct random codes in ascending order (so the code order is the node order) and
prefix node texts with "This is node [NODEID.XY]."; GOFA's chat script uses the code of the
index (AA, AB, ...) and the prefix "This is [NODEID.XY].". Questions and answers are written with
"[NODE_INDEX i]" placeholders and get the codes when the record is assembled.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from gmem.errors import GmemError
from gmem.graph.text_graph import TextGraph

NUM_CODES = 26 * 26
COMPLETION_PROMPT = "Please complete the sentence of the node"
_PLACEHOLDER = re.compile(r"\[NODE_INDEX (\d+)\]")


@dataclasses.dataclass(frozen=True)
class Target:
    """node: the NOG; question: its prompt text; answer: the teacher-forcing target; label: the
    evaluation target (TAGLAS's label: the class name, "Yes"/"No", a distance, ...)."""

    node: int
    question: str
    answer: str
    label: str = ""

    @property
    def decoder_prompt(self) -> str:
        """The text the decoder sees after the memory: empty for sentence completion (GOFA's
        "legacy hard coding", A6), the question otherwise."""
        return decoder_prompt(self.question)


@dataclasses.dataclass(frozen=True)
class GraphRecord:
    """graph: node and edge texts (IDs and prompt nodes included); targets: one per NOG; task:
    which sampler or file made it ("CS", "SP", ..., "sample_graph.json")."""

    graph: TextGraph
    targets: tuple[Target, ...]
    task: str = ""

    @property
    def target_nodes(self) -> list[int]:
        return [t.node for t in self.targets]


def decoder_prompt(question: str) -> str:
    return "" if not question or question.startswith(COMPLETION_PROMPT) else question


def code(k: int) -> str:
    """Two-letter code k in 0..675: 0 -> AA, 1 -> AB, ..., 675 -> ZZ."""
    return chr(65 + k // 26) + chr(65 + k % 26)


def node_ids(n: int, rng: np.random.Generator | None = None) -> list[str]:
    """"[NODEID.XY]" for n nodes: random distinct codes in ascending order, or with rng=None the
    codes of the indices 0..n-1 (GOFA's chat convention)."""
    if n > NUM_CODES:
        raise GmemError(f"graph: {n} nodes, but node IDs have only {NUM_CODES} two-letter codes")
    ks = range(n) if rng is None else np.sort(rng.choice(NUM_CODES, n, replace=False)).tolist()
    return [f"[NODEID.{code(int(k))}]" for k in ks]


def fill_ids(text: str, ids: Sequence[str]) -> str:
    """Replace every "[NODE_INDEX i]" with ids[i]."""
    return _PLACEHOLDER.sub(lambda m: ids[int(m.group(1))], text)


def index_token(i: int) -> str:
    return f"[NODE_INDEX {i}]"
