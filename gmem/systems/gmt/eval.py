"""GMT evaluation (specs/gofa-gmt.md B11), for train.py's periodic eval and infer.py.

- Triple classification: greedy generation (batched, left-padded, KV cache, the graph memory
  computed once per batch), answer parsed as GMT does ('true' in the lowercased response);
  accuracy, precision, recall, F1 with True as the positive class.
- Link prediction by candidate scoring (exact ranking): every entity t' is scored by the model's
  log-likelihood of the response "True" for (h, r, t') (its own graph memory); the gold tail's
  rank is filtered (other known true tails removed), ties counted half (realistic rank).
- Link prediction as GMT does it: a generated ranked list over a candidate list in the prompt,
  parsed; unparsable answers are misses (rank inf), not skipped as in the reference.
- Two protocols (system.eval_protocol): gmem (the above; greedy up to max_new_tokens, default 4,
  stopping at EOS) and original (inference_gmt.py's: 16 new tokens, no EOS stop, 'true'
  anywhere in the response; link-prediction samples with an empty parsed or gold list skipped).
- max_eval takes a seeded class-balanced subset (eval_seed), in file order; the metrics count
  the classes evaluated, and a set of one class warns (KoPA-style files list positives first).
- Stage 1 (gmt_stage1): DistMult filtered tail ranking over all entities (stage1_ranking).
"""

from __future__ import annotations

import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from gmem.graph.layers import SemanticGraphModule
from gmem.models.generate import generate
from gmem.systems.gmt import data as D
from gmem.systems.gmt import graph as G

LP_INSTRUCTION = ("Given a head entity and a relation from a knowledge graph, rank the candidate tail "
                  "entities from the most to the least likely. Answer with the candidate names, one per line.")


def _pad_rows(batch: dict, n: int) -> dict:
    """Repeat the last row so every call has the same batch size (one compilation)."""
    m = len(batch["input_ids"])
    if m == n:
        return batch
    return {k: np.concatenate([v, np.repeat(v[-1:], n - m, 0)]) for k, v in batch.items()}


def _progress(it, desc, per_item, total, unit="prompt"):
    """tqdm over batch starts, counted in prompts or queries (long evaluations show progress
    and ETA)."""
    bar = tqdm(total=total, desc=desc, unit=unit, leave=False, mininterval=5.0)
    for x in it:
        yield x
        bar.update(min(per_item, total - bar.n))
    bar.close()


def _jitted(system, name, fn):
    cache = system.__dict__.setdefault("_eval_jits", {})
    if name not in cache:
        cache[name] = jax.jit(fn)
    return cache[name]


def generate_answers(system, trainable, frozen, records, max_new_tokens, stop_at_eos: bool = True) -> list[str]:
    """Greedy responses for records (prompt only), in batches of eval_batch; stripped, as the
    original decodes them. stop_at_eos=False: every row gets max_new_tokens (the original)."""
    bsz = system.p.eval_batch
    prompts = [dict(r, output="") for r in records]
    mem_fn = _jitted(system, "memory", lambda t, f, b: system.memory(t, f, b))
    variables = system.variables(trainable, frozen)
    eos = getattr(system.tokenizer, "eos_token_id", None) if stop_at_eos else None
    out = []
    for i in _progress(range(0, len(prompts), bsz), "generate", bsz, len(prompts)):
        chunk = prompts[i:i + bsz]
        b = _pad_rows(system.encode(chunk), bsz)
        mem = mem_fn(trainable, frozen, {k: jnp.asarray(v) for k, v in b.items()})
        kw = {"hook_inputs": {"memory": mem}} if mem is not None else {}
        module = system.module_for(system.shared_len(b), variables["params"])
        g = generate(module, variables, b["input_ids"], b["attention_mask"],
                     max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=system.pad_id,
                     model_kwargs=kw)
        toks, lens = np.asarray(g.tokens), np.asarray(g.lengths)
        out += [system.tokenizer.decode(toks[j, :lens[j]].tolist(), skip_special_tokens=True).strip()
                for j in range(len(chunk))]
    return out


