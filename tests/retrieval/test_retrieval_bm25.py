"""gmem.retrieval.bm25 and .analysis: scores against the BM25 formula written out here, rankings,
save/open without rebuilding, no-hit padding, query truncation and the corpus-fingerprint check.

Tolerance: bm25s stores and sums float32 scores; here the formula is evaluated in float64.
Scores on this corpus lie in [0.1, 10], a handful of float32 terms are summed per passage, so
rtol=1e-5 (about 80 float32 ulps) with atol=1e-6 holds with a wide margin and would still fail
for a wrong idf, k1, b, avgdl or tie-breaker (those change scores by percent)."""

import collections
import math

import numpy as np
import pytest

from gmem.errors import GmemError
from gmem.retrieval import BM25Retriever, Corpus, Passage, open_retriever, truncate_query
from gmem.retrieval import analysis
from gmem.retrieval.base import META_FILE

PASSAGES = [
    Passage("1", "Cat", "The cat sat on the mat. A cat's whiskers are long and the cat purrs."),
    Passage("2", "Cat", "Cats are small carnivorous mammals; domestic cats live with people."),
    Passage("3", "Dog", "The dog is a domesticated descendant of the wolf, kept by people."),
    Passage("4", "Wolf", "The wolf is a large canine native to Eurasia and North America."),
    Passage("5", "", "Mats and rugs are woven from wool, cotton or jute in many countries."),
    Passage("6", "The Beatles", "The Beatles were an English rock band formed in Liverpool in 1960."),
    Passage("7", "Liverpool", "Liverpool is a city in England; the band played in its Cavern Club "
                              "and the city hosts a museum about the band."),
    Passage("8", "Mammal", "Mammals are animals that feed their young with milk; the wolf, the dog "
                           "and the cat are mammals, as are people."),
]
QUERIES = ["cat", "cats living with people", "wolf dog", "wolf wolf", "Liverpool band",
           "beatles", "woven mats", "mammal milk dog cat people wolf", "zebra"]


def formula_scores(passages, query, k1=1.2, b=0.75, tie=0.5):
    """Lucene BM25 per field (N and avgdl over passages whose field is non-empty), combined as
    ES best_fields: max + tie * the other field. float64."""
    q = analysis.analyze(query)
    fields = []
    for attr in ("title", "text"):
        docs = [analysis.analyze(getattr(p, attr)) for p in passages]
        nonempty = [d for d in docs if d]
        n_docs = len(nonempty)
        avgdl = sum(len(d) for d in nonempty) / n_docs
        df = collections.Counter(t for d in nonempty for t in set(d))
        scores = []
        for d in docs:
            tf = collections.Counter(d)
            total = 0.0
            for t in q:  # a repeated query term counts again
                if tf[t]:
                    idf = math.log(1 + (n_docs - df[t] + 0.5) / (df[t] + 0.5))
                    total += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(d) / avgdl))
            scores.append(total)
        fields.append(scores)
    return np.array([max(a, c) + tie * min(a, c) for a, c in zip(*fields)])


@pytest.fixture(scope="module")
def retriever():
    return BM25Retriever.build(Corpus("toy", PASSAGES), progress=False)


def test_analyzer_matches_es_english_chain():
    # possessive 's dropped, lowercase, Lucene's stop words gone, Porter stems
    assert analysis.analyze("The Cat's whiskers ARE running in the U.S. and 3.14") == \
        ["cat", "whisker", "run", "u.", "3.14"]
    assert analysis.analyze("the of and a an is it to was will with") == []
    assert analysis.tokenize("O'Neil, 1,000 dogs; end") == ["O'Neil", "1,000", "dogs", "end"]
    assert analysis.analyze("connection connected connecting") == ["connect"] * 3
    assert len(analysis.STOP_WORDS) == 33


@pytest.mark.parametrize("query", QUERIES)
def test_scores_and_ranking_match_the_formula(retriever, query):
    want = formula_scores(PASSAGES, query)
    got = retriever.scores(query)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Ranking: positive scores only, best first, ties by corpus order. No near-ties here, so
    # float32 rounding cannot reorder (checked, so the test cannot pass by luck).
    pos = sorted((i for i in range(len(want)) if want[i] > 0), key=lambda i: (-want[i], i))
    gaps = np.diff(sorted(set(np.round(want[pos], 9))))
    assert (gaps > 1e-4).all()
    k = 4
    hits = retriever.search([query], k)
    expect = [PASSAGES[i].id for i in pos[:k]] + [""] * max(0, k - len(pos))
    assert list(hits.ids[0]) == expect
    assert list(hits.passages[0]) == [PASSAGES[int(i) - 1].text if i else "" for i in expect]
    np.testing.assert_allclose(hits.scores[0], [want[int(i) - 1] if i else 0 for i in expect],
                               rtol=1e-5, atol=1e-6)


