"""Passage retrieval for any system: one interface, BM25 embedded, Elasticsearch for big corpora.

    >>> from gmem.retrieval import BM25Retriever, wiki_corpus, open_retriever
    >>> corpus = wiki_corpus()                         # embedded Wikipedia summaries, DPR form
    >>> r = BM25Retriever.build(corpus)                # bm25s, ES english-analyzer scoring
    >>> r.save("runs/wiki-bm25")
    >>> r = open_retriever("runs/wiki-bm25", corpus.fingerprint())   # no rebuild
    >>> ids, scores, passages = r.search(["Who wrote Hamlet?"], k=3)  # each [1, 3]

Modules: base (interface, Hits and their padding, fingerprints, query truncation), analysis
(ES english analyzer), corpus (DPR passages, TSV files), bm25 (bm25s backend), elastic
(Elasticsearch backend, `pip install "gmem[es]"`). Command line: `python -m gmem.retrieval`.
"""

from __future__ import annotations

import pathlib

from gmem.errors import GmemError
from gmem.retrieval.base import (
    MAX_QUERY_TOKENS,
    META_FILE,
    Hits,
    Passage,
    Retriever,
    check_fingerprint,
    fingerprint,
    read_meta,
    truncate_query,
)
from gmem.retrieval.bm25 import BM25Retriever
from gmem.retrieval.corpus import Corpus, read_dpr_tsv, split_passages, tsv_corpus, wiki_corpus, write_dpr_tsv
from gmem.retrieval.elastic import ElasticRetriever

__all__ = ["MAX_QUERY_TOKENS", "META_FILE", "BM25Retriever", "Corpus", "ElasticRetriever", "Hits",
           "Passage", "Retriever", "fingerprint", "open_retriever", "read_dpr_tsv",
           "split_passages", "truncate_query", "tsv_corpus", "wiki_corpus", "write_dpr_tsv"]


def open_retriever(directory: str | pathlib.Path, expected_fingerprint: str | None = None,
                   **kw) -> Retriever:
    """Reopen whatever retriever was saved in `directory` (its gmem-retriever.json names the
    backend); GmemError naming that file when expected_fingerprint is given and differs."""
    path, meta = read_meta(directory)
    if meta["backend"] == BM25Retriever.backend:
        return BM25Retriever.open(directory, expected_fingerprint, **kw)
    if meta["backend"] == ElasticRetriever.backend:
        check_fingerprint(str(path), meta, expected_fingerprint)
        return ElasticRetriever.open(meta.get("url"), meta.get("index", "wiki"),
                                     expected_fingerprint or meta.get("fingerprint"), **kw)
    raise GmemError(f"{path}: unknown backend {meta['backend']!r} (known: "
                    f"{BM25Retriever.backend!r}, {ElasticRetriever.backend!r})")
