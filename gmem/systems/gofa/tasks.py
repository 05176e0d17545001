"""GOFA's task samplers on a text-attributed graph (spec A3, A8, A9).

Pretraining tasks, all asked on a k-hop subgraph around a target node (hops 3, 5 nodes a hop):
  CS  sentence completion: selected nodes keep only the first k words of their text (k uniform
      in [0, min(words // 2, 64)]); "Please complete the sentence of the node [i]" -> the rest.
      The node itself is the NOG (no prompt node), so the decoder prompt is empty.
  SP  shortest path between the target and another node: distance and all shortest paths.
  CN  common neighbours of the target and another node: count and list.
  IR  information retrieval over k random nodes (k in [2, N]): key -> content ("output the
      content of node [i]") or content -> key ("give the ID of the node which contains ...").
Instruction / zero-shot tasks (always with a prompt node):
  topic  topic of a node, "Choose from the following: a; b; c." over `ways` candidate classes
         that include the true one, shuffled.
  link   yes/no: does one of two articles mention the other? Edges between the two are removed
         from the subgraph so the answer is not in the input.
Questions about two or more nodes get a prompt node (`prompt_graph`). Lists in answers (paths,
neighbours) are in ascending node order, which is also the order of the IDs' codes. Structure
questions (SP, CN) are answered on the undirected subgraph without self-loops, as GOFA's
networkx / edge-list code does on its undirected graphs.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from gmem.errors import GmemError
from gmem.graph.sampling import GraphIndex, sample_subgraph
from gmem.graph.tag import TextAttributedGraph
from gmem.graph.text_graph import TextGraph
from gmem.systems.gofa.prompt_graph import Question, assemble
from gmem.systems.gofa.record import COMPLETION_PROMPT, GraphRecord, index_token as idx

PRETRAIN_TASKS = ("CS", "SP", "CN", "IR_key", "IR_content")
SP_PROMPT = ("Compute the shortest path distance between the node {i} and node {j} and generate "
             "all shortest paths from {i} to {j}. Please separate nodes in path with ->. If "
             "multiple paths exist, generate all of them with an ascending order of node index "
             "and separate different paths with ;.")
CN_PROMPT = ("Is there any common neighbors between the node {i} and node {j}? If exist, please "
             "give the total number and list all common neighbors with ascending order of node, "
             "separate nodes with ;.")
IR_KEY_PROMPT = "Please output the content of node {i}."
IR_CONTENT_PROMPT = "Please give the ID of the node which contains the following content: "
GRAPH_DESCRIPTION = ("This is a graph of Wikipedia articles; an edge says that one article "
                     "mentions another.")
TOPIC_PROMPT = "What is the topic of the article in node {i}? Choose from the following: {c}."
LINK_PROMPT = ("Does the article in node {i} mention the article in node {j}, or the other way "
               "round? Answer yes or no.")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Sampler settings (GOFA's pretraining values; `ways` for topic questions)."""

    hops: int = 3
    max_nodes_per_hop: int = 5
    cs_max_left_words: int = 64
    cs_include_targets: bool = True
    cs_additional: int = 3
    num_sp: int = 2
    num_cn: int = 2
    num_ir: int = 1
    ways: int = 5
    max_nodes_plus_edge_texts: int = 40
    max_memory_gb: float = 65.0
    graph_description: str = GRAPH_DESCRIPTION


def size_ok(record: GraphRecord, cfg: TaskConfig = TaskConfig()) -> bool:
    """GOFA's size filter (A8): N + Eu < 40 and its fitted memory estimate (GB) < 65, with N
    nodes, Nu unique node texts, E edges, Eu unique edge texts."""
    g = record.graph
    n, e = g.num_nodes, g.num_edges
    nu, eu = len(set(g.node_texts)), len(set(g.edge_texts))
    gb = 24.495 + 0.4645 * n + 0.0042 * nu + 0.1689 * e + 0.2846 * eu
    return n + eu < cfg.max_nodes_plus_edge_texts and gb < cfg.max_memory_gb


