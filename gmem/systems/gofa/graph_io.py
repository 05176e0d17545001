"""Users' graphs as GOFA GraphRecords: GOFA's `sample_graph.json` and a PyG-style JSON (A11).

sample_graph.json:
    {"node": {"0": "<text>", "1": "<text>", "2": "<question text>"},
     "edge": [{"source": 0, "target": 1, "relation": {"content": "<edge text>", ...}}, ...],
     "question": [2],      # nodes whose text is a question: NOG, decoder prompt = that text
     "complete": []}       # nodes to complete: NOG, empty decoder prompt
  Node keys are integers (as strings); nodes are ordered by them. Only relation.content is
  used as the edge text.
PyG-style JSON (GOFA's `pyg_to_gofa_dict` input as a file):
    {"x": ["<text>", ...], "edge_index": [[sources...], [targets...]], "edge_attr": ["<text>", ...],
     "question": [0, 0, 1], "completion": [0, 0, 0]}     # 0/1 masks over the nodes

Both become the same record, as GOFA's chat script builds it: question nodes keep their raw
text; every other node gets the prefix "This is [NODEID.XY]." with XY the code of its index
(AA, AB, ...). Targets are the question nodes, then the complete nodes, in ascending order
(kept aligned, unlike the original's dict order: A14.5). A target's answer is the node's own
text (unused by generation). Any problem is one GmemError line naming the file and the field.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from gmem.errors import GmemError
from gmem.graph.text_buckets import TextGraphBuckets, pad_text_graph
from gmem.graph.text_graph import TextGraph
from gmem.systems.gofa.prompt_graph import CHAT_PREFIX
from gmem.systems.gofa.record import GraphRecord, Target, node_ids


def load_json(path: str | pathlib.Path) -> Any:
    """Parsed JSON; GmemError for a missing file, non-UTF-8 bytes or bad JSON, with its line."""
    p = pathlib.Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise GmemError(f"{p}: cannot read graph file ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise GmemError(f"{p}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                        f"{e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise GmemError(f"{p}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise GmemError(f"{where}: expected text, got {type(value).__name__}")
    if not value.strip():
        raise GmemError(f"{where}: empty text")
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GmemError(f"{where}: expected an integer node id, got {value!r}")
    return value


def _list(obj: dict, key: str, where: str, default: list | None = None) -> list:
    value = obj.get(key, default)
    if not isinstance(value, list):
        raise GmemError(f"{where}.{key}: expected a list, got {type(value).__name__}")
    return value


def _record(texts: list[str], edges: list[tuple[int, int]], edge_texts: list[str],
            questions: list[int], completes: list[int], where: str) -> GraphRecord:
    both = sorted(set(questions) & set(completes))
    if both:
        raise GmemError(f"{where}: node {both[0]} is both a question and a complete node")
    if not questions and not completes:
        raise GmemError(f"{where}: no question or complete node: nothing to answer")
    ids = node_ids(len(texts))
    asked = set(questions)
    node_texts = [t if i in asked else f"{CHAT_PREFIX.format(id=ids[i])} {t}"
                  for i, t in enumerate(texts)]
    graph = TextGraph.build(node_texts, edges if edges else np.zeros((0, 2), np.int64),
                            edge_texts, where)
    targets = [Target(q, texts[q], texts[q]) for q in sorted(questions)]
    targets += [Target(c, "", texts[c]) for c in sorted(completes)]
    return GraphRecord(graph, tuple(targets), pathlib.Path(where).name)


def from_sample_graph(obj: Any, where: str) -> GraphRecord:
    """GOFA's sample_graph.json layout (module docstring)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("node"), dict):
        raise GmemError(f"{where}: node: expected an object of node id -> text")
    keys = {}
    for k in obj["node"]:
        try:
            keys[int(k)] = k
        except ValueError:
            raise GmemError(f"{where}: node[{k!r}]: node ids must be integers") from None
    order = sorted(keys)
    pos = {nid: i for i, nid in enumerate(order)}
    texts = [_text(obj["node"][keys[nid]], f"{where}: node[{keys[nid]!r}]") for nid in order]

    def node(value, field):
        nid = _int(value, f"{where}: {field}")
        if nid not in pos:
            raise GmemError(f"{where}: {field}: {nid} is not a node")
        return pos[nid]

    edges, edge_texts = [], []
    for e, item in enumerate(_list(obj, "edge", f"{where}: edge", [])):
        f = f"edge[{e}]"
        if not isinstance(item, dict):
            raise GmemError(f"{where}: {f}: expected an object with source, target, relation")
        for key in ("source", "target"):
            if key not in item:
                raise GmemError(f"{where}: {f}.{key}: missing")
        rel = item.get("relation")
        if not isinstance(rel, dict) or "content" not in rel:
            raise GmemError(f"{where}: {f}.relation.content: missing")
        edges.append((node(item["source"], f"{f}.source"), node(item["target"], f"{f}.target")))
        edge_texts.append(_text(rel["content"], f"{where}: {f}.relation.content"))
    qs = [node(v, f"question[{i}]") for i, v in enumerate(_list(obj, "question", f"{where}: question", []))]
    cs = [node(v, f"complete[{i}]") for i, v in enumerate(_list(obj, "complete", f"{where}: complete", []))]
    return _record(texts, edges, edge_texts, qs, cs, where)


