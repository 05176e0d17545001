"""GOFA's zero-shot evaluation and answers (infer.py), and the text-prompt baselines.

Evaluation records (fixed by tag_seed, independent of the training seed): eval_topic topic
questions ("Choose from the following: ...", `ways` candidates) on held-out (test-split) nodes
and eval_link yes/no link questions on pairs of test nodes (half linked), each on its sampled
subgraph with a prompt node. Answers are generated (greedy unless temperature > 0) and scored
with TAGLAS's normalised exact match (topic) and yes/no rule (link).

baseline (options.Baseline) swaps GOFA for the base LLM reading text, same questions:
  text        the question node(s)' own text, then the question, in one chat turn;
  neighbours  every node text of the subgraph and every edge text, then the question.
Tokens per question: the decoder prompt GOFA reads (K memory slots + question + chat template)
and the texts its encoder reads, against the baseline's prompt.
"""

from __future__ import annotations

import jax
import numpy as np

from gmem.graph.text_buckets import TextGraphBuckets
from gmem.models.generate import generate, left_pad
from gmem.systems.gofa import model as M
from gmem.systems.gofa.graph_io import read_graph
from gmem.systems.gofa.layout import prompt_length, prompt_rows
from gmem.systems.gofa.options import Baseline
from gmem.systems.gofa.prompt_graph import FROM_PROMPT
from gmem.systems.gofa.record import GraphRecord
from gmem.systems.gofa.scoring import exact_match, yes_no_match
from gmem.systems.gofa.tasks import TaskSampler

EVAL_SEED_OFFSET = 1000


def eval_records(system) -> list[GraphRecord]:
    """The fixed evaluation records (topic first, then link), those that fit the buckets."""
    o, tag = system.p, system.tag()
    s = TaskSampler(tag, system.task_config(), o.tag_seed + EVAL_SEED_OFFSET)
    test = tag.nodes_in("test")
    order = np.random.default_rng([o.tag_seed, 11]).permutation(len(test))
    recs = [s.topic(int(test[i])) for i in order[:o.eval_topic]]
    recs += [s.link(a, b) for a, b in (s.link_pairs(test, o.eval_link) if o.eval_link else [])]
    return [r for r in recs if r is not None and system.packer.fits(r)]


def question_nodes(rec: GraphRecord, target: int) -> list[int]:
    """The nodes a prompt node's question is about (its prompt -> node edges)."""
    g = rec.graph
    nodes = [int(r) for s, r, t in zip(g.senders, g.receivers, g.edge_texts) if s == target and t == FROM_PROMPT]
    return nodes or [target]


def _generate_rows(system, trainable, frozen, mem, questions):
    """Answers (strings) from memory states [R, K, D] and question token lists."""
    o = system.p
    ids, mask = prompt_rows(system.packer.chat, system.special, questions, 16, system.pad_id)
    res = M.generate_from_memory(system.module, system.decoder_variables(trainable, frozen), frozen["memory_table"],
                                 mem, ids, mask, system.special, system.dtype, max_new_tokens=o.max_new_tokens,
                                 eos_token_id=system.packer.chat.eos, pad_token_id=system.pad_id,
                                 temperature=o.temperature, top_k=o.top_k)
    toks, lens = np.asarray(res.tokens), np.asarray(res.lengths)
    return [system.tokenizer.decode(toks[r, :lens[r]].tolist(), skip_special_tokens=True) for r in range(len(questions))]


def answer(system, trainable, frozen, records, where="graph"):
    """Generated answers, one list per record (one answer per target), and token counts per
    target {"decoder": prompt tokens, "encoder": text tokens of its graph / targets}."""
    enc = system._jit.setdefault("node_memory", jax.jit(lambda t, f, b: system.node_memory(t, f, b)))
    out, counts = [], []
    bs = max(system.p.eval_batch, 1)
    for i in range(0, len(records), bs):
        chunk = records[i:i + bs]
        b = system.packer.pack(chunk, where, decoder=False)
        mem = np.asarray(enc(trainable, frozen, b))
        n = b["node_map"].shape[1]
        rows, questions = [], []
        for j, r in enumerate(chunk):
            for tg in r.targets:
                rows.append(j * n + tg.node)
                q = tg.decoder_prompt
                questions.append(system.packer.plain(q)[:system.p.max_question_len] if q else [])
        texts = _generate_rows(system, trainable, frozen, mem[rows], questions)
        k = 0
        for j, r in enumerate(chunk):
            out.append(texts[k:k + len(r.targets)])
            k += len(r.targets)
            enc_tokens = int(b["node_text_len"][j].sum() + b["edge_text_len"][j].sum())
            counts += [{"decoder": prompt_length(system.packer.chat, system.special, q),
                        "encoder": enc_tokens / len(r.targets)} for q in questions[k - len(r.targets):k]]
    return out, counts


