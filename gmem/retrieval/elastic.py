"""Elasticsearch retriever for corpora too large for memory (DPR's 21M passages), as the original.

Index: mapping `title` and `txt` as `text` fields with the built-in `english` analyzer (the
original's prep_elastic.py through BEIR), one document per passage with `_id` = passage id.
Bulk indexing streams the corpus with a tqdm bar, then refreshes and checks that the index holds
exactly as many documents as were sent: ES silently stops growing an index when a node's disk
passes its flood-stage watermark, which the original's README warns about (verify
docs.count = 21,015,324), so gmem checks it for you. Corpus identity (name, fingerprint,
count) is written into the mapping's `_meta` only after that check passes.

Query: per query, `multi_match` of type `best_fields` over `title` and `txt` with
`tie_breaker: 0.5`, `search_type=dfs_query_then_fetch`, sent in batches through `_msearch`;
the query is first cut to its last 256 tokens (gmem.retrieval.base.truncate_query). The
passage returned is the `txt` field. Two deliberate differences: only `txt` is fetched from
`_source` (the original fetched the whole source and used `txt`), and a failed search raises
GmemError instead of silently returning padding.

The `elasticsearch` client is an optional dependency (extra `es`); it is imported only when a
client is made, so the rest of gmem.retrieval works without it.
"""

from __future__ import annotations

import pathlib
from typing import Any, Iterable, Sequence

from tqdm import tqdm

from gmem.errors import GmemError
from gmem.retrieval.base import (MAX_QUERY_TOKENS, Fingerprinter, Hits, Passage, check_k,
                                 pack_hits, truncate_query, write_meta)
from gmem.retrieval.corpus import Corpus

MAPPING = {"properties": {"title": {"type": "text", "analyzer": "english"},
                          "txt": {"type": "text", "analyzer": "english"}}}
MAX_WINDOW = 10_000  # ES index.max_result_window default: k beyond it fails server-side


def connect(url: str, **client_kw) -> Any:
    """An `elasticsearch.Elasticsearch` client for `url`."""
    try:
        # Imported here, not at module top: the client is an optional, heavy dependency that
        # only users of a cluster install (pip install "gmem[es]").
        from elasticsearch import Elasticsearch
    except ImportError:
        raise GmemError("retrieval: the Elasticsearch backend needs the `elasticsearch` package; "
                        "install it with pip install 'gmem[es]'") from None
    client_kw.setdefault("request_timeout", 100)
    client_kw.setdefault("retry_on_timeout", True)
    client_kw.setdefault("max_retries", 3)
    return Elasticsearch(url, **client_kw)


def query_body(text: str, k: int) -> dict:
    """The original's search body for one (already truncated) query."""
    return {"_source": ["txt"], "size": k,
            "query": {"multi_match": {"query": text, "type": "best_fields",
                                      "fields": ["title", "txt"], "tie_breaker": 0.5}}}


def check_index_name(index: str) -> str:
    """ES's rules for index names, checked before any request (its own error is less clear)."""
    bad = [c for c in '\\/*?"<>| ,#:' if c in index]
    if (not index or bad or index != index.lower() or index.startswith(("_", "-", "+"))
            or index in (".", "..")):
        raise GmemError(f"retrieval: {index!r} is not a valid Elasticsearch index name "
                        f"(lowercase, no \\/*?\"<>| ,#:, not starting with _ - +)")
    return index