ORIGINAL_NEW_TOKENS = 16     # inference_gmt.py's --max_new_tokens default
GMEM_NEW_TOKENS = {"tc": 4, "lp": 48}


def original_protocol(system) -> bool:
    return getattr(system.p.eval_protocol, "value", system.p.eval_protocol) == "original"


def new_tokens(system, task: str) -> int:
    """max_new_tokens, or (0) the protocol's own: 16 for the original, gmem's 4 (TC) / 48 (LP)."""
    n = system.p.max_new_tokens
    return n if n else (ORIGINAL_NEW_TOKENS if original_protocol(system) else GMEM_NEW_TOKENS[task])


def classify(system, trainable, frozen, records) -> tuple[list[dict], dict]:
    texts = generate_answers(system, trainable, frozen, records, new_tokens(system, "tc"),
                             stop_at_eos=not original_protocol(system))
    pred = [D.parse_classification(t) for t in texts]
    gold = [D.parse_classification(r["output"]) for r in records]
    rows = [{"prompt": r["input"].strip(), "output": r["output"], "generation": t, "pred": p}
            for r, t, p in zip(records, texts, pred)]
    m = D.classification_metrics(pred, gold)
    m["unparsed"] = sum(1 for t in texts if "true" not in t.lower() and "false" not in t.lower())
    return rows, m


def true_scores(system, trainable, frozen, triples, batch_size=None) -> np.ndarray:
    """log p("True" | classification prompt of (h, r, t), memory(h, r, t)) per triple [n]."""
    triples = np.asarray(triples, np.int64).reshape(-1, 3)
    recs = D.classification_records(system.kg, triples, np.ones(len(triples), np.int32))
    return _record_scores(system, trainable, frozen, recs, batch_size or system.p.lp_batch)


def _score_batch(system, trainable, frozen, b, win) -> np.ndarray:
    """Summed log-probs of each row's response (the last `win` tokens, loss-masked) [B]."""
    prefix = system.shared_len(b)

    def score(t, f, batch):
        lp = system.token_logprobs(t, f, batch, window=win, prefix=prefix)
        return (lp * batch["loss_mask"][:, -win:]).sum(-1)
    fn = _jitted(system, f"score{win}/{prefix}", score)
    return np.asarray(fn(trainable, frozen, {k: jnp.asarray(v) for k, v in b.items()}))


def filtered_rank(scores: np.ndarray, gold: int, exclude) -> float:
    """1 + #(better) + #(ties)/2 among candidates other than gold and the excluded ones."""
    keep = np.ones(len(scores), bool)
    keep[list(exclude)] = False
    keep[gold] = False
    s, g = scores[keep], scores[gold]
    return float(1 + (s > g).sum() + 0.5 * (s == g).sum())


def known_tails(system) -> dict:
    tails: dict = {}
    for h, r, t in system.known.tolist():
        tails.setdefault((h, r), set()).add(t)
    return tails


def link_prediction_scoring(system, trainable, frozen, queries) -> tuple[list[dict], dict]:
    """Rank every entity as the tail of each (h, r, ?) query by true_scores (exact, filtered)."""
    n_ent = system.kg.num_entities
    tails = known_tails(system)
    rows, ranks = [], []
    queries = np.asarray(queries).tolist()
    for h, r, t in _progress(queries, "link prediction (all entities)", 1, len(queries), "query"):
        cand = np.stack([np.full(n_ent, h), np.full(n_ent, r), np.arange(n_ent)], 1)
        s = true_scores(system, trainable, frozen, cand)
        rank = filtered_rank(s, t, tails.get((h, r), set()) - {t})
        ranks.append(rank)
        rows.append({"prompt": f"link prediction {[h, r, t]}", "query": [h, r, t], "rank": rank,
                     "generation": f"rank {rank}; top {system.kg.entities[int(np.argmax(s))]}"})
    return rows, D.ranking_metrics(ranks)


