"""ReGrad's data: the corpus and its retriever, the augmented train/dev files, task batches.

Augmented files are the original's format (gmem.systems.regrad.qa) plus, when gmem's augment
wrote them, "passage_ids" (corpus ids of the k passages). The gradient bank is keyed by those
ids; a file from the original has none, so `passage_keys` names each passage by its text
instead ("text:" + the first 24 hex digits of the sha256 of its UTF-8 text), which is stable
and unique for all practical purposes. "" (a padding passage) is never a key.

Embedded default (system.train_file / dev_files empty): the template QA of gmem.systems.regrad
.wiki_qa (train, dev: "wiki") and the FanOutQA dev sub-questions ("fanout"), each retrieved
for with the BM25 index of the embedded corpus, written once to DATA_DIR (data.json records
what they were built from; a DATA_DIR built otherwise is rebuilt).
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
from typing import Sequence

import numpy as np

from gmem.errors import GmemError
from gmem.retrieval import BM25Retriever, open_retriever, tsv_corpus, wiki_corpus
from gmem.retrieval.base import META_FILE
from gmem.systems.regrad import prompt as P
from gmem.systems.regrad.augment import augment
from gmem.systems.regrad.fanout import default_qa
from gmem.systems.regrad.qa import first_answer, read_augmented, write_augmented

MANIFEST = "data.json"


def text_key(text: str) -> str:
    return "text:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def passage_keys(rec: dict, where: str, index: int) -> list[str]:
    """Bank keys of a record's passages ("" for a padding passage)."""
    texts = rec["passages"]
    ids = rec.get("passage_ids")
    if ids is None:
        return [text_key(t) if t else "" for t in texts]
    if not (isinstance(ids, list) and len(ids) == len(texts) and all(isinstance(i, str) for i in ids)):
        raise GmemError(f"{where}: record {index}: field 'passage_ids' must be a list of "
                        f"{len(texts)} strings, one per passage")
    return [i if t else "" for i, t in zip(ids, texts)]


class RegradData:
    """Corpus, retriever and augmented records of one run (built lazily, cached)."""

    def __init__(self, opts, data_dir: str | pathlib.Path, progress: bool = True):
        self.opts, self.dir, self.progress = opts, pathlib.Path(data_dir), progress
        self._corpus = self._train = self._dev = None

    # ---- corpus and retrieval ----------------------------------------------------------
    def corpus(self):
        if self._corpus is None:
            c = self.opts.corpus
            self._corpus = wiki_corpus() if c == "wiki" else tsv_corpus(c)
        return self._corpus

    def corpus_identity(self) -> dict:
        c = self.corpus()
        return {"name": c.name, "fingerprint": c.fingerprint()}

    def index_dir(self) -> pathlib.Path:
        return pathlib.Path(self.opts.index) if self.opts.index else self.dir / "index"

    def retriever(self):
        """The saved index (refused when built from another corpus), or a BM25 index of the
        corpus built and saved to index_dir on first use."""
        d = self.index_dir()
        fp = self.corpus().fingerprint()
        if (d / META_FILE).is_file():
            return open_retriever(d, fp)
        r = BM25Retriever.build(self.corpus(), progress=self.progress)
        r.save(d)
        return r

    # ---- records -----------------------------------------------------------------------
    def _embedded(self) -> dict[str, list[dict]]:
        """{"train", "wiki", "fanout"}: the embedded sets, augmented (cached in DATA_DIR)."""
        o = self.opts
        want = {"corpus": self.corpus_identity(), "qa_seed": o.qa_seed, "top_k": o.top_k,
                "train_limit": o.train_limit, "dev_limit": o.dev_limit, "format": 1}
        man = self.dir / MANIFEST
        files = {n: self.dir / f"{n}.json" for n in ("train", "wiki", "fanout")}
        if man.is_file() and json.loads(man.read_text()) == want and all(f.is_file() for f in files.values()):
            return {n: read_augmented(f, o.top_k) for n, f in files.items()}
        sets = default_qa(o.qa_seed)
        src = {"train": sets["train"][:o.train_limit], "wiki": sets["dev"][:o.dev_limit],
               "fanout": sets["fanout_dev"][:o.dev_limit]}
        retriever = self.retriever()
        out = {}
        for n, recs in src.items():
            out[n] = augment(recs, retriever, o.top_k, progress=self.progress)
            write_augmented(files[n], out[n])
        man.write_text(json.dumps(want, indent=1) + "\n")
        return out

    def _read(self, path: str, limit) -> list[dict]:
        recs = read_augmented(path, self.opts.top_k)[:limit]
        for i, r in enumerate(recs):
            passage_keys(r, path, i)
        return recs

    def train_records(self) -> list[dict]:
        if self._train is None:
            o = self.opts
            self._train = (self._read(o.train_file, o.train_limit) if o.train_file
                           else self._embedded()["train"])
            if not self._train:
                raise GmemError(f"system.train_file={o.train_file!r}: no training records")
        return self._train

    def dev_sets(self) -> dict[str, list[dict]]:
        """{name: records}, in config order (the embedded: wiki, fanout)."""
        if self._dev is None:
            o = self.opts
            if o.dev_files:
                self._dev = {n: self._read(p, o.dev_limit) for n, p in o.dev_files.items()}
            else:
                emb = self._embedded()
                self._dev = {"wiki": emb["wiki"], "fanout": emb["fanout"]}
        return self._dev

    def dev_files(self) -> dict[str, str]:
        """{name: file} the dev records were read from (for messages)."""
        o = self.opts
        return dict(o.dev_files) if o.dev_files else {n: str(self.dir / f"{n}.json") for n in ("wiki", "fanout")}


