"""FanOutQA dev sub-questions answerable from the embedded corpus: a second, human-written dev set.

FanOutQA (asset `fanoutqa-dev`, fanoutqa==1.1.1, CC BY-SA 4.0) decomposes each of its 310 dev
questions into single-hop sub-questions, each with an answer and the Wikipedia page holding the
evidence. The page text itself is not shipped, so a sub-question is kept only if
  - its answer is a single string or number (lists, dicts and booleans are dropped; an
    integral float is written without ".0"),
  - its evidence page's title is an article of the embedded summaries, and
  - the answer occurs as whole words (§3.8 normalization) in one of that article's DPR passages,
    which becomes `evidence_id`.
About 80 sub-questions pass (the lead summaries are short). Records, in file order:
{"test_id", "question", "answer": [answer], "evidence_id", "title", "fanout_id"}.
"""

from __future__ import annotations

import pathlib

import gmem.assets
from gmem.systems.regrad.metrics import normalize_answer
from gmem.systems.regrad.qa import load_json
from gmem.systems.regrad.wiki_qa import N_DEV, article_passages, contains, wiki_qa_splits


def _answer_text(a) -> str | None:
    if isinstance(a, bool) or not isinstance(a, (str, int, float)):
        return None
    if isinstance(a, float):
        return str(int(a)) if a.is_integer() else repr(a)
    return str(a).strip() or None


def subquestions(path: str | pathlib.Path | None = None) -> list[dict]:
    """Every sub-question node (depth first, file order) of the FanOutQA dev file."""
    if path is None:
        path = gmem.assets.path("fanoutqa-dev")
    out: list[dict] = []

    def walk(node: dict) -> None:
        for sub in node.get("decomposition") or []:
            out.append(sub)
            walk(sub)

    for q in load_json(pathlib.Path(path)):
        walk(q)
    return out


def fanout_dev(path: str | pathlib.Path | None = None) -> list[dict]:
    """The kept sub-questions as QA records (see the module docstring)."""
    by_title = article_passages()
    out = []
    for sub in subquestions(path):
        ev = sub.get("evidence") or {}
        ans = _answer_text(sub.get("answer"))
        title = ev.get("title")
        if ans is None or title not in by_title or not sub.get("question"):
            continue
        na = normalize_answer(ans)
        hit = next((p for p, n in by_title[title] if contains(n, na)), None)
        if hit is None:
            continue
        out.append({"test_id": len(out), "question": sub["question"], "answer": [ans],
                    "evidence_id": hit.id, "title": title, "fanout_id": sub.get("id")})
    return out


def default_qa(seed: int = 0, n_dev: int = N_DEV) -> dict[str, list[dict]]:
    """{"train", "dev", "fanout_dev"}: the embedded QA sets, no article shared between any two."""
    fan = fanout_dev()
    splits = wiki_qa_splits(seed, n_dev, exclude_titles={r["title"] for r in fan})
    return {**splits, "fanout_dev": fan}
