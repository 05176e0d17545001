"""gmem.systems.regrad.wiki_qa and .fanout: the embedded default QA sets. Checked on the real
embedded data: split disjointness (no passage in two sets), every answer inside its evidence
passage, questions not copied from it, and determinism under the seed."""

import pytest

from gmem.retrieval import wiki_corpus
from gmem.systems.regrad.fanout import fanout_dev
from gmem.systems.regrad.metrics import normalize_answer
from gmem.systems.regrad.fanout import default_qa
from gmem.systems.regrad.wiki_qa import question_for, wiki_qa_splits


@pytest.fixture(scope="module")
def passages():
    return {p.id: p for p in wiki_corpus().materialize()}


@pytest.fixture(scope="module")
def sets():
    return default_qa(seed=0)


def _article_passage_ids(records, passages):
    titles = {r["title"] for r in records}
    return {pid for pid, p in passages.items() if p.title in titles}


def test_sizes_and_record_shape(sets):
    assert len(sets["dev"]) == 300 and len(sets["train"]) > 5000 and len(sets["fanout_dev"]) > 50
    for name, recs in sets.items():
        assert [r["test_id"] for r in recs] == list(range(len(recs)))
        for r in recs:
            assert r["question"].endswith("?") or name == "fanout_dev"
            assert isinstance(r["answer"], list) and r["answer"] and r["evidence_id"]


def test_no_passage_is_shared_between_sets(sets, passages):
    ids = {name: _article_passage_ids(recs, passages) for name, recs in sets.items()}
    assert not ids["train"] & ids["dev"]
    assert not ids["train"] & ids["fanout_dev"] and not ids["dev"] & ids["fanout_dev"]
    for name, recs in sets.items():
        assert {r["evidence_id"] for r in recs} <= ids[name]


def test_answer_is_in_the_evidence_passage_and_question_is_not_copied(sets, passages):
    for name, recs in sets.items():
        for r in recs:
            p = passages[r["evidence_id"]]
            assert p.title == r["title"]
            text = f" {normalize_answer(p.text)} "
            assert f" {normalize_answer(r['answer'][0])} " in text
            if name != "fanout_dev":
                q = normalize_answer(r["question"])
                assert q not in text
                assert f" {normalize_answer(r['answer'][0])} " not in f" {q} "


def test_split_is_deterministic_under_the_seed(sets):
    again = wiki_qa_splits(seed=0, exclude_titles={r["title"] for r in sets["fanout_dev"]})
    assert again["dev"] == sets["dev"] and again["train"] == sets["train"]
    other = wiki_qa_splits(seed=1, exclude_titles={r["title"] for r in sets["fanout_dev"]})
    assert {r["title"] for r in other["dev"]} != {r["title"] for r in sets["dev"]}
    assert sorted(r["title"] for r in other["dev"] + other["train"]) == \
        sorted(r["title"] for r in sets["dev"] + sets["train"])
    assert fanout_dev() == sets["fanout_dev"]


def test_question_template():
    low = frozenset({"genus", "garment"})
    assert question_for("Genus of grass", "Biology", low) == "What is the genus of grass?"
    assert question_for("English novelist (1840–1928)", "People", low) == \
        "Who is the English novelist (1840–1928)?"
    assert question_for("Garments worn at night.", "Everyday life", low) == \
        "What are the Garments worn at night?"
    assert question_for("A type of boat", "Technology", low) == "What is A type of boat?"
