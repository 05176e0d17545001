"""Embedded default QA for ReGrad, built from the shipped Wikipedia summaries (no download).

Construction (deterministic; only the train/dev split depends on the seed). Every article of
asset `wiki-summaries-en` carries, next to its lead text, a Wikidata short description (field
`description`, e.g. "1968 film by Stanley Kubrick"), which is not part of the passage text.
Each usable article gives one template question whose answer is the article's title:

    topic "People":  "Who is the {description}?"   "Who is the English novelist and poet
                                                     (1840–1928)?" -> "Thomas Hardy"
    any other topic: "What is the {description}?"  "What is the 1968 film by Stanley
                                                     Kubrick?" -> "2001: A Space Odyssey"

("the" is left out when the description starts with a determiner such as "a"; "is" becomes
"are" when its first word looks plural; that word is lowercased when the corpus mostly writes it
in lower case, so "Genus of grass ..." reads "the genus of grass ...", "English novelist ..."
keeps its capital.) Descriptions are noun phrases almost always; the few that are clauses give
awkward but still answerable questions, and no attempt is made to rephrase them.
Gold answers: the title without a trailing parenthetical ("Queen (band)" -> "Queen"), then the
full title when it differs. An article is kept only if
  1. its description has at least 3 words and no other article has the same one (after §3.8
     normalization), so the question names one entity of the corpus;
  2. the first answer occurs as whole words (normalized) in one of the article's DPR passages,
     which becomes the record's `evidence_id` (the answer is in the corpus);
  3. the description does not occur in any of the article's passages (the question is not a
     sentence copied from the passage) and does not contain the answer (no leak).
About 7,000 articles pass. The split is by article: a seeded permutation
(numpy default_rng(seed)) puts the first n_dev articles in dev and the rest in train, so no
passage belongs to both. Retrieval over the whole corpus may of course return any passage.

Records follow gmem.systems.regrad.qa with two extra keys, `evidence_id` (the passage id in
gmem.retrieval.wiki_corpus()) and `title`. `fanout.default_qa` adds the FanOutQA dev sub-questions
(gmem.systems.regrad.fanout) as a second dev set and keeps their evidence articles out of
the template train and dev sets.
"""

from __future__ import annotations

import collections
import functools
import re
from typing import Iterable

import numpy as np

from gmem.retrieval.base import Passage
from gmem.retrieval.corpus import WORDS_PER_PASSAGE, wiki_articles, wiki_corpus
from gmem.systems.regrad.metrics import normalize_answer

_PAREN = re.compile(r"\s*\([^()]*\)$")
_DETERMINERS = frozenset("a an the one any each every some".split())
MIN_DESCRIPTION_WORDS = 3
N_DEV = 300  # the original's protocol scores the first 300 dev questions


def contains(norm_text: str, norm_phrase: str) -> bool:
    """Whole-word containment of two normalize_answer outputs."""
    return bool(norm_phrase) and f" {norm_phrase} " in f" {norm_text} "


def article_passages(words: int = WORDS_PER_PASSAGE
                     ) -> dict[str, tuple[tuple[Passage, str], ...]]:
    """title -> ((passage, normalized text), ...) over wiki_corpus(words), corpus order."""
    return _article_passages(int(words))


@functools.lru_cache(maxsize=2)  # one positional key, so f() and f(100) share the entry
def _article_passages(words: int) -> dict[str, tuple[tuple[Passage, str], ...]]:
    out: dict[str, list] = collections.defaultdict(list)
    for p in wiki_corpus(words).materialize():
        out[p.title].append((p, normalize_answer(p.text)))
    return {t: tuple(v) for t, v in out.items()}


def _lowercase_words(texts: Iterable[str]) -> frozenset[str]:
    """Words the corpus writes in lower case more often than capitalized."""
    text = "\n".join(texts)
    low = collections.Counter(re.findall(r"\b[a-z]+\b", text))
    cap = collections.Counter(w.lower() for w in re.findall(r"\b[A-Z][a-z]+\b", text))
    return frozenset(w for w, n in low.items() if n > cap[w])


def question_for(description: str, topic: str, lowercase: frozenset[str]) -> str:
    words = description.strip().rstrip(".").split()
    first = words[0]
    if first.lower() in lowercase and first[1:] == first[1:].lower():
        words[0] = first.lower()
    head = words[0].lower()
    det = "" if head in _DETERMINERS else "the "
    # a plural head noun ("Garments worn at night") takes "are"; -ss/-us/-is/-ics are singular
    verb = "are" if head.endswith("s") and not head.endswith(("ss", "us", "is", "ics")) else "is"
    return f"{'Who' if topic == 'People' else 'What'} {verb} {det}{' '.join(words)}?"


def template_candidates(words: int = WORDS_PER_PASSAGE) -> list[dict]:
    """Every kept article's record (corpus order, no test_id yet); see the module docstring."""
    return [{**r, "answer": list(r["answer"])} for r in _candidates(int(words))]


@functools.lru_cache(maxsize=2)
def _candidates(words: int) -> tuple[dict, ...]:  # cached; callers get copies
    arts = wiki_articles()
    by_title = article_passages(words)
    norm_desc = [normalize_answer(a.get("description") or "") for a in arts]
    seen = collections.Counter(norm_desc)
    lowercase = _lowercase_words(a["extract"] for a in arts)
    out = []
    for art, nd in zip(arts, norm_desc):
        desc = (art.get("description") or "").strip()
        title = art["title"]
        if len(desc.split()) < MIN_DESCRIPTION_WORDS or seen[nd] > 1 or title not in by_title:
            continue
        base = _PAREN.sub("", title)
        answers = [base] + ([title] if title != base else [])
        if any(contains(nd, normalize_answer(a)) for a in answers):
            continue
        psgs = by_title[title]
        if any(contains(n, nd) for _, n in psgs):
            continue
        nb = normalize_answer(base)
        evidence = next((p for p, n in psgs if contains(n, nb)), None)
        if evidence is None:
            continue
        out.append({"question": question_for(desc, art.get("topic", ""), lowercase),
                    "answer": answers, "evidence_id": evidence.id, "title": title})
    return tuple(out)


def _numbered(records: list[dict]) -> list[dict]:
    return [{"test_id": i, **r} for i, r in enumerate(records)]


def wiki_qa_splits(seed: int = 0, n_dev: int = N_DEV, exclude_titles: Iterable[str] = (),
                   words: int = WORDS_PER_PASSAGE) -> dict[str, list[dict]]:
    """{"train", "dev"}: the template records split by article with `seed`; articles named in
    exclude_titles go to neither. test_id numbers each split from 0."""
    excluded = set(exclude_titles)
    cands = [r for r in template_candidates(words) if r["title"] not in excluded]
    order = np.random.default_rng(seed).permutation(len(cands))
    return {"train": _numbered([cands[i] for i in order[n_dev:]]),
            "dev": _numbered([cands[i] for i in order[:n_dev]])}
