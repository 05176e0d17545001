"""GOFA task samplers: answers checked on hand-made graphs and against networkx, node IDs and
prompt nodes as spec A3 describes, the size filter, subgraph sampling, and scoring."""

import itertools
import re

import networkx as nx
import numpy as np
import pytest

from gmem.errors import GmemError
from gmem.graph import sampling
from gmem.graph.tag import TextAttributedGraph
from gmem.graph.text_graph import TextGraph
from gmem.systems.gofa import prompt_graph, record, scoring, tasks

#   1          square 0-1-2-3 with a tail 2-4-6, node 5 isolated
#  / \
# 0   2 - 4 - 6
#  \ /
#   3
EDGES = [(0, 1), (0, 3), (1, 2), (3, 2), (2, 4), (4, 6)]
TEXTS = [f"text of node {i} with some more words here" for i in range(7)]


def _graph(undirected=True):
    g = TextGraph.build(TEXTS, EDGES, [f"{a} links {b}" for a, b in EDGES])
    return g.with_reverse_edges() if undirected else g


def test_shortest_paths_and_common_neighbours_by_hand():
    nb = _graph().neighbours()
    assert tasks.shortest_paths(nb, 0, 2) == (2, [[0, 1, 2], [0, 3, 2]])
    assert tasks.shortest_paths(nb, 0, 6) == (4, [[0, 1, 2, 4, 6], [0, 3, 2, 4, 6]])
    assert tasks.shortest_paths(nb, 6, 1) == (3, [[6, 4, 2, 1]])
    assert tasks.shortest_paths(nb, 0, 5) == (None, [])
    assert tasks.shortest_paths(nb, 3, 3) == (0, [[3]])
    assert sorted(nb[0] & nb[2]) == [1, 3] and not nb[5]


def test_sp_and_cn_questions_match_networkx_on_random_graphs():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(3, 12))
        pairs = {tuple(sorted(p)) for p in rng.integers(0, n, (int(rng.integers(1, 2 * n)), 2))
                 if p[0] != p[1]}
        g = TextGraph.build([f"t{i}" for i in range(n)], sorted(pairs), ["e"] * len(pairs))
        G = nx.Graph(sorted(pairs))
        G.add_nodes_from(range(n))
        for q in tasks.shortest_path_questions(g, 1, rng, num=3):
            i, j = q.nodes
            assert i == 0 and j >= 1
            if nx.has_path(G, i, j):
                paths = sorted(nx.all_shortest_paths(G, i, j))
                assert q.label == str(len(paths[0]) - 1)
                text = "; ".join(" -> ".join(f"[NODE_INDEX {v}]" for v in p) for p in paths)
                assert q.answer == f"The shortest path distance is {q.label}. Shortest paths: {text}."
            else:
                assert q.label == "inf" and q.answer.endswith(
                    f"There is no path between [NODE_INDEX {i}] and [NODE_INDEX {j}].")
        for q in tasks.common_neighbour_questions(g, 1, rng, num=3):
            i, j = q.nodes
            common = sorted(set(G[i]) & set(G[j]))
            assert q.label == str(len(common))
            if common:
                assert q.answer == (f"There are {len(common)} common neighbors between two nodes, "
                                    "including " + "; ".join(f"[NODE_INDEX {v}]" for v in common) + ".")
            else:
                assert q.answer == "There is no common neighbors between two nodes."


def test_assembled_sp_record_has_ids_and_a_prompt_node():
    g = _graph()
    rng = np.random.default_rng(1)
    qs = tasks.shortest_path_questions(g, 1, rng, num=2)
    rec = prompt_graph.assemble(g, qs, rng, "SP")
    ids = [re.match(r"This is node (\[NODEID\.[A-Z]{2}\])\. ", t).group(1) for t in rec.graph.node_texts[:7]]
    assert ids == sorted(ids) and len(set(ids)) == 7
    assert [t.split("]. ", 1)[1] for t in rec.graph.node_texts[:7]] == TEXTS
    assert rec.graph.num_nodes == 9 and rec.target_nodes == [7, 8]
    for t, q in zip(rec.targets, qs):
        i, j = q.nodes
        assert rec.graph.node_texts[t.node] == t.question == t.decoder_prompt
        assert "NODE_INDEX" not in t.question + t.answer and ids[i] in t.question and ids[j] in t.question
        in_prompt = [(s, r, x) for (s, r), x in zip(rec.graph.edges(), rec.graph.edge_texts) if t.node in (s, r)]
        assert sorted(in_prompt) == sorted([(i, t.node, prompt_graph.TO_PROMPT), (t.node, i, prompt_graph.FROM_PROMPT),
                                            (j, t.node, prompt_graph.TO_PROMPT), (t.node, j, prompt_graph.FROM_PROMPT)])
    # The answer for the pair (0, 2) if drawn: both paths in code order.
    d, paths = tasks.shortest_paths(g.neighbours(), 0, 6)
    assert d == 4


