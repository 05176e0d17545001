"""gmem.retrieval.elastic. Two parts:

- Offline, against a stand-in client that records requests: the mapping, the original's query
  (multi_match best_fields over title/txt, tie_breaker 0.5, dfs_query_then_fetch, last 256
  words), padding, the count check after bulk indexing, and the corpus-identity checks.
- Live, against a real cluster named by GMEM_ES_URL (e.g. http://localhost:9200); skipped with
  that reason when it is unset, since no server runs in CI.
"""

import os
import uuid

import numpy as np
import pytest

from gmem.errors import GmemError
from gmem.retrieval import BM25Retriever, Corpus, ElasticRetriever, Passage, open_retriever
from gmem.retrieval import elastic

PASSAGES = [Passage(str(i), t, x) for i, (t, x) in enumerate([
    ("Cat", "the cat sat on the mat"), ("Dog", "a dog chased the cat"),
    ("Wolf", "wolves live in packs"), ("Liverpool", "the beatles came from liverpool"),
    ("Mat", "a mat of woven wool")], start=1)]


class _Indices:
    def __init__(self, es):
        self.es = es

    def exists(self, index):
        return index in self.es.mappings

    def create(self, index, mappings):
        self.es.mappings[index] = {"mappings": dict(mappings)}
        self.es.docs[index] = {}

    def delete(self, index):
        self.es.mappings.pop(index), self.es.docs.pop(index)

    def refresh(self, index):
        self.es.refreshed.append(index)

    def get_mapping(self, index):
        return {index: self.es.mappings[index]}

    def put_mapping(self, index, meta):
        self.es.mappings[index]["mappings"]["_meta"] = meta


class FakeES:
    """Just enough of the client: documents in a dict; msearch answers with the documents
    sharing a word with the query (score = shared words), and records the request."""

    def __init__(self, keep=None):
        self.mappings, self.docs, self.refreshed, self.searches = {}, {}, [], []
        self.keep = keep  # keep only the first `keep` documents: a silently full disk
        self.indices = _Indices(self)

    def count(self, index):
        return {"count": len(self.docs[index])}

    def msearch(self, searches):
        self.searches.append(searches)
        out = []
        for head, body in zip(searches[::2], searches[1::2]):
            words = set(body["query"]["multi_match"]["query"].lower().split())
            hits = [{"_id": i, "_score": float(len(words & set((d["title"] + " " + d["txt"])
                                                           .lower().split()))),
                     "_source": {"txt": d["txt"]}} for i, d in self.docs[head["index"]].items()]
            hits = sorted((h for h in hits if h["_score"] > 0), key=lambda h: -h["_score"])
            out.append({"hits": {"hits": hits[:body["size"]]}})
        return {"responses": out}


@pytest.fixture
def fake(monkeypatch):
    es = FakeES()

    def bulk(client, actions, chunk_size, where):
        for a in actions:
            if client.keep is None or len(client.docs[a["_index"]]) < client.keep:
                client.docs[a["_index"]][a["_id"]] = a["_source"]
            yield True, {}
    monkeypatch.setattr(elastic, "_bulk", bulk)
    return es


def test_mapping_query_and_padding(fake, tmp_path):
    corpus = Corpus("toy", PASSAGES)
    r = ElasticRetriever.build(corpus, "http://es:9200", "toy", client=fake, progress=False)
    m = fake.mappings["toy"]["mappings"]
    assert m["properties"] == {"title": {"type": "text", "analyzer": "english"},
                               "txt": {"type": "text", "analyzer": "english"}}
    assert m["_meta"]["gmem_fingerprint"] == corpus.fingerprint() == r.fingerprint
    assert m["_meta"]["gmem_complete"] is True and m["_meta"]["gmem_count"] == 5
    assert fake.refreshed == ["toy"]
    hits = r.search(["cat mat", "zebra", "w " * 300 + "wolves"], 3)
    head, body = fake.searches[0][0], fake.searches[0][1]
    assert head == {"index": "toy", "search_type": "dfs_query_then_fetch"}
    assert body["query"] == {"multi_match": {"query": "cat mat", "type": "best_fields",
                                             "fields": ["title", "txt"], "tie_breaker": 0.5}}
    assert body["size"] == 3
    assert fake.searches[0][5]["query"]["multi_match"]["query"].split() == \
        ["w"] * 255 + ["wolves"]  # the last 256 words
    assert list(hits.ids[1]) == ["", "", ""] and list(hits.passages[1]) == ["", "", ""]
    assert hits.scores.dtype == np.float32 and list(hits.scores[1]) == [0, 0, 0]
    assert hits.ids[0][0] in ("1", "5") and hits.passages[0][0] in (PASSAGES[0].text, PASSAGES[4].text)
    # saved description reopens through open_retriever (the client is passed through)
    r.save(tmp_path / "es")
    again = open_retriever(tmp_path / "es", corpus.fingerprint(), client=fake)
    assert isinstance(again, ElasticRetriever) and again.num_passages == 5


