"""Scoring generated answers as TAGLAS's text accuracy does (spec A9).

Exact match after normalisation: lower-case, punctuation removed, the articles a / an / the
dropped, whitespace collapsed. Yes/no questions: the first "yes" or "no" word of the generation
(regex \\b(Yes|yes|No|no)\\b) must be the label; compared in lower case, so "Yes" and "yes" are
the same answer; a generation with neither word is wrong.
"""

from __future__ import annotations

import collections
import math
import re
import string
from typing import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
YES_NO = re.compile(r"\b(Yes|yes|No|no)\b")


def normalize_answer(text: str) -> str:
    """lower -> strip punctuation -> drop articles -> collapse whitespace."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, label: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(label)


def yes_no(prediction: str) -> str | None:
    """"yes", "no", or None when the generation says neither."""
    m = YES_NO.search(prediction)
    return m.group(1).lower() if m else None


def yes_no_match(prediction: str, label: str) -> bool:
    return yes_no(prediction) == label.strip().lower()


def text_accuracy(predictions: Sequence[str], labels: Sequence[str], binary: bool = False) -> float:
    """Share of predictions that match their label (yes/no rule when binary)."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        return 0.0
    match = yes_no_match if binary else exact_match
    return sum(match(p, lab) for p, lab in zip(predictions, labels)) / len(labels)


def corpus_bleu(hypotheses: Sequence[Sequence], references: Sequence[Sequence], max_n: int = 4) -> float:
    """Corpus BLEU-max_n (Papineni et al.: clipped n-gram precisions pooled over the corpus,
    geometric mean, brevity penalty; one reference each, no smoothing) over token sequences.
    Written here (a few lines) because the compressor is scored on token ids, not detokenised
    text, which is what BLEU libraries (sacrebleu) take."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    match, total = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for h, r in zip(hypotheses, references):
        h, r = list(h), list(r)
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_n + 1):
            hc = collections.Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
            rc = collections.Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
            match[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or min(match) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(match, total)) / max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(log_p)
