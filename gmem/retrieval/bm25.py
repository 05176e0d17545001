"""Embedded BM25 retriever on bm25s, scoring as the original's Elasticsearch query does.

The original ReGrad searches an ES index whose fields `title` and `txt` both use the english
analyzer, with a `multi_match` query of type `best_fields` and `tie_breaker: 0.5`, i.e. per
passage d

    score(q, d) = max_f s_f(q, d) + 0.5 * sum_{other f} s_f(q, d),   f in {title, text}

where s_f is Lucene's BM25 of field f (ES default similarity, k1 = 1.2, b = 0.75):

    s_f(q, d) = sum_{t in q} idf_f(t) * tf / (tf + k1 * (1 - b + b * dl / avgdl_f))
    idf_f(t)  = ln(1 + (N_f - n_f(t) + 0.5) / (n_f(t) + 0.5))

tf = occurrences of t in field f of d, dl = its term count after analysis, n_f(t) = passages
whose field f contains t, N_f = passages with a non-empty field f, avgdl_f = mean dl over
those. A term repeated in the query counts once per occurrence (Lucene sums the duplicate
SHOULD clauses). This is bm25s `method="lucene"` (tf part without the (k1 + 1) factor, as
Lucene >= 8 writes it) with `idf_method="lucene"`, one bm25s index per field. Each field index
holds only the passages where that field is non-empty, so N_f and avgdl_f are Lucene's docCount
and sumTotalTermFreq / docCount. `search_type=dfs_query_then_fetch` only makes ES use global
statistics across shards; one index here has them anyway.

Differences from ES that remain: Lucene stores a field's length in one byte
(SmallFloat.intToByte4: exact below 24 terms, then 4 significant bits), so ES scores of longer
fields differ slightly from these exact-length ones; the analyzer differences listed in
gmem.retrieval.analysis; ties are broken here by passage order (ES: by internal doc id).
Only passages with a positive score count as hits, as only matching documents do in ES.

Saved layout (a directory): gmem-retriever.json (backend, corpus identity, parameters),
passages.jsonl ([id, title, text] per line, corpus order), and per field f a bm25s index
directory f/ plus f.rows.npy (which passages that index covers).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from gmem.errors import GmemError
from gmem.retrieval import analysis
from gmem.retrieval.base import (MAX_QUERY_TOKENS, META_FILE, Hits, Passage, check_fingerprint,
                                 check_k, fingerprint, pack_hits, read_meta, truncate_query,
                                 write_meta)
from gmem.retrieval.corpus import Corpus

FIELDS = ("title", "text")
ANALYZER = "es-english-v1"  # bump when gmem.retrieval.analysis changes what it emits
FORMAT = 1
PASSAGES_FILE = "passages.jsonl"


class BM25Retriever:
    """BM25 over (title, text) with ES best_fields scoring; see the module docstring.

    Build with `BM25Retriever.build(corpus)`, save with `.save(dir)`, reopen with
    `BM25Retriever.open(dir)` (no rebuild: the bm25s score matrices are loaded as saved).
    """

    backend = "bm25s"

    def __init__(self, passages: Sequence[Passage], fields: dict[str, tuple[Any, np.ndarray]],
                 corpus_name: str, fingerprint: str, *, k1: float = 1.2, b: float = 0.75,
                 tie_breaker: float = 0.5, max_query_tokens: int | None = MAX_QUERY_TOKENS,
                 query_tokenizer: Any = None):
        self.ids = [p.id for p in passages]
        self.titles = [p.title for p in passages]
        self.texts = [p.text for p in passages]
        self.fields = fields  # name -> (bm25s.BM25 over the rows, rows: int64 [n_f])
        self.corpus_name = corpus_name
        self.fingerprint = fingerprint
        self.k1, self.b, self.tie_breaker = float(k1), float(b), float(tie_breaker)
        self.max_query_tokens = max_query_tokens
        self.query_tokenizer = query_tokenizer
        self._index_of: dict[str, int] | None = None

    @property
    def num_passages(self) -> int:
        return len(self.ids)

    # -- build -------------------------------------------------------------------------------

    @classmethod
    def build(cls, corpus: Corpus | Iterable[Passage], *, name: str | None = None,
              k1: float = 1.2, b: float = 0.75, tie_breaker: float = 0.5,
              progress: bool = True, **kw) -> "BM25Retriever":
        """Analyze and index every passage (tqdm progress bars); GmemError on a repeated id."""
        import bm25s  # slow to import (~3 s): only when an index is built or opened

        if isinstance(corpus, Corpus):
            passages, name = corpus.materialize(), name or corpus.name
        else:
            passages, name = list(corpus), name or "passages"
        if not passages:
            raise GmemError(f"retrieval: corpus {name!r} has no passages to index")
        seen: dict[str, int] = {}
        for i, p in enumerate(passages):
            if p.id in seen:
                raise GmemError(f"retrieval: corpus {name!r} repeats passage id {p.id!r} "
                                f"(passages {seen[p.id]} and {i})")
            seen[p.id] = i
        title_terms: dict[str, list[str]] = {}  # DPR passages of one article share a title
        terms = {"title": [], "text": []}
        for p in tqdm(passages, desc=f"analyzing {name}", unit="psg", disable=not progress):
            if p.title not in title_terms:
                title_terms[p.title] = analysis.analyze(p.title)
            terms["title"].append(title_terms[p.title])
            terms["text"].append(analysis.analyze(p.text))
        fields = {}
        for f in FIELDS:
            rows = np.asarray([i for i, t in enumerate(terms[f]) if t], dtype=np.int64)
            if len(rows) == 0:  # e.g. every title empty: the field matches nothing
                continue
            index = bm25s.BM25(k1=k1, b=b, method="lucene", idf_method="lucene")
            index.index([terms[f][i] for i in rows], show_progress=progress)
            fields[f] = (index, rows)
        fp = corpus.fingerprint() if isinstance(corpus, Corpus) else fingerprint(passages)
        return cls(passages, fields, name, fp, k1=k1, b=b, tie_breaker=tie_breaker, **kw)

    # -- save / open -------------------------------------------------------------------------

    def save(self, directory: str | pathlib.Path) -> pathlib.Path:
        """Write the index to `directory` (the description file last, so a half-written
        directory never opens). Returns the directory."""
        import bm25s  # slow to import (~3 s): only when an index is built or opened

        d = pathlib.Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / META_FILE).unlink(missing_ok=True)
        with open(d / PASSAGES_FILE, "w", encoding="utf-8") as f:
            for row in zip(self.ids, self.titles, self.texts):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        for name, (index, rows) in self.fields.items():
            index.save(d / name, show_progress=False)
            np.save(d / f"{name}.rows.npy", rows)
        write_meta(d, {
            "backend": self.backend, "format": FORMAT, "corpus_name": self.corpus_name,
            "fingerprint": self.fingerprint, "num_passages": self.num_passages,
            "fields": sorted(self.fields), "k1": self.k1, "b": self.b,
            "tie_breaker": self.tie_breaker, "method": "lucene", "idf_method": "lucene",
            "analyzer": ANALYZER, "max_query_tokens": self.max_query_tokens,
            "bm25s_version": bm25s.__version__,
        })
        return d

    @classmethod
    def open(cls, directory: str | pathlib.Path, expected_fingerprint: str | None = None, *,
             mmap: bool = False, **kw) -> "BM25Retriever":
        """Reopen a saved index as saved (nothing is re-analyzed or re-scored).

        expected_fingerprint: the fingerprint of the corpus the caller means to search
        (`Corpus.fingerprint()`); GmemError naming the description file if the index was built
        from other passages. mmap: memory-map the score matrices instead of reading them.
        """
        import bm25s  # slow to import (~3 s): only when an index is built or opened

        meta_path, meta = read_meta(directory)
        where = str(meta_path)
        if meta["backend"] != cls.backend:
            raise GmemError(f"{where}: backend is {meta['backend']!r}, not {cls.backend!r}")
        for key in ("format", "fingerprint", "num_passages", "fields", "analyzer"):
            if key not in meta:
                raise GmemError(f"{where}: field {key!r} is missing")
        if meta["format"] != FORMAT or meta["analyzer"] != ANALYZER:
            raise GmemError(f"{where}: built with format {meta['format']} / analyzer "
                            f"{meta['analyzer']!r}; this gmem reads format {FORMAT} / "
                            f"{ANALYZER!r}: rebuild the index")
        check_fingerprint(where, meta, expected_fingerprint)
        d = meta_path.parent
        passages = _read_passages(d / PASSAGES_FILE)
        if len(passages) != meta["num_passages"]:
            raise GmemError(f"{d / PASSAGES_FILE}: {len(passages)} passages, but {where} "
                            f"records {meta['num_passages']}; the index is incomplete, rebuild it")
        fields = {}
        for name in meta["fields"]:
            rows_file = d / f"{name}.rows.npy"
            if not (d / name).is_dir() or not rows_file.is_file():
                raise GmemError(f"{d / name}: field index missing; the index is incomplete")
            index = bm25s.BM25.load(d / name, mmap=mmap, show_progress=False)
            fields[name] = (index, np.load(rows_file))
        kw.setdefault("max_query_tokens", meta.get("max_query_tokens", MAX_QUERY_TOKENS))
        return cls(passages, fields, meta.get("corpus_name", ""), meta["fingerprint"],
                   k1=meta.get("k1", 1.2), b=meta.get("b", 0.75),
                   tie_breaker=meta.get("tie_breaker", 0.5), **kw)

    # -- search ------------------------------------------------------------------------------

    def field_scores(self, query: str) -> dict[str, np.ndarray]:
        """Per field, float32 [num_passages] BM25 scores of the (untruncated) query."""
        terms = analysis.analyze(query)
        out = {}
        for name in FIELDS:
            full = np.zeros(self.num_passages, dtype=np.float32)
            if name in self.fields and terms:
                index, rows = self.fields[name]
                ids = [index.vocab_dict[t] for t in terms if t in index.vocab_dict]
                if ids:
                    full[rows] = index.get_scores_from_ids(ids)
            out[name] = full
        return out

    def scores(self, query: str) -> np.ndarray:
        """float32 [num_passages]: max over fields + tie_breaker * the other fields' sum."""
        per = np.stack(list(self.field_scores(query).values()))
        best = per.max(axis=0)
        return best + np.float32(self.tie_breaker) * (per.sum(axis=0) - best)

    def search(self, queries: Sequence[str], k: int) -> Hits:
        """Top-k passages per query (Hits arrays [len(queries), k]; see gmem.retrieval.base).
        Each query is first cut to its last max_query_tokens tokens (truncate_query)."""
        k = check_k(k)
        if isinstance(queries, str):
            raise GmemError("retrieval: search() takes a list of query strings, not one string")
        rows = []
        for q in queries:
            s = self.scores(truncate_query(str(q), self.max_query_tokens, self.query_tokenizer))
            rows.append([(self.ids[i], float(s[i]), self.texts[i]) for i in top_k(s, k)])
        return pack_hits(rows, k)

    def passage(self, pid: str) -> Passage:
        """The passage with id `pid` (title included); GmemError if there is none."""
        if self._index_of is None:
            self._index_of = {p: i for i, p in enumerate(self.ids)}
        i = self._index_of.get(pid)
        if i is None:
            raise GmemError(f"retrieval: no passage with id {pid!r} in corpus {self.corpus_name!r}")
        return Passage(self.ids[i], self.titles[i], self.texts[i])


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the (at most) k highest positive scores, best first, ties by lower index."""
    cand = np.flatnonzero(scores > 0)
    if len(cand) > k:
        # Keep everything tied with the k-th score, so the index tie-break is exact.
        kth = np.partition(scores[cand], len(cand) - k)[len(cand) - k]
        cand = cand[scores[cand] >= kth]
    order = np.lexsort((cand, -scores[cand]))
    return cand[order[:k]]


def _read_passages(path: pathlib.Path) -> list[Passage]:
    if not path.is_file():
        raise GmemError(f"{path}: missing; the index is incomplete, rebuild it")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                pid, title, text = json.loads(line)
            except (ValueError, TypeError) as e:
                raise GmemError(f"{path}, line {lineno}: not an [id, title, text] row "
                                f"({e})") from None
            out.append(Passage(pid, title, text))
    return out