def test_title_field_and_tie_breaker_count(retriever):
    # "beatles" is in passage 6's title and text: max + 0.5 * other, not the sum or the max.
    s = retriever.field_scores("beatles")
    t, x = float(s["title"][5]), float(s["text"][5])
    assert t > 0 and x > 0
    assert retriever.scores("beatles")[5] == pytest.approx(max(t, x) + 0.5 * min(t, x), rel=1e-6)
    # passage 5 has an empty title: its title field scores nothing and is left out of N_title
    assert s["title"][4] == 0


def test_no_hit_queries_are_padded(retriever):
    hits = retriever.search(["the of and", "zebra quagga", "liverpool"], 3)
    assert hits.ids.shape == hits.scores.shape == hits.passages.shape == (3, 3)
    assert hits.scores.dtype == np.float32
    for q in (0, 1):
        assert list(hits.ids[q]) == ["", "", ""]
        assert list(hits.passages[q]) == ["", "", ""]
        assert list(hits.scores[q]) == [0.0, 0.0, 0.0]
    # "liverpool" matches passages 6 and 7 only: the third slot is padding
    assert sorted(hits.ids[2][:2]) == ["6", "7"] and hits.ids[2][2] == ""
    assert (hits.scores[2][:2] > 0).all() and hits.passages[2][2] == ""
    # k above the corpus size is fine (bm25s itself would refuse it)
    assert retriever.search(["cat"], 20).ids.shape == (1, 20)
    with pytest.raises(GmemError, match="k must be"):
        retriever.search(["cat"], 0)


def test_query_is_cut_to_its_last_tokens(retriever):
    long_q = "zebra " * 10 + "liverpool " * 256
    assert truncate_query(long_q) == " ".join(["liverpool"] * 256)
    assert truncate_query("short query") == "short query"

    class Tok:  # HF-like: one id per character
        def encode(self, s, add_special_tokens=False):
            return [ord(c) for c in s]

        def decode(self, ids, skip_special_tokens=True):
            return "".join(map(chr, ids))
    assert truncate_query("abcdef", 4, Tok()) == "cdef"
    # the BM25 search applies it: "beatles" before 256 other words is dropped
    q = "beatles " + "mat " * 256
    assert "6" not in retriever.search([q], 3).ids[0]
    untruncated = BM25Retriever.build(PASSAGES, progress=False, max_query_tokens=None)
    assert "6" in untruncated.search([q], 3).ids[0]


def test_save_open_round_trip_without_rebuilding(retriever, tmp_path, monkeypatch):
    import bm25s

    retriever.save(tmp_path / "idx")
    calls = []
    real = analysis.analyze
    monkeypatch.setattr(analysis, "analyze", lambda t: calls.append(t) or real(t))

    def no_index(*a, **k):
        raise AssertionError("open() rebuilt the index")
    monkeypatch.setattr(bm25s.BM25, "index", no_index)
    again = open_retriever(tmp_path / "idx", Corpus("toy", PASSAGES).fingerprint())
    assert calls == []  # nothing was re-analyzed while opening
    assert isinstance(again, BM25Retriever) and again.num_passages == len(PASSAGES)
    a, b = retriever.search(QUERIES, 5), again.search(QUERIES, 5)
    assert (a.ids == b.ids).all() and (a.passages == b.passages).all()
    np.testing.assert_array_equal(a.scores, b.scores)
    assert again.passage("6") == PASSAGES[5]
    mm = BM25Retriever.open(tmp_path / "idx", mmap=True)
    np.testing.assert_array_equal(mm.search(QUERIES, 5).scores, a.scores)


def test_refuses_an_index_of_another_corpus(retriever, tmp_path):
    retriever.save(tmp_path / "idx")
    other = Corpus("toy", PASSAGES[:-1] + [Passage("8", "Mammal", "changed text")])
    with pytest.raises(GmemError, match=f"{META_FILE}.*fingerprint") as e:
        open_retriever(tmp_path / "idx", other.fingerprint())
    assert str(tmp_path / "idx" / META_FILE) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(GmemError, match="missing"):
        open_retriever(tmp_path / "nothing")


def test_build_refuses_repeated_ids():
    with pytest.raises(GmemError, match="repeats passage id '1'"):
        BM25Retriever.build([PASSAGES[0], PASSAGES[0]], progress=False)