def test_sentence_completion_keeps_the_node_as_nog():
    g = _graph()
    rng = np.random.default_rng(2)
    texts, qs = tasks.sentence_completion(g, 1, rng, tasks.TaskConfig(cs_additional=2))
    assert [q.nodes[0] for q in qs][0] == 0 and len(qs) == 3
    for q in qs:
        v = q.nodes[0]
        left = texts[v]
        assert (left + " " + q.answer).strip() == TEXTS[v]
        assert len(left.split()) <= len(TEXTS[v].split()) // 2
    rec = prompt_graph.assemble(g, qs, rng, "CS", node_texts=texts)
    assert rec.graph.num_nodes == 7 and rec.target_nodes == [q.nodes[0] for q in qs]
    for t, q in zip(rec.targets, qs):
        assert t.decoder_prompt == "" and t.question.startswith(record.COMPLETION_PROMPT + " [NODEID.")
        assert rec.graph.node_texts[t.node].endswith(texts[q.nodes[0]])
    assert tasks.split_sentence("one", 64, rng) == ("one", "")
    lefts = {len(tasks.split_sentence(" ".join(["w"] * 300), 64, rng)[0].split()) for _ in range(400)}
    assert max(lefts) <= 64 and min(lefts) == 0


def test_information_retrieval_both_directions():
    g = _graph()
    rng = np.random.default_rng(3)
    for q in tasks.retrieval_questions(g, rng, num=5):
        a = int(re.search(r"NODE_INDEX (\d+)", q.question).group(1))
        assert q.answer == TEXTS[a] and a in q.nodes and 2 <= len(q.nodes) <= 7
    for q in tasks.retrieval_questions(g, rng, num=5, content_to_key=True):
        a = int(re.search(r"NODE_INDEX (\d+)", q.answer).group(1))
        assert q.question == tasks.IR_CONTENT_PROMPT + TEXTS[a] and a in q.nodes
    q = tasks.retrieval_questions(g, rng, num=1, content_to_key=True)[0]
    rec = prompt_graph.assemble(g, [q], rng, "IR_content")
    answer_node = [i for i, t in enumerate(rec.graph.node_texts[:7]) if t.startswith(f"This is node {rec.targets[0].answer}.")]
    assert len(answer_node) == 1 and rec.graph.node_texts[answer_node[0]].endswith(rec.targets[0].question[-40:])
    assert tasks.retrieval_questions(TextGraph.build(["x"], np.zeros((0, 2)), []), rng) == []


def _tag():
    names = ("Arts", "Geo", "History", "Science")
    g = _graph(undirected=False)
    return TextAttributedGraph(tuple(f"T{i}" for i in range(7)), tuple(TEXTS),
                               np.asarray([0, 1, 2, 3, 0, 1, 2]), names,
                               np.asarray([0, 0, 0, 0, 1, 2, 2], np.int8), g)


def test_topic_and_link_records():
    s = tasks.TaskSampler(_tag(), tasks.TaskConfig(ways=3), seed=0)
    rec = s.topic(4)
    (t,) = rec.targets
    assert t.answer == t.label == "Arts" and t.node == rec.graph.num_nodes - 1
    cands = t.question.split("Choose from the following: ")[1].rstrip(".").split("; ")
    assert len(cands) == 3 and "Arts" in cands and len(set(cands)) == 3
    assert t.question.startswith(tasks.GRAPH_DESCRIPTION)
    for (a, b), want in [((0, 1), "Yes"), ((1, 2), "Yes"), ((0, 2), "No"), ((5, 6), "No")]:
        rec = s.link(a, b)
        assert rec.targets[0].label == want
        between = [e for e in rec.graph.edges() if set(e) == {0, 1}]
        assert between == []
        p = rec.targets[0].node
        assert {e for e in rec.graph.edges() if p in e} == {(0, p), (p, 0), (1, p), (p, 1)}
    pairs = s.link_pairs(range(7), 6)
    assert len(pairs) == 6 and sum(frozenset(p) in s.edge_set for p in pairs) == 3