def split_sentence(text: str, max_left_words: int, rng: np.random.Generator) -> tuple[str, str]:
    """(left, right) at a word k uniform in [0, min(words // 2, max_left_words)]."""
    words = text.split(" ")
    if len(words) <= 1:
        return text, ""
    k = int(rng.integers(0, min(len(words) // 2, max_left_words) + 1))
    return " ".join(words[:k]), " ".join(words[k:])


def sentence_completion(sub: TextGraph, n_targets: int, rng: np.random.Generator,
                        cfg: TaskConfig = TaskConfig()) -> tuple[list[str], list[Question]]:
    """(node texts with left parts on the selected nodes, one question per selected node)."""
    chosen = list(range(n_targets)) if cfg.cs_include_targets else []
    others = [v for v in range(sub.num_nodes) if v not in chosen]
    extra = min(cfg.cs_additional, len(others))
    chosen += sorted(rng.choice(others, extra, replace=False).tolist()) if extra else []
    texts, questions = list(sub.node_texts), []
    for v in chosen:
        texts[v], right = split_sentence(sub.node_texts[v], cfg.cs_max_left_words, rng)
        questions.append(Question((v,), f"{COMPLETION_PROMPT} {idx(v)}", right, right))
    return texts, questions


def shortest_paths(nb: Sequence[set[int]], i: int, j: int) -> tuple[int | None, list[list[int]]]:
    """(distance or None, every shortest path i .. j in ascending order) by BFS."""
    dist, parents, frontier = {i: 0}, {i: []}, [i]
    while frontier and j not in dist:
        nxt = []
        for v in frontier:
            for u in sorted(nb[v]):
                if u not in dist:
                    dist[u] = dist[v] + 1
                    parents[u] = []
                    nxt.append(u)
                if dist[u] == dist[v] + 1:
                    parents[u].append(v)
        frontier = nxt
    if j not in dist:
        return None, []

    def walk(v):
        return [[i]] if v == i else [p + [v] for u in parents[v] for p in walk(u)]
    return dist[j], sorted(walk(j))


def _pairs(sub: TextGraph, n_targets: int, num: int, rng: np.random.Generator):
    """GOFA's from-target pairs: i a random target, j a distinct random non-target."""
    pool = list(range(n_targets, sub.num_nodes))
    for _ in range(min(num, len(pool))):
        i = int(rng.integers(n_targets))
        j = pool.pop(int(rng.integers(len(pool))))
        yield i, j


def shortest_path_questions(sub: TextGraph, n_targets: int, rng: np.random.Generator,
                            num: int = 2) -> list[Question]:
    nb = sub.neighbours()
    out = []
    for i, j in _pairs(sub, n_targets, num, rng):
        d, paths = shortest_paths(nb, i, j)
        if d is None:
            ans = f"The shortest path distance is inf. There is no path between {idx(i)} and {idx(j)}."
        else:
            text = "; ".join(" -> ".join(idx(v) for v in p) for p in paths)
            ans = f"The shortest path distance is {d}. Shortest paths: {text}."
        out.append(Question((i, j), SP_PROMPT.format(i=idx(i), j=idx(j)), ans,
                            "inf" if d is None else str(d)))
    return out


def common_neighbour_questions(sub: TextGraph, n_targets: int, rng: np.random.Generator,
                               num: int = 2) -> list[Question]:
    nb = sub.neighbours()
    out = []
    for i, j in _pairs(sub, n_targets, num, rng):
        common = sorted(nb[i] & nb[j])
        if common:
            ans = (f"There are {len(common)} common neighbors between two nodes, including "
                   f"{'; '.join(idx(v) for v in common)}.")
        else:
            ans = "There is no common neighbors between two nodes."
        out.append(Question((i, j), CN_PROMPT.format(i=idx(i), j=idx(j)), ans, str(len(common))))
    return out


def retrieval_questions(sub: TextGraph, rng: np.random.Generator, num: int = 1,
                        content_to_key: bool = False) -> list[Question]:
    """k in [2, N] random nodes joined to the prompt node; one of them is asked about."""
    n = sub.num_nodes
    if n < 2:
        return []
    out = []
    for _ in range(num):
        k = int(rng.integers(2, n + 1))
        chosen = rng.permutation(n)[:k].tolist()
        a = int(chosen[int(rng.integers(k))])
        if content_to_key:
            q = Question(tuple(chosen), IR_CONTENT_PROMPT + sub.node_texts[a], idx(a), idx(a))
        else:
            q = Question(tuple(chosen), IR_KEY_PROMPT.format(i=idx(a)), sub.node_texts[a],
                         sub.node_texts[a])
        out.append(q)
    return out


def topic_question(label_names: Sequence[str], label: int, ways: int, rng: np.random.Generator,
                   description: str = GRAPH_DESCRIPTION, node: int = 0) -> Question:
    """The topic of `node`, with `ways` shuffled candidates that include the true one."""
    others = [k for k in range(len(label_names)) if k != label]
    cands = [label] + rng.choice(others, min(ways, len(label_names)) - 1, replace=False).tolist()
    cands = [label_names[k] for k in rng.permutation(cands)]
    q = TOPIC_PROMPT.format(i=idx(node), c="; ".join(cands))
    return Question((node,), f"{description} {q}".strip(), label_names[label], label_names[label])


def link_question(positive: bool, description: str = GRAPH_DESCRIPTION) -> Question:
    """About subgraph nodes 0 and 1; answer and label "Yes" or "No"."""
    yes = "Yes" if positive else "No"
    q = LINK_PROMPT.format(i=idx(0), j=idx(1))
    return Question((0, 1), f"{description} {q}".strip(), yes, yes)


def without_edges_between(sub: TextGraph, a: int, b: int) -> TextGraph:
    keep = [e for e, (s, r) in enumerate(sub.edges()) if {s, r} != {a, b}]
    return TextGraph(sub.node_texts, sub.senders[keep], sub.receivers[keep],
                     tuple(sub.edge_texts[e] for e in keep))


class TaskSampler:
    """Records of every task from one TAG (its undirected view), seeded.

    Each call draws from the sampler's own generator, so a sequence of calls is reproducible
    from the seed. Methods return None where GOFA would drop the sample (no question could be
    asked, or over the size filter)."""

    def __init__(self, tag: TextAttributedGraph, cfg: TaskConfig = TaskConfig(), seed: int = 0):
        self.tag, self.cfg = tag, cfg
        self.index = GraphIndex.build(tag.graph.with_reverse_edges())
        self.edge_set = {frozenset(e) for e in tag.graph.edges()}
        self.rng = np.random.default_rng(seed)

    def _sub(self, targets: Sequence[int]) -> TextGraph:
        sub, _ = sample_subgraph(self.index, targets, self.rng, self.cfg.hops,
                                 self.cfg.max_nodes_per_hop)
        return sub

    def _keep(self, record: GraphRecord) -> GraphRecord | None:
        return record if record.targets and size_ok(record, self.cfg) else None

    def pretrain(self, task: str, target: int) -> GraphRecord | None:
        """One pretraining record ("CS", "SP", "CN", "IR_key", "IR_content") around target."""
        sub, cfg, rng = self._sub([target]), self.cfg, self.rng
        texts = None
        if task == "CS":
            texts, qs = sentence_completion(sub, 1, rng, cfg)
        elif task == "SP":
            qs = shortest_path_questions(sub, 1, rng, cfg.num_sp)
        elif task == "CN":
            qs = common_neighbour_questions(sub, 1, rng, cfg.num_cn)
        elif task in ("IR_key", "IR_content"):
            qs = retrieval_questions(sub, rng, cfg.num_ir, task == "IR_content")
        else:
            raise GmemError(f"gofa task: unknown pretraining task {task!r}; use one of {PRETRAIN_TASKS}")
        return self._keep(assemble(sub, qs, rng, task, node_texts=texts))

    def topic(self, target: int) -> GraphRecord | None:
        q = topic_question(self.tag.label_names, int(self.tag.labels[target]), self.cfg.ways,
                           self.rng, self.cfg.graph_description)
        return self._keep(assemble(self._sub([target]), [q], self.rng, "topic",
                                   add_prompt_graph=True))

    def link(self, a: int, b: int) -> GraphRecord | None:
        """Yes iff a mentions b or b mentions a in the TAG; those edges are hidden."""
        positive = frozenset((a, b)) in self.edge_set
        sub = without_edges_between(self._sub([a, b]), 0, 1)
        q = link_question(positive, self.cfg.graph_description)
        return self._keep(assemble(sub, [q], self.rng, "link", add_prompt_graph=True))

    def link_pairs(self, nodes: Sequence[int], n: int) -> list[tuple[int, int]]:
        """n pairs within `nodes`, half linked and half not (as far as there are links)."""
        pool = set(int(v) for v in nodes)
        links = sorted(tuple(sorted(e)) for e in self.edge_set if len(e) == 2 and e <= pool)
        pos = [links[k] for k in self.rng.permutation(len(links))[:n // 2]]
        neg, arr = [], np.asarray(sorted(pool))
        while len(neg) < n - len(pos) and len(arr) > 1:
            a, b = (int(v) for v in self.rng.choice(arr, 2, replace=False))
            if frozenset((a, b)) not in self.edge_set:
                neg.append((a, b))
        pairs = pos + neg
        return [pairs[k] for k in self.rng.permutation(len(pairs))]

    def stream(self, tasks: Sequence[str], split: str = "train") -> Iterator[GraphRecord]:
        """Endless records: a random task of `tasks` on a random node of `split`; dropped
        samples are skipped."""
        nodes = self.tag.nodes_in(split)
        while True:
            task = tasks[int(self.rng.integers(len(tasks)))]
            v = int(nodes[int(self.rng.integers(len(nodes)))])
            rec = self.topic(v) if task == "topic" else self.pretrain(task, v)
            if rec is not None:
                yield rec