def bank_passages(dev_sets: dict[str, list[dict]], where: dict[str, str]) -> list[tuple[str, str]]:
    """[(key, text)] of every distinct passage the dev sets retrieved, in first-seen order
    (set order, record order, rank): the bank holds each once, however many questions share it."""
    seen: dict[str, str] = {}
    for name, recs in dev_sets.items():
        for i, r in enumerate(recs):
            for key, text in zip(passage_keys(r, where.get(name, name), i), r["passages"]):
                if key and key not in seen:
                    seen[key] = text
    return list(seen.items())


class TaskRows:
    """Tokenized task rows (see gmem.systems.regrad.prompt) of a list of augmented records."""

    def __init__(self, tokenizer, opts):
        self.tok, self.o = tokenizer, opts
        self.pad = P.pad_id_of(tokenizer)

    def shapes(self, b: int) -> dict[str, tuple]:
        o = self.o
        return {"passage_ids": (b, o.top_k, o.max_passage_len), "passage_mask": (b, o.top_k, o.max_passage_len),
                "qa_ids": (b, o.max_prompt_len), "qa_mask": (b, o.max_prompt_len),
                "qa_labels": (b, o.max_prompt_len)}

    def rows(self, records: Sequence[dict]) -> dict[str, np.ndarray]:
        o = self.o
        out: dict[str, list] = {k: [] for k in self.shapes(0)}
        for r in records:
            ps = list(r["passages"])[:o.top_k]
            ids, mask = P.passage_rows(self.tok, ps, o.max_passage_len, self.pad)
            q = P.qa_row(self.tok, r["question"], first_answer(r), None if o.blind_context else ps,
                         o.max_prompt_len, o.max_answer_len, o.max_context_len, self.pad)
            for k, v in zip(out, (ids, mask) + q):
                out[k].append(v)
        return {k: np.stack(v) for k, v in out.items()}


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, epoch: int, seed: int) -> np.ndarray:
    """The permutation of n training tasks used in `epoch` (seeded: resumable)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch: int, index: int, seed: int) -> np.ndarray:
    """Task indices of global batch `index` (rows index*batch ... across epochs)."""
    pos = np.arange(index * batch, (index + 1) * batch)
    epochs, offs = pos // n, pos % n
    return np.array([epoch_order(n, int(e), seed)[o] for e, o in zip(epochs, offs)])