def lp_records(system, queries, k: int, seed: int = 0) -> list[dict]:
    """GMT-style generated-list prompts: gold + k-1 filtered random candidates, shuffled."""
    rng = np.random.default_rng(seed)
    tails = known_tails(system)
    ents = system.kg.entities
    out = []
    for h, r, t in np.asarray(queries).tolist():
        bad = tails.get((h, r), set()) | {t}
        pool = [e for e in range(len(ents)) if e not in bad]
        cand = [t] + list(rng.choice(pool, size=min(k - 1, len(pool)), replace=False))
        rng.shuffle(cand)
        names = [D.entity_text(ents[c]) for c in cand]
        inp = (f"\nThe query: \n( {D.entity_text(ents[h])}, {D.entity_text(system.kg.relations[r])}, ? )\n"
               f"Candidates: {{{', '.join(names)}}}\n")
        out.append({"instruction": LP_INSTRUCTION, "input": inp, "output": D.entity_text(ents[t]),
                    "candidates": names, "answers": [D.entity_text(ents[t])], "embedding_ids": [h, r, h]})
    return out


def link_prediction_generated(system, trainable, frozen, queries) -> tuple[list[dict], dict]:
    """Generated ranked lists, parsed. gmem: an empty parse is a miss; original: skipped."""
    recs = lp_records(system, queries, system.p.lp_candidates)
    orig = original_protocol(system)
    texts = generate_answers(system, trainable, frozen, recs, new_tokens(system, "lp"), stop_at_eos=not orig)
    rows, ranks = [], []
    for rec, txt in zip(recs, texts):
        pred = D.parse_ranked_list(txt, rec["candidates"])
        skip = orig and not (pred and rec["answers"])
        rank = None if skip else D.rank_of(pred, rec["answers"])
        if not skip:
            ranks.append(rank)
        rows.append({"prompt": rec["input"].strip(), "generation": txt, "rank": rank})
    m = D.ranking_metrics(ranks)
    m["skipped"] = len(recs) - len(ranks)
    return rows, m


def _split_records(system, split):
    """The records of `split` infer.py evaluates: all, or a max_eval class-balanced subset."""
    recs = system.records(split)
    n = system.p.max_eval
    return balanced_subset(recs, n, system.p.eval_seed) if n and n < len(recs) else recs


def balanced_subset(records, n: int, seed: int = 0) -> list[dict]:
    """n records, as equal per class (the answer's 'true'/'false'; any other output is one more
    class) as the classes allow, drawn with `seed`, in file order."""
    labels = [str(D.parse_classification(r["output"])) if r["output"].strip().lower() in ("true", "false")
              else "other" for r in records]
    classes = sorted(set(labels))
    rng = np.random.default_rng(seed)
    pools = {c: list(rng.permutation([i for i, y in enumerate(labels) if y == c])) for c in classes}
    take = {c: 0 for c in classes}
    while sum(take.values()) < n:                     # round-robin over the classes with rows left
        for c in classes:
            if take[c] < len(pools[c]) and sum(take.values()) < n:
                take[c] += 1
    keep = sorted(int(i) for c in classes for i in pools[c][:take[c]])
    return [records[i] for i in keep]


def class_counts(records, metrics: dict, where: str) -> dict:
    """Count the classes evaluated into metrics (n_true, n_false); warn on a single class."""
    gold = [D.parse_classification(r["output"]) for r in records]
    metrics.update(n_true=int(sum(gold)), n_false=int(len(gold) - sum(gold)))
    if records and (metrics["n_true"] == 0 or metrics["n_false"] == 0):
        warnings.warn(f"{where}: all {len(records)} evaluated records are of one class "
                      f"({'true' if metrics['n_true'] else 'false'}): accuracy says nothing about the model",
                      stacklevel=2)
    return metrics