def test_sampler_is_seeded_and_filters_by_size():
    a = tasks.TaskSampler(_tag(), seed=5)
    b = tasks.TaskSampler(_tag(), seed=5)
    for task in tasks.PRETRAIN_TASKS:
        ra, rb = a.pretrain(task, 0), b.pretrain(task, 0)
        assert ra == rb
    recs = list(itertools.islice(a.stream(["CS", "SP", "topic"]), 10))
    assert all(r.task in ("CS", "SP", "topic") for r in recs)
    assert a.pretrain("SP", 5) is None           # isolated: nobody to pair with
    tiny = tasks.TaskSampler(_tag(), tasks.TaskConfig(max_nodes_plus_edge_texts=5))
    assert tiny.pretrain("CS", 0) is None
    with pytest.raises(GmemError, match="unknown pretraining task 'XX'"):
        a.pretrain("XX", 0)


def test_size_filter_formula():
    chain = lambda n, texts: TextGraph.build(["a"] * n, [(i, i + 1) for i in range(n - 1)], texts)
    ok = lambda g: tasks.size_ok(record.GraphRecord(g, ()))
    assert ok(chain(20, [f"e{i}" for i in range(19)]))          # N + Eu = 39 < 40
    assert not ok(chain(21, [f"e{i}" for i in range(20)]))      # 41
    assert ok(chain(21, ["e"] * 20))                            # 22
    many = lambda e: TextGraph.build(["a"] * 10, [(0, 1)] * e, ["e"] * e)
    assert ok(many(200)) and not ok(many(220))                  # memory estimate 63.2 / 66.6 GB


def test_k_hop_sampling_limits_and_order():
    g = TextGraph.build([str(i) for i in range(30)], [(0, i) for i in range(1, 11)] +
                        [(i, 10 + i) for i in range(1, 11)] + [(11, 21), (21, 22)], ["e"] * 22)
    idx = sampling.GraphIndex.build(g)
    rng = np.random.default_rng(0)
    nodes = sampling.k_hop_nodes(idx, [0], hops=2, max_nodes_per_hop=4, rng=rng)
    assert nodes[0] == 0 and len(nodes) == 1 + 4 + 4 and len(set(nodes)) == 9
    assert all(1 <= v <= 10 for v in nodes[1:5])
    sub, ids = sampling.sample_subgraph(idx, [21, 3], rng, hops=1, max_nodes_per_hop=10)
    assert ids[:2] == [21, 3] and set(ids) == {21, 3, 11, 22, 0, 13}
    assert sorted(zip(sub.senders.tolist(), sub.receivers.tolist())) == sorted(
        (ids.index(s), ids.index(r)) for s, r in g.edges() if s in ids and r in ids)


def test_node_ids():
    assert record.code(0) == "AA" and record.code(1) == "AB" and record.code(675) == "ZZ"
    assert record.node_ids(3) == ["[NODEID.AA]", "[NODEID.AB]", "[NODEID.AC]"]
    ids = record.node_ids(50, np.random.default_rng(0))
    assert ids == sorted(ids) and len(set(ids)) == 50
    with pytest.raises(GmemError, match="677 nodes"):
        record.node_ids(677)


def test_scoring():
    assert scoring.normalize_answer("  The Arts, and  an Apple!") == "arts and apple"
    assert scoring.exact_match("the arts.", "Arts")
    assert not scoring.exact_match("Arts and crafts", "Arts")
    assert scoring.yes_no_match("Yes, they are linked. No doubt.", "Yes")
    assert scoring.yes_no_match("no.", "No") and not scoring.yes_no_match("Nope, yes", "No")
    assert scoring.yes_no("Nobody knows") is None
    assert scoring.text_accuracy(["Arts", "geo", "x"], ["arts", "Geo", "History"]) == pytest.approx(2 / 3)
    assert scoring.text_accuracy(["yes", "I think no"], ["Yes", "Yes"], binary=True) == 0.5


@pytest.mark.slow
def test_records_from_the_embedded_wikipedia_graph():
    from gmem.graph.tag import wiki_tag
    tag = wiki_tag()
    s = tasks.TaskSampler(tag, seed=0)
    test_nodes = tag.nodes_in("test")
    for task in tasks.PRETRAIN_TASKS + ("topic",):
        got = 0
        for v in test_nodes[:40]:
            rec = s.topic(int(v)) if task == "topic" else s.pretrain(task, int(v))
            if rec is None:
                continue
            got += 1
            assert tasks.size_ok(rec) and rec.task == task
            assert all(0 <= t.node < rec.graph.num_nodes for t in rec.targets)
            assert not any("NODE_INDEX" in t.question + t.answer for t in rec.targets)
            if task == "topic":
                assert rec.targets[0].label == tag.label_names[tag.labels[v]]
        assert got >= 10, task
