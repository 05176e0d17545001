"""Scoring generated answers as TAGLAS's text accuracy does (spec A9).

Exact match after normalisation: lower-case, punctuation removed, the articles a / an / the
dropped, whitespace collapsed. Yes/no questions: the first "yes" or "no" word of the generation
(regex \\b(Yes|yes|No|no)\\b) must be the label; compared in lower case, so "Yes" and "yes" are
the same answer; a generation with neither word is wrong.
"""

from __future__ import annotations

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