def evaluate(system, trainable, frozen) -> dict:
    """Periodic eval during training (stage 2): response loss and accuracy by likelihood (True
    vs False) on up to eval.batches batches of the valid split."""
    split = "valid" if ("valid" in system.splits or system.p.valid_json) else system.p.eval_split
    recs = system.records(split)[: system.cfg.eval.batches * system.p.eval_batch]
    if not recs:
        return {}
    class_counts(recs, {}, f"periodic evaluation on the {split} split")
    s_true = _record_scores(system, trainable, frozen, [dict(r, output="True") for r in recs])
    s_false = _record_scores(system, trainable, frozen, [dict(r, output="False") for r in recs])
    gold = np.asarray([D.parse_classification(r["output"]) for r in recs])
    nll = -np.where(gold == 1, s_true, s_false).mean()
    return {"eval/loss": float(nll), "eval/accuracy": float(((s_true > s_false) == (gold == 1)).mean())}


def _record_scores(system, trainable, frozen, recs, bsz=None) -> np.ndarray:
    """Summed log-probs of each record's response [n], in batches of bsz (eval_batch)."""
    bsz = bsz or system.p.eval_batch
    win = system.resp_window
    out = []
    for i in range(0, len(recs), bsz):
        chunk = recs[i:i + bsz]
        b = _pad_rows(system.encode(chunk, train_on_inputs=False), bsz)
        out.append(_score_batch(system, trainable, frozen, b, win)[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def stage1_ranking(system, trainable, frozen, split) -> dict:
    if split not in system.splits:
        return {}
    sgm = dict(trainable)
    sgm.setdefault("rel_semantic", frozen.get("rel_semantic"))
    kgc = frozen["kg"]
    z = G.entity_states(system.gcfg, sgm, kgc["hist"], kgc)
    w = SemanticGraphModule(system.gcfg).apply({"params": sgm}, method=SemanticGraphModule.relation_vectors)
    q = np.asarray(system.splits[split])
    n = system.kg.num_entities
    cand = np.stack([np.repeat(q[:, 0], n), np.repeat(q[:, 1], n), np.tile(np.arange(n), len(q))], 1)
    s = np.asarray(G.distmult(z, w, jnp.asarray(cand.reshape(len(q), n, 3))))
    tails = known_tails(system)
    ranks = [filtered_rank(s[i], int(t), tails.get((int(h), int(r)), set()) - {int(t)})
             for i, (h, r, t) in enumerate(q.tolist())]
    m = D.ranking_metrics(ranks)
    return {f"eval/{k}": float(v) for k, v in m.items() if k != "n"}


def predict(system, trainable, frozen) -> tuple[list[dict], dict]:
    """infer.py: classification on eval_split (max_eval records), then link prediction by scoring
    (lp_queries test positives) and by generated lists (lp_generate_queries), when asked."""
    p = system.p
    recs = _split_records(system, p.eval_split)
    t0 = time.perf_counter()
    rows, m = classify(system, trainable, frozen, recs)
    m = class_counts(recs, m, f"{p.eval_split} split")
    metrics = {f"tc/{k}": v for k, v in m.items()}
    metrics["tc/protocol"] = p.eval_protocol.value if hasattr(p.eval_protocol, "value") else p.eval_protocol
    metrics["tc/seconds"] = time.perf_counter() - t0        # includes compilation
    pos = np.asarray([r["embedding_ids"] for r in recs if D.parse_classification(r["output"])])
    if p.lp_queries and len(pos):
        t0 = time.perf_counter()
        lrows, lm = link_prediction_scoring(system, trainable, frozen, pos[:p.lp_queries])
        metrics.update({f"lp_score/{k}": v for k, v in lm.items()})
        metrics["lp_score/seconds"] = time.perf_counter() - t0
        rows += lrows
    if p.lp_generate_queries and len(pos):
        grows, gm = link_prediction_generated(system, trainable, frozen, pos[:p.lp_generate_queries])
        metrics.update({f"lp_gen/{k}": v for k, v in gm.items()})
        rows += grows
    return rows, metrics