def test_count_shortfall_after_refresh_is_an_error(fake):
    fake.keep = 3
    with pytest.raises(GmemError, match="holds 3 documents after refresh but 5 passages were "
                                        "sent; the index silently stopped growing"):
        ElasticRetriever.build(PASSAGES, None, "toy", client=fake, progress=False)
    # the unfinished index is never taken for a good one
    with pytest.raises(GmemError, match="did not finish"):
        ElasticRetriever.open(None, "toy", client=fake)


def test_identity_checks(fake):
    ElasticRetriever.build(Corpus("toy", PASSAGES), None, "toy", client=fake, progress=False)
    with pytest.raises(GmemError, match="already exists"):
        ElasticRetriever.build(PASSAGES, None, "toy", client=fake, progress=False)
    with pytest.raises(GmemError, match="index 'toy': records corpus 'toy'.*not the expected"):
        ElasticRetriever.open(None, "toy", Corpus("x", PASSAGES[:2]).fingerprint(), client=fake)
    fake.docs["toy"].pop("1")
    with pytest.raises(GmemError, match="holds 4 documents but was built with 5"):
        ElasticRetriever.open(None, "toy", client=fake)
    with pytest.raises(GmemError, match="not a valid Elasticsearch index name"):
        ElasticRetriever.open(None, "Wiki", client=fake)
    with pytest.raises(GmemError, match="no such index"):
        ElasticRetriever.open(None, "nope", client=fake)


ES_URL = os.environ.get("GMEM_ES_URL")
live = pytest.mark.skipif(not ES_URL, reason="GMEM_ES_URL is not set: no Elasticsearch cluster "
                                             "to test against (e.g. GMEM_ES_URL=http://localhost:9200)")


@live
def test_live_cluster_build_search_and_compare_with_bm25s():
    pytest.importorskip("elasticsearch")
    index = f"gmem-test-{uuid.uuid4().hex[:12]}"
    corpus = Corpus("toy", PASSAGES)
    r = ElasticRetriever.build(corpus, ES_URL, index, progress=False)
    try:
        assert r.client.count(index=index)["count"] == len(PASSAGES)
        queries = ["cat", "woven mat", "beatles liverpool", "the of and"]
        es_hits = r.search(queries, 3)
        bm = BM25Retriever.build(corpus, progress=False).search(queries, 3)
        # Fields here are shorter than 24 terms, where Lucene's one-byte length norm is exact,
        # and the words are plain English, where the analyzers agree: same ids, close scores
        # (ES computes in float32 with a cached norm table; 1e-4 relative).
        assert (es_hits.ids == bm.ids).all()
        np.testing.assert_allclose(es_hits.scores, bm.scores, rtol=1e-4, atol=1e-6)
        assert list(es_hits.ids[3]) == ["", "", ""]
        again = ElasticRetriever.open(ES_URL, index, corpus.fingerprint())
        assert (again.search(queries, 3).ids == es_hits.ids).all()
        with pytest.raises(GmemError, match="not the expected"):
            ElasticRetriever.open(ES_URL, index, Corpus("x", PASSAGES[:1]).fingerprint())
    finally:
        r.client.indices.delete(index=index)