def baseline_prompt(system, rec: GraphRecord, target) -> list[int]:
    """The baseline's chat-turn token ids for one target."""
    o, g = system.p, rec.graph
    cut = lambda s: system.packer.plain(s)[:o.max_text_len]
    if o.baseline == Baseline.text:
        nodes = question_nodes(rec, target.node)
        parts = [cut(g.node_texts[v]) for v in nodes]
    else:
        parts = [cut(t) for v, t in enumerate(g.node_texts) if v != target.node]
        parts += [cut(t) for t in dict.fromkeys(g.edge_texts) if t != FROM_PROMPT and "prompt node" not in t]
    nl = system.packer.plain("\n")
    body = [i for p in parts for i in p + nl] + system.packer.plain(target.question)[:o.max_question_len]
    chat = system.packer.chat
    return list(chat.prefix) + body + list(chat.suffix)


def answer_baseline(system, frozen, records):
    """Answers of the base LLM (no adapter) from text prompts; and prompt lengths."""
    o = system.p
    out, counts = [], []
    for r in records:
        seqs = [baseline_prompt(system, r, tg) for tg in r.targets]
        ids, mask = left_pad(seqs, system.pad_id, 64)   # widths vary a lot: fewer compilations
        res = generate(system.module, {"params": frozen["llm"]}, ids, mask, max_new_tokens=o.max_new_tokens,
                       eos_token_id=system.packer.chat.eos, pad_token_id=system.pad_id,
                       temperature=o.temperature, top_k=o.top_k)
        toks, lens = np.asarray(res.tokens), np.asarray(res.lengths)
        out.append([system.tokenizer.decode(toks[i, :lens[i]].tolist(), skip_special_tokens=True)
                    for i in range(len(seqs))])
        counts += [{"decoder": len(s), "encoder": 0} for s in seqs]
    return out, counts


def _rows(system, trainable, frozen, records):
    if system.p.baseline == Baseline.none:
        answers, counts = answer(system, trainable, frozen, records)
    else:
        answers, counts = answer_baseline(system, frozen, records)
    rows, k = [], 0
    for r, ans in zip(records, answers):
        for tg, a in zip(r.targets, ans):
            binary = r.task == "link"
            ok = yes_no_match(a, tg.label) if binary else exact_match(a, tg.label)
            rows.append({"prompt": tg.question, "generation": a, "label": tg.label, "task": r.task,
                         "correct": bool(ok), "tokens": counts[k]})
            k += 1
    return rows


def evaluate(system, trainable, frozen) -> dict:
    """eval/topic_accuracy, eval/link_accuracy, eval/accuracy (all questions), tokens per
    question; {} when system.graph is set (infer.py answers that graph instead)."""
    if system.p.graph:
        return {}
    records = eval_records(system)
    rows = _rows(system, trainable, frozen, records)
    system._eval_cache = (id(trainable), rows)
    out = {"eval/questions": float(len(rows))}
    for task in ("topic", "link"):
        got = [r["correct"] for r in rows if r["task"] == task]
        if got:
            out[f"eval/{task}_accuracy"] = float(np.mean(got))
    if rows:
        out["eval/accuracy"] = float(np.mean([r["correct"] for r in rows]))
        out["eval/decoder_tokens_per_question"] = float(np.mean([r["tokens"]["decoder"] for r in rows]))
        out["eval/encoder_tokens_per_question"] = float(np.mean([r["tokens"]["encoder"] for r in rows]))
    return out


def predict(system, trainable, frozen, prompts=None):
    """infer.py rows: the answers to system.graph's questions and completions (a user's graph
    file), else the evaluation questions (reusing evaluate's answers when it just ran)."""
    o = system.p
    if o.graph:
        buckets = TextGraphBuckets(tuple(o.nodes_buckets), tuple(o.edges_buckets), tuple(o.texts_buckets),
                                   tuple(o.targets_buckets))
        rec = read_graph(o.graph, buckets)
        answers, _ = answer(system, trainable, frozen, [rec], o.graph)
        rows = [{"prompt": tg.question or f"complete node {tg.node}", "node": tg.node, "generation": a}
                for tg, a in zip(rec.targets, answers[0])]
        return rows, {"answers": float(len(rows))}
    cache = system._eval_cache
    rows = cache[1] if cache and cache[0] == id(trainable) else _rows(system, trainable, frozen, eval_records(system))
    return rows, {}
