"""The one retriever interface, its result type, and the helpers every backend shares.

A retriever searches a fixed corpus of passages (id, title, text). `search(queries, k)` returns
`Hits(ids, scores, passages)`, each an array of shape [len(queries), k], best hit first:

  ids       object array of str: the passage ids
  scores    float32 array: the backend's relevance scores (BM25 here, > 0 for every real hit)
  passages  object array of str: the passage *text* only, without its title (as the original
            ReGrad's retriever returns the ES `txt` field)

A query with fewer than k matching passages (no query term in any passage, e.g. a query made
only of stop words) is padded at the end with id "", score 0.0 and passage "". The original
padded the text with "" and the score with 0.0 too, but the ids with fresh random uuids; ""
keeps results deterministic, and no real passage can have the id "" (corpus readers reject
it), so `ids == ""` is the padding mask.

A retriever is saved to a directory (`save`) and reopened without rebuilding
(`gmem.retrieval.open_retriever`); the directory's `gmem-retriever.json` records the backend,
the corpus name and the corpus fingerprint (`fingerprint`), and opening with
`expected_fingerprint` refuses an index built from other passages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Any, Iterable, NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np

from gmem.errors import GmemError

META_FILE = "gmem-retriever.json"
# The original cuts every query to its last 256 tokens before searching (see truncate_query).
MAX_QUERY_TOKENS = 256


@dataclasses.dataclass(frozen=True)
class Passage:
    """One retrievable unit: id (unique, non-empty), title (of its article) and text."""

    id: str
    title: str
    text: str


class Hits(NamedTuple):
    """search() output; every field is [num_queries, k] (see the module docstring)."""

    ids: np.ndarray
    scores: np.ndarray
    passages: np.ndarray


@runtime_checkable
class Retriever(Protocol):
    """What every backend provides. Build/open are backend classmethods (their arguments
    differ: a directory for BM25, a cluster URL and index name for Elasticsearch)."""

    backend: str
    corpus_name: str
    fingerprint: str
    num_passages: int

    def search(self, queries: Sequence[str], k: int) -> Hits: ...

    def save(self, directory: str | pathlib.Path) -> pathlib.Path: ...


class Fingerprinter:
    """Incremental `fingerprint`: add passages one by one (a streamed build), then hexdigest()."""

    def __init__(self):
        self._h = hashlib.sha256()

    def add(self, p: Passage) -> Passage:
        for field in (p.id, p.title, p.text):
            b = field.encode("utf-8")
            self._h.update(b"%d:" % len(b))
            self._h.update(b)
        return p

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def fingerprint(passages: Iterable[Passage]) -> str:
    """sha256 of the passages' ids, titles and texts in order (length-prefixed UTF-8, so no
    separator character is special). Two corpora with the same fingerprint index identically."""
    h = Fingerprinter()
    for p in passages:
        h.add(p)
    return h.hexdigest()


def pack_hits(rows: Sequence[Sequence[tuple[str, float, str]]], k: int) -> Hits:
    """[(id, score, text)] per query, best first, at most k each -> padded Hits arrays."""
    n = len(rows)
    ids = np.full((n, k), "", dtype=object)
    scores = np.zeros((n, k), dtype=np.float32)
    texts = np.full((n, k), "", dtype=object)
    for q, row in enumerate(rows):
        for j, (pid, score, text) in enumerate(row[:k]):
            ids[q, j], scores[q, j], texts[q, j] = pid, score, text
    return Hits(ids, scores, texts)


def truncate_query(query: str, max_tokens: int | None = MAX_QUERY_TOKENS,
                   tokenizer: Any = None) -> str:
    """The query cut to its last `max_tokens` tokens, as the original does before searching.

    The original tokenizes with Llama-3-8B-Instruct's tokenizer with truncation_side='left'
    (so the *start* of an over-long query is dropped, the end kept), no special tokens, and
    decodes back. With `tokenizer` (any object with HF's `encode(text, add_special_tokens=False)`
    and `decode(ids, skip_special_tokens=True)`) gmem does the same; without one (no hub here),
    tokens are whitespace-separated words and the kept words are joined by single spaces.
    Queries within the limit are returned unchanged. None means no limit.
    """
    if max_tokens is None:
        return query
    if tokenizer is not None:
        ids = tokenizer.encode(query, add_special_tokens=False)
        if len(ids) <= max_tokens:
            return query
        return tokenizer.decode(ids[len(ids) - max_tokens:], skip_special_tokens=True)
    words = query.split()
    if len(words) <= max_tokens:
        return query
    return " ".join(words[len(words) - max_tokens:])


def check_k(k: int) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise GmemError(f"retrieval: k must be a positive integer, got {k!r}")
    return int(k)


def read_meta(directory: str | pathlib.Path) -> tuple[pathlib.Path, dict]:
    """(path of gmem-retriever.json, its content); GmemError if it is missing or broken."""
    path = pathlib.Path(directory) / META_FILE
    if not path.is_file():
        raise GmemError(f"{path}: no retriever index here (missing {META_FILE}); build one first")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise GmemError(f"{path}: not a readable retriever description ({e})") from None
    if not isinstance(meta, dict) or "backend" not in meta:
        raise GmemError(f"{path}: field 'backend' is missing")
    return path, meta


def write_meta(directory: str | pathlib.Path, meta: dict) -> pathlib.Path:
    path = pathlib.Path(directory) / META_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)  # atomic: a half-written description never looks valid
    return path


def check_fingerprint(where: str, meta: dict, expected: str | None) -> None:
    """Refuse an index whose recorded corpus fingerprint is not `expected` (when given)."""
    if expected is None:
        return
    got = meta.get("fingerprint")
    if got != expected:
        raise GmemError(f"{where}: this index was built from corpus {meta.get('corpus_name')!r} "
                        f"with fingerprint {str(got)[:16]}..., not the expected "
                        f"{expected[:16]}...; rebuild it for this corpus or point at its own index")
