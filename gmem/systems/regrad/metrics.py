"""EM and F1 exactly as the original ReGrad scores answers (spec §3.8, src/evaluate.py).

normalize_answer: lowercase -> drop ASCII punctuation (string.punctuation) -> replace the words
a/an/the by a space, except when the whole text is exactly "a" (the original's quirk: the answer
"A" stays "a" instead of becoming empty) -> collapse whitespace.

- EM: normalized strings equal.
- F1: token-overlap F1 of the normalized strings (with precision and recall). If either side
  normalizes to "yes", "no" or "noanswer" and the two differ, all three are 0.
- Several gold aliases: EM is the max over aliases; F1 is that of the alias with the highest
  F1 (the first such alias on ties), reported with that alias's precision and recall.
- `evaluate`: per dataset, the mean over the questions that have a prediction, x100, rounded to
  2 decimals; `combine`: the unweighted mean of em/f1/prec/recall over datasets (model
  selection in the original uses the combined F1).
"""

from __future__ import annotations

import collections
import re
import string
from typing import Mapping, Sequence

from gmem.errors import GmemError

_DROP_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SPECIAL = ("yes", "no", "noanswer")
KEYS = ("em", "f1", "prec", "recall")


def normalize_answer(s: str) -> str:
    """The original's answer normalization (see the module docstring)."""
    text = s.lower().translate(_DROP_PUNCT)  # == "".join(c for c in s if c not in punctuation)
    if text != "a":  # the quirk: only the exact text "a" escapes article removal
        text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


def f1_score(prediction: str, gold: str) -> tuple[float, float, float]:
    """(f1, precision, recall) of normalized tokens; 0s on a yes/no/noanswer mismatch."""
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    if (pred in _SPECIAL or ref in _SPECIAL) and pred != ref:
        return 0.0, 0.0, 0.0
    p_toks, r_toks = pred.split(), ref.split()
    same = sum((collections.Counter(p_toks) & collections.Counter(r_toks)).values())
    if same == 0:
        return 0.0, 0.0, 0.0
    precision, recall = same / len(p_toks), same / len(r_toks)
    return 2 * precision * recall / (precision + recall), precision, recall


def score(prediction: str, gold: str | Sequence[str]) -> dict[str, float]:
    """em/f1/prec/recall of one prediction against a gold answer or list of aliases."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    if not golds:
        raise GmemError("regrad.metrics: a question has an empty list of gold answers")
    em = max(exact_match(prediction, g) for g in golds)
    f1, prec, recall = max((f1_score(prediction, g) for g in golds), key=lambda t: t[0])
    return {"em": float(em), "f1": f1, "prec": prec, "recall": recall}


def evaluate(predictions: Mapping[int, str], records: Sequence[Mapping]) -> dict[str, float]:
    """Mean em/f1/prec/recall x100 (2 decimals) over the records (each with "test_id" and
    "answer") that have a prediction in `predictions` (test_id -> predicted text)."""
    totals = dict.fromkeys(KEYS, 0.0)
    n = 0
    for rec in records:
        if rec["test_id"] in predictions:
            n += 1
            for key, v in score(predictions[rec["test_id"]], rec["answer"]).items():
                totals[key] += v
    if n == 0:
        raise GmemError("regrad.metrics: no record has a prediction (test_ids do not match)")
    return {key: round(v / n * 100, 2) for key, v in totals.items()}


def combine(per_dataset: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Unweighted mean of each metric over datasets (the original's combined score)."""
    if not per_dataset:
        raise GmemError("regrad.metrics: no datasets to combine")
    return {key: sum(m[key] for m in per_dataset.values()) / len(per_dataset) for key in KEYS}
