"""GMT data: knowledge graphs, triple-classification sets, instruction records, prompts,
tokenised batches and the parsing of generated answers (specs/gofa-gmt.md B2, B11).

Records are GMT's own JSON format, accepted as is:
  {"instruction": str, "input": str, "output": "True"|"False"|..., "embedding_ids": [h, r, t]}
Triple-classification sets are built as KoPA's: every positive triple gets one negative made
by corrupting its head or tail (p = 0.5) with a uniform entity, seeded, filtered against every
known triple (train + valid + test), so each set is balanced.
"""

from __future__ import annotations

import json
import os
import re
from typing import Sequence

import numpy as np

import gmem.assets
from gmem.errors import GmemError, collect_errors, read_utf8
from gmem.graph import kg as gkg
from gmem.models.generate import encode_text

# Alpaca template (GMT templates/alpaca.json).
PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                "further context. Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
PROMPT_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                   "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
# KoPA / GMT triple-classification instruction (B2).
TC_INSTRUCTION = ("Given a triple from a knowledge graph. Each triple consists of a head entity, a "
                  "relation, and a tail entity. Please determine the correctness of the triple and "
                  "response True or False.")
EMBEDDED_KGS = ("umls", "nations", "kinships")


def entity_text(name: str) -> str:
    """Readable text of a KG name (UMLS 'acquired_abnormality' -> 'acquired abnormality')."""
    return name.replace("_", " ").strip()


def load_kg(source: str, add_inverse: bool = False, triple_file: str = "train2id.txt", triple_format: str = "htr"):
    """(KG, {split: int32 [n, 3] (h, r, t)}) from an embedded KG name, a label-TSV folder
    (train.txt/valid.txt/test.txt) or an OpenKE folder (entity2id.txt ...). In an OpenKE folder
    the graph is `triple_file` (as the original's --triple_file) and every id file is read in
    `triple_format` column order (--triple_format); the splits are {train,valid,test}2id.txt."""
    if source in EMBEDDED_KGS:
        root = gmem.assets.path(source)
        sub = os.path.join(root, source)
        return gkg.load_label_tsv(sub if os.path.isdir(sub) else str(root), add_inverse=add_inverse)
    if not os.path.isdir(source):
        raise GmemError(f"system.kg: {source!r} is not an embedded KG {EMBEDDED_KGS} or a folder")
    if os.path.isfile(os.path.join(source, "entity2id.txt")):
        kg = gkg.load_openke(source, triple_file, triple_format, add_inverse)
        splits = {}
        for s in ("train", "valid", "test"):
            p = os.path.join(source, f"{s}2id.txt")
            if os.path.isfile(p):
                splits[s] = gkg.read_openke_triples(p, kg.num_entities, kg.num_relations, triple_format)
                if len(splits[s]) == 0:  # an empty split would fail later, deep in batching
                    raise GmemError(f"{p}: no triples (the file holds only its count line); "
                                    "leave the file out instead")
        return kg, splits
    return gkg.load_label_tsv(source, add_inverse=add_inverse)


def _keys(triples: np.ndarray, n_ent: int, n_rel: int) -> np.ndarray:
    t = np.asarray(triples, np.int64).reshape(-1, 3)
    return (t[:, 0] * n_rel + t[:, 1]) * n_ent + t[:, 2]


def corrupt(pos: np.ndarray, num_entities: int, rng: np.random.Generator, k: int = 1,
            known: np.ndarray | None = None, num_relations: int | None = None,
            max_tries: int = 100) -> np.ndarray:
    """k corruptions per positive -> int [n, k, 3]: head (p = 0.5) or else tail replaced by a
    uniform entity, relation kept. With `known` (int [m, 3] of true triples), corruptions that
    are known triples are redrawn (filtered), up to max_tries rounds."""
    pos = np.asarray(pos, np.int64).reshape(-1, 3)
    n = len(pos)
    out = np.repeat(pos[:, None, :], k, 1)
    todo = np.ones((n, k), bool)
    if known is not None:
        n_rel = int(num_relations or (max(int(known[:, 1].max(initial=0)), int(pos[:, 1].max(initial=0))) + 1))
        known_keys = np.unique(_keys(known, num_entities, n_rel))
    for _ in range(max_tries if known is not None else 1):
        idx = np.nonzero(todo)
        m = len(idx[0])
        if m == 0:
            break
        head = rng.random(m) < 0.5
        ent = rng.integers(0, num_entities, m)
        cand = pos[idx[0]].copy()
        cand[head, 0] = ent[head]
        cand[~head, 2] = ent[~head]
        out[idx] = cand
        if known is None:
            todo[:] = False
            break
        bad = np.isin(_keys(cand, num_entities, n_rel), known_keys)
        todo[idx] = bad
    return out


