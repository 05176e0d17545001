"""Users' graph files: GOFA's sample_graph.json layout and the PyG-style JSON give the same
record; every bad graph is one GmemError line naming the file and the field."""

import json

import pytest

from gmem.errors import GmemError
from gmem.graph.text_buckets import TextGraphBuckets
from gmem.systems.gofa import graph_io, prompt_graph
from gmem.systems.gofa.record import Target

TO, FROM = prompt_graph.TO_PROMPT, prompt_graph.FROM_PROMPT
SAMPLE = {
    "question": [2], "complete": [3],
    "node": {"0": "Name three primary colours.", "1": "Red, yellow and blue.",
             "2": "Which of them is the warmest?", "3": "Blue is a colour"},
    "edge": [{"source": 0, "target": 1, "relation": {"rating": "5", "content": "The target answers the source."}},
             {"source": 0, "target": 2, "relation": {"content": TO}},
             {"source": 1, "target": 2, "relation": {"content": TO}},
             {"source": 2, "target": 0, "relation": {"content": FROM}},
             {"source": 2, "target": 1, "relation": {"content": FROM}},
             {"source": 1, "target": 3, "relation": {"content": "Related."}}]}
PYG = {"x": [SAMPLE["node"][str(i)] for i in range(4)],
       "edge_index": [[e["source"] for e in SAMPLE["edge"]], [e["target"] for e in SAMPLE["edge"]]],
       "edge_attr": [e["relation"]["content"] for e in SAMPLE["edge"]],
       "question": [0, 0, 1, 0], "completion": [0, 0, 0, 1]}


def _write(tmp_path, obj, name="g.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return p


def test_sample_graph_layout(tmp_path):
    rec = graph_io.read_graph(_write(tmp_path, SAMPLE))
    g = rec.graph
    assert g.node_texts == ("This is [NODEID.AA]. Name three primary colours.",
                            "This is [NODEID.AB]. Red, yellow and blue.",
                            "Which of them is the warmest?",
                            "This is [NODEID.AD]. Blue is a colour")
    assert g.edges() == [(0, 1), (0, 2), (1, 2), (2, 0), (2, 1), (1, 3)]
    assert g.edge_texts[0] == "The target answers the source." and g.edge_texts[3] == FROM
    assert rec.targets == (Target(2, "Which of them is the warmest?", "Which of them is the warmest?"),
                           Target(3, "", "Blue is a colour"))
    assert [t.decoder_prompt for t in rec.targets] == ["Which of them is the warmest?", ""]
    assert rec.task == "g.json"


def test_pyg_layout_gives_the_same_record(tmp_path):
    a = graph_io.read_graph(_write(tmp_path, SAMPLE, "a.json"))
    b = graph_io.read_graph(_write(tmp_path, PYG, "a.json"))
    assert a.graph == b.graph and a.targets == b.targets


def test_node_keys_order_the_nodes(tmp_path):
    obj = {"node": {"10": "ten", "2": "two", "7": "seven?"}, "question": [7],
           "edge": [{"source": 10, "target": 7, "relation": {"content": "to q"}}]}
    rec = graph_io.read_graph(_write(tmp_path, obj))
    assert rec.graph.node_texts == ("This is [NODEID.AA]. two", "seven?",
                                    "This is [NODEID.AC]. ten")
    assert rec.graph.edges() == [(2, 1)] and rec.target_nodes == [1]


def _bad(tmp_path, obj, **changes):
    obj = json.loads(json.dumps(obj))
    for path, value in changes.items():
        keys = path.split("__")
        cur = obj
        for k in keys[:-1]:
            cur = cur[int(k)] if isinstance(cur, list) else cur[k]
        last = keys[-1]
        if isinstance(cur, list):
            cur[int(last)] = value
        elif value is KeyError:
            del cur[last]
        else:
            cur[last] = value
    return _write(tmp_path, obj)


@pytest.mark.parametrize("changes, message", [
    (dict(edge__0__target=9), r"g.json: edge\[0\].target: 9 is not a node$"),
    (dict(edge__5__source="1"), r"g.json: edge\[5\].source: expected an integer node id, got '1'$"),
    (dict(edge__1__relation={"rating": 1}), r"g.json: edge\[1\].relation.content: missing$"),
    (dict(edge__2__relation__content="  "), r"g.json: edge\[2\].relation.content: empty text$"),
    (dict(question=[4]), r"g.json: question\[0\]: 4 is not a node$"),
    (dict(complete=[2]), r"g.json: node 2 is both a question and a complete node$"),
    (dict(question=[], complete=[]), r"g.json: no question or complete node: nothing to answer$"),
    (dict(node__1=""), r"g.json: node\['1'\]: empty text$"),
    (dict(node__1=3), r"g.json: node\['1'\]: expected text, got int$"),
    (dict(node__x="a"), r"g.json: node\['x'\]: node ids must be integers$"),
    (dict(edge__3__target=KeyError), r"g.json: edge\[3\].target: missing$"),
])
def test_sample_graph_errors(tmp_path, changes, message):
    with pytest.raises(GmemError, match=message) as e:
        graph_io.read_graph(_bad(tmp_path, SAMPLE, **changes))
    assert "\n" not in str(e.value) and str(tmp_path / "g.json") in str(e.value)


@pytest.mark.parametrize("changes, message", [
    (dict(edge_index__1__0=4), r"g.json: edge_index\[1\]\[0\]: 4 is not a node \(x has 4 texts\)$"),
    (dict(edge_attr=["a"]), r"g.json: edge_attr: 1 texts for 6 edges$"),
    (dict(x__2=""), r"g.json: x\[2\]: empty text$"),
    (dict(question=[0, 1]), r"g.json: question: 2 entries for 4 nodes$"),
    (dict(completion=[0, 0, 0, 2]), r"g.json: completion\[3\]: expected 0 or 1, got 2$"),
    (dict(edge_index=[[0, 1]]), r"g.json: edge_index: expected two lists of equal length"),
])
def test_pyg_errors(tmp_path, changes, message):
    with pytest.raises(GmemError, match=message):
        graph_io.read_graph(_bad(tmp_path, PYG, **changes))


def test_file_level_errors(tmp_path):
    p = _write(tmp_path, '{\n  "node": {"0": "a"},\n  "question": [0,]\n}')
    with pytest.raises(GmemError, match=r"g.json:3:\d+: invalid JSON: "):
        graph_io.read_graph(p)
    p = tmp_path / "latin1.json"
    p.write_bytes('{"node": {"0": "ok"},\n "question": [0], "x": "caf\u00e9"}'.encode("latin-1"))
    with pytest.raises(GmemError, match=r"latin1.json:2: not UTF-8 text \(byte 0xe9 at offset \d+\)$"):
        graph_io.read_graph(p)
    with pytest.raises(GmemError, match=r"missing.json: cannot read graph file"):
        graph_io.read_graph(tmp_path / "missing.json")
    with pytest.raises(GmemError, match=r"g.json: neither GOFA's sample_graph layout"):
        graph_io.read_graph(_write(tmp_path, [1, 2]))


def test_graph_over_the_bucket_limits(tmp_path):
    p = _write(tmp_path, SAMPLE)
    graph_io.read_graph(p, TextGraphBuckets())
    with pytest.raises(GmemError, match=r"g.json: 4 nodes exceed the largest bucket 2 \(buckets.nodes"):
        graph_io.read_graph(p, TextGraphBuckets(nodes=(2,)))