def from_pyg_json(obj: Any, where: str) -> GraphRecord:
    """The PyG-style layout (module docstring)."""
    if not isinstance(obj, dict):
        raise GmemError(f"{where}: expected an object with x, edge_index, edge_attr")
    texts = [_text(t, f"{where}: x[{i}]") for i, t in enumerate(_list(obj, "x", f"{where}: x"))]
    n = len(texts)
    ei = obj.get("edge_index", [[], []])
    if not (isinstance(ei, list) and len(ei) == 2 and all(isinstance(r, list) for r in ei)
            and len(ei[0]) == len(ei[1])):
        raise GmemError(f"{where}: edge_index: expected two lists of equal length [sources, targets]")
    attr = _list(obj, "edge_attr", f"{where}: edge_attr", [])
    if len(attr) != len(ei[0]):
        raise GmemError(f"{where}: edge_attr: {len(attr)} texts for {len(ei[0])} edges")
    edges = []
    for e, (s, t) in enumerate(zip(*ei)):
        pair = []
        for row, v in ((0, s), (1, t)):
            v = _int(v, f"{where}: edge_index[{row}][{e}]")
            if not 0 <= v < n:
                raise GmemError(f"{where}: edge_index[{row}][{e}]: {v} is not a node (x has {n} texts)")
            pair.append(v)
        edges.append(tuple(pair))
    edge_texts = [_text(t, f"{where}: edge_attr[{e}]") for e, t in enumerate(attr)]

    def mask(key):
        m = _list(obj, key, f"{where}: {key}", [0] * n)
        if len(m) != n:
            raise GmemError(f"{where}: {key}: {len(m)} entries for {n} nodes")
        bad = [i for i, v in enumerate(m) if v not in (0, 1)]
        if bad:
            raise GmemError(f"{where}: {key}[{bad[0]}]: expected 0 or 1, got {m[bad[0]]!r}")
        return [i for i, v in enumerate(m) if v]
    return _record(texts, edges, edge_texts, mask("question"), mask("completion"), where)


def read_graph(path: str | pathlib.Path, buckets: TextGraphBuckets | None = None) -> GraphRecord:
    """A user's graph file in either layout (told apart by its "node" or "x" field); with
    buckets, also checked to fit the largest bucket of every field."""
    where = str(path)
    obj = load_json(path)
    if isinstance(obj, dict) and "node" in obj:
        rec = from_sample_graph(obj, where)
    elif isinstance(obj, dict) and "x" in obj:
        rec = from_pyg_json(obj, where)
    else:
        raise GmemError(f"{where}: neither GOFA's sample_graph layout (a 'node' field) nor the "
                        f"PyG layout (an 'x' field)")
    if buckets is not None:
        pad_text_graph(rec.graph, rec.target_nodes, buckets, where)
    return rec