def classification_set(pos: np.ndarray, num_entities: int, known: np.ndarray, seed: int,
                       num_relations: int | None = None, filtered: bool = True,
                       shuffle: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Balanced set: (triples int32 [2n, 3], labels int32 [2n]); row 2i is positive i, row 2i+1
    its seeded corruption (filtered against `known`); shuffled (seeded) if asked."""
    rng = np.random.default_rng(seed)
    pos = np.asarray(pos, np.int64).reshape(-1, 3)
    neg = corrupt(pos, num_entities, rng, 1, known if filtered else None, num_relations)[:, 0]
    triples = np.stack([pos, neg], 1).reshape(-1, 3)
    labels = np.tile(np.asarray([1, 0]), len(pos))
    if shuffle:
        order = rng.permutation(len(triples))
        triples, labels = triples[order], labels[order]
    return triples.astype(np.int32), labels.astype(np.int32)


def triple_input(head: str, rel: str, tail: str) -> str:
    return f"\nThe input triple: \n( {entity_text(head)}, {entity_text(rel)}, {entity_text(tail)} )\n"


def classification_records(kg, triples: np.ndarray, labels: np.ndarray) -> list[dict]:
    """GMT-format records for (h, r, t) triples with 1/0 labels."""
    return [{"instruction": TC_INSTRUCTION,
             "input": triple_input(kg.entities[h], kg.relations[r], kg.entities[t]),
             "output": "True" if y else "False", "embedding_ids": [int(h), int(r), int(t)]}
            for (h, r, t), y in zip(np.asarray(triples).tolist(), np.asarray(labels).tolist())]


def load_records(path: str) -> list[dict]:
    """GMT instruction records from a JSON array or JSONL file, checked (all problems at once)."""
    if not os.path.isfile(path):
        raise GmemError(f"{path}: data file not found")
    text = read_utf8(path, "GMT records")
    try:
        rows = json.loads(text)
        rows = rows if isinstance(rows, list) else [rows]
    except json.JSONDecodeError as whole:
        rows = []
        first = True
        for i, ln in enumerate(text.splitlines(), 1):
            if ln.strip():
                try:
                    rows.append(json.loads(ln))
                except json.JSONDecodeError as e:
                    if first:  # not JSON lines either: a (pretty-printed) JSON document, broken at `whole`
                        raise GmemError(f"{path}:{whole.lineno}:{whole.colno}: bad JSON: {whole.msg}") from None
                    raise GmemError(f"{path}:{i}: bad JSON line: {e.msg}") from None
                first = False
    errs = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            errs.append(f"record {i}: not an object")
            continue
        for k in ("instruction", "output"):
            if not isinstance(r.get(k), str):
                errs.append(f"record {i}: field {k!r} missing or not a string")
        e = r.get("embedding_ids")
        if not (isinstance(e, list) and len(e) == 3 and all(isinstance(x, int) for x in e)):
            errs.append(f"record {i}: embedding_ids must be [head_id, relation_id, tail_id]")
        if len(errs) > 20:
            break
    collect_errors(errs, path)
    return rows


def check_ids(records: Sequence[dict], num_entities: int, num_relations: int, where: str) -> None:
    ids = np.asarray([r["embedding_ids"] for r in records], np.int64).reshape(-1, 3)
    bad = np.nonzero((ids[:, [0, 2]] < 0).any(1) | (ids[:, [0, 2]] >= num_entities).any(1)
                     | (ids[:, 1] < 0) | (ids[:, 1] >= num_relations))[0]
    if len(bad):
        raise GmemError(f"{where}: record {int(bad[0])} has embedding_ids {ids[bad[0]].tolist()} out of "
                        f"range ({num_entities} entities, {num_relations} relations); {len(bad)} such records")


def prompt_text(rec: dict) -> str:
    if rec.get("input"):
        return PROMPT_INPUT.format(instruction=rec["instruction"], input=rec["input"])
    return PROMPT_NO_INPUT.format(instruction=rec["instruction"])


def encode_records(tok, records: Sequence[dict], add_eos: bool = False, eos_id: int | None = None):
    """[(full ids, prompt length)] as GMT's generate_and_tokenize_prompt: the prompt length is
    the length of the tokenised prompt alone (the boundary of the response)."""
    out = []
    for r in records:
        p = encode_text(tok, prompt_text(r))
        full = encode_text(tok, prompt_text(r) + r["output"])
        if add_eos and eos_id is not None and (not full or full[-1] != eos_id):
            full = full + [eos_id]
        out.append((full, min(len(p), len(full))))
    return out


def pack(encoded, seq_len: int, pad_id: int, train_on_inputs: bool, prefix_len: int = 0):
    """Padded rows: ids int32 [n, L], attention mask int32 [n, L], loss mask float32 [n, L]
    (1 where position j's token is a target: the response, or prompt + response when
    train_on_inputs). Rows are left-padded; with prefix_len > 0 (every row begins with the same
    prefix_len tokens; response-only loss) the prefix stays at the front and the rest of the
    row is left-padded after it: [prefix | pads | rest], which gives the same positions
    (counted over real tokens) and lets LlamaModel share the prefix's work between rows. Rows longer than L keep their
    last tokens (the response survives; GMT truncates at the end at cutoff_len=512, which for
    these prompts never triggers)."""
    if prefix_len and train_on_inputs:
        raise ValueError("pack: a shared prefix needs the response-only loss (a target right "
                         "after the pads would be predicted from a pad)")
    n = len(encoded)
    ids = np.full((n, seq_len), pad_id, np.int32)
    att = np.zeros((n, seq_len), np.int32)
    lm = np.zeros((n, seq_len), np.float32)
    for i, (full, plen) in enumerate(encoded):
        head, full, plen = full[:prefix_len], full[prefix_len:], plen - prefix_len
        room = seq_len - prefix_len
        cut = max(0, len(full) - room)
        full, plen = full[cut:], max(0, plen - cut)
        s = seq_len - len(full)
        ids[i, :prefix_len], att[i, :prefix_len] = head, 1
        ids[i, s:] = full
        att[i, s:] = 1
        # The first real token has no context, so it is never a target (as in HF's shift).
        lm[i, s + (1 if train_on_inputs else plen):] = 1.0
    return ids, att, lm


def epoch_rows(n: int, batch_size: int, index: int, seed: int) -> np.ndarray:
    """Row ids [batch_size] of global batch `index` over n examples: a seeded permutation per
    epoch, read in order, so every example is seen once per epoch and none is dropped."""
    pos = index * batch_size + np.arange(batch_size)
    epoch, within = pos // n, pos % n
    return np.asarray([np.random.default_rng([seed, int(e)]).permutation(n)[w] for e, w in zip(epoch, within)])


def trim_width(arrays: dict, multiple: int, prefix_len: int = 0) -> dict:
    """Cut a packed batch to its longest row rounded up to `multiple` columns (at most its
    width), as HF's DataCollator(pad_to_multiple_of=...) pads to the longest row. The columns
    removed are pad columns of every row: the leading ones of left-padded rows, or the ones
    right after the shared prefix of [prefix | pads | rest] rows. arrays: {name: [n, L]} with
    "attention_mask"; others of another shape (edges) pass through."""
    att = np.asarray(arrays["attention_mask"])
    length = att.shape[1]
    need = int(att.sum(1).max()) if len(att) else length
    width = min(length, -(-need // multiple) * multiple)
    cut = length - width
    if cut <= 0:
        return arrays
    keep = np.r_[0:prefix_len, prefix_len + cut:length]
    return {k: (np.asarray(v)[:, keep] if np.ndim(v) == 2 and np.shape(v)[1] == length else v)
            for k, v in arrays.items()}


def common_prefix(encoded) -> int:
    """Length of the token prefix every (full ids, prompt length) row shares, kept at least one
    token short of the shortest prompt (the last prompt token must stay in each row's rest)."""
    if not encoded:
        return 0
    first = encoded[0][0]
    n = min(plen for _, plen in encoded) - 1
    for full, _ in encoded[1:]:
        k = 0
        while k < n and full[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


# ---- answers ----------------------------------------------------------------------------------

def parse_classification(text: str) -> int:
    """GMT: predicted True iff 'true' occurs in the lowercased response."""
    return int("true" in text.lower())


_LEAD = re.compile(r"^[\s\-\*\u2022\d\.\)\:\"'`]+")


def normalise_item(s: str) -> str:
    """Strip leading bullets, digits, '.)', ':' and quotes; lowercase; trim quotes at the end."""
    s = _LEAD.sub("", s.strip())
    return s.strip().strip("\"'`").strip().lower()


def parse_ranked_list(text: str, candidates: Sequence[str]) -> list[str]:
    """GMT's link-prediction parsing: lines and ';'/',' items, normalised, de-duplicated, then
    mapped to candidates (exact normalised match, else a candidate contained in the item).
    Returns candidate names in predicted order."""
    norm = {normalise_item(c): c for c in candidates}
    out, seen = [], set()
    for line in text.splitlines():
        for item in re.split(r"[;,]", line):
            it = normalise_item(item)
            if not it:
                continue
            hit = norm.get(it)
            if hit is None:
                hit = next((c for k, c in norm.items() if k and k in it), None)
            if hit is not None and hit not in seen:
                seen.add(hit)
                out.append(hit)
    return out


def rank_of(predicted: Sequence[str], gold: Sequence[str]) -> float:
    """1-based position of the first predicted item in the gold set; inf if none (a miss:
    unparsable answers count, unlike GMT which skips them)."""
    g = {normalise_item(x) for x in gold}
    for i, p in enumerate(predicted, 1):
        if normalise_item(p) in g:
            return float(i)
    return float("inf")


def classification_metrics(pred: Sequence[int], gold: Sequence[int]) -> dict:
    p, g = np.asarray(pred, bool), np.asarray(gold, bool)
    tp, fp, fn = int((p & g).sum()), int((p & ~g).sum()), int((~p & g).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"accuracy": float((p == g).mean()) if len(p) else 0.0, "precision": prec,
            "recall": rec, "f1": f1, "n": int(len(p))}


def ranking_metrics(ranks: Sequence[float], ks: Sequence[int] = (1, 3, 10)) -> dict:
    r = np.asarray(ranks, np.float64)
    out = {f"hits@{k}": float((r <= k).mean()) if len(r) else 0.0 for k in ks}
    out["mrr"] = float((1.0 / r).mean()) if len(r) else 0.0
    out["n"] = int(len(r))
    return out