class ElasticRetriever:
    """Search an ES index (see the module docstring). Make one with `build` or `open`."""

    backend = "elasticsearch"

    def __init__(self, client: Any, index: str, *, url: str | None = None,
                 corpus_name: str = "", fingerprint: str | None = None, num_passages: int = 0,
                 max_query_tokens: int | None = MAX_QUERY_TOKENS, query_tokenizer: Any = None,
                 batch_size: int = 64):
        self.client, self.index, self.url = client, index, url
        self.corpus_name, self.fingerprint = corpus_name, fingerprint
        self.num_passages = num_passages
        self.max_query_tokens, self.query_tokenizer = max_query_tokens, query_tokenizer
        self.batch_size = batch_size

    @property
    def where(self) -> str:
        return f"elasticsearch {self.url or ''} index {self.index!r}".replace("  ", " ")

    @classmethod
    def build(cls, corpus: Corpus | Iterable[Passage], url: str | None = None,
              index: str = "wiki", *, client: Any = None, name: str | None = None,
              replace: bool = False, chunk_size: int = 500, progress: bool = True,
              **kw) -> "ElasticRetriever":
        """Create `index` and bulk-index the corpus into it; GmemError if the index exists
        (unless replace=True), if a bulk request fails, or if the final count is short."""
        check_index_name(index)
        client = client if client is not None else connect(url)
        name = name or (corpus.name if isinstance(corpus, Corpus) else "passages")
        where = f"elasticsearch {url or ''} index {index!r}".replace("  ", " ")
        if client.indices.exists(index=index):
            if not replace:
                raise GmemError(f"{where}: already exists; open it, or pass replace=True to "
                                f"delete and rebuild it")
            client.indices.delete(index=index)
        client.indices.create(index=index, mappings={
            **MAPPING, "_meta": {"gmem_corpus": name, "gmem_complete": False}})
        fp, sent = Fingerprinter(), [0]

        def actions():
            for p in corpus:
                fp.add(p)
                sent[0] += 1
                yield {"_index": index, "_id": p.id, "_source": {"title": p.title, "txt": p.text}}

        bar = tqdm(desc=f"indexing {name} into {index}", unit="psg", disable=not progress)
        try:
            for _ in _bulk(client, actions(), chunk_size, where):
                bar.update(1)
        finally:
            bar.close()
        client.indices.refresh(index=index)
        got = int(client.count(index=index)["count"])
        if got != sent[0]:
            raise GmemError(
                f"{where}: holds {got} documents after refresh but {sent[0]} passages were sent; "
                f"the index silently stopped growing (is a node's disk low? ES blocks writes at "
                f"its flood-stage watermark, 95% by default) or the corpus repeats passage ids")
        meta = {"gmem_corpus": name, "gmem_complete": True, "gmem_fingerprint": fp.hexdigest(),
                "gmem_count": got}
        client.indices.put_mapping(index=index, meta=meta)
        return cls(client, index, url=url, corpus_name=name, fingerprint=meta["gmem_fingerprint"],
                   num_passages=got, **kw)

    @classmethod
    def open(cls, url: str | None = None, index: str = "wiki",
             expected_fingerprint: str | None = None, *, client: Any = None,
             **kw) -> "ElasticRetriever":
        """Connect to an existing index. A gmem-built index must be complete and still hold its
        recorded count; with expected_fingerprint, an index of another corpus (or one built
        outside gmem, which records none) is refused. Without it, any index with `title` and
        `txt` fields opens (e.g. one the original's prep_elastic.py built)."""
        check_index_name(index)
        client = client if client is not None else connect(url)
        where = f"elasticsearch {url or ''} index {index!r}".replace("  ", " ")
        if not client.indices.exists(index=index):
            raise GmemError(f"{where}: no such index; build it first")
        resp = client.indices.get_mapping(index=index)
        body = getattr(resp, "body", resp)  # the client's ObjectApiResponse wraps a dict
        mappings = next(iter(body.values()))["mappings"]  # keyed by the concrete index name
        meta = mappings.get("_meta") or {}
        count = int(client.count(index=index)["count"])
        if "gmem_complete" in meta:
            if not meta["gmem_complete"]:
                raise GmemError(f"{where}: its gmem build did not finish (_meta.gmem_complete "
                                f"is false); rebuild it")
            if count != meta.get("gmem_count"):
                raise GmemError(f"{where}: holds {count} documents but was built with "
                                f"{meta.get('gmem_count')}; it changed since, rebuild it")
        fp = meta.get("gmem_fingerprint")
        if expected_fingerprint is not None and fp != expected_fingerprint:
            got = f"corpus {meta.get('gmem_corpus')!r}, fingerprint {fp[:16]}..." if fp else \
                "no corpus fingerprint (not built by gmem)"
            raise GmemError(f"{where}: records {got}, not the expected "
                            f"{expected_fingerprint[:16]}...; rebuild it for this corpus")
        return cls(client, index, url=url, corpus_name=meta.get("gmem_corpus", index),
                   fingerprint=fp, num_passages=count, **kw)

    def save(self, directory: str | pathlib.Path) -> pathlib.Path:
        """Write a description (cluster URL, index, corpus identity) that open_retriever reopens;
        the documents themselves stay in the cluster."""
        d = pathlib.Path(directory)
        write_meta(d, {"backend": self.backend, "url": self.url, "index": self.index,
                       "corpus_name": self.corpus_name, "fingerprint": self.fingerprint,
                       "num_passages": self.num_passages, "max_query_tokens": self.max_query_tokens})
        return d

    def search(self, queries: Sequence[str], k: int) -> Hits:
        """Top-k per query through `_msearch`, batch_size queries per request (Hits arrays
        [len(queries), k], padded as gmem.retrieval.base describes)."""
        k = check_k(k)
        if k > MAX_WINDOW:
            raise GmemError(f"{self.where}: k={k} exceeds ES's result window of {MAX_WINDOW}")
        if isinstance(queries, str):
            raise GmemError("retrieval: search() takes a list of query strings, not one string")
        texts = [truncate_query(str(q), self.max_query_tokens, self.query_tokenizer)
                 for q in queries]
        rows: list[list[tuple[str, float, str]]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            searches: list[dict] = []
            for q in batch:
                searches += [{"index": self.index, "search_type": "dfs_query_then_fetch"},
                             query_body(q, k)]
            responses = self.client.msearch(searches=searches)["responses"]
            for q, resp in zip(batch, responses):
                if "error" in resp:
                    err = resp["error"]
                    reason = err.get("reason", err) if isinstance(err, dict) else err
                    raise GmemError(f"{self.where}: search failed for query {q[:60]!r}: {reason}")
                rows.append([(h["_id"], float(h["_score"]),
                              (h.get("_source") or {}).get("txt", ""))
                             for h in resp["hits"]["hits"]])
        return pack_hits(rows, k)


def _bulk(client: Any, actions: Iterable[dict], chunk_size: int, where: str):
    """elasticsearch.helpers.streaming_bulk, its failures turned into one GmemError line."""
    from elasticsearch.helpers import BulkIndexError, streaming_bulk  # lazy, see connect()

    try:
        yield from streaming_bulk(client, actions, chunk_size=chunk_size, raise_on_error=True,
                                  max_retries=3)
    except BulkIndexError as e:
        first = e.errors[0] if e.errors else {}
        detail = next(iter(first.values()), {}) if isinstance(first, dict) else first
        err = detail.get("error", detail) if isinstance(detail, dict) else detail
        raise GmemError(f"{where}: bulk indexing failed for {len(e.errors)} documents, first: "
                        f"{err} (a cluster_block_exception means a disk passed the flood-stage "
                        f"watermark)") from None
