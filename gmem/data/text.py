"""Language-model data: a corpus of documents -> token chunks [N, L+1] -> batches by index.

Batches are a pure function of (seed, batch index): batch i of epoch e takes rows of a
permutation seeded by (seed, e). The data-iterator position saved in a checkpoint is therefore
one integer, and a resumed run sees exactly the batches an uninterrupted run would have.
Each host builds only its own rows of every global batch.
"""

from __future__ import annotations

import json
import pathlib
from typing import Callable, Iterator, Sequence

import numpy as np

import gmem.assets
from gmem.errors import GmemError, read_utf8


def corpus_files(corpus: str, glob: str = "*.txt") -> list[pathlib.Path]:
    """'shakespeare' (embedded asset), a .txt/.json/.jsonl file, or a folder of files."""
    if corpus == "shakespeare":
        p = pathlib.Path(gmem.assets.path("shakespeare"))
    else:
        p = pathlib.Path(corpus).expanduser()
    if p.is_dir():
        files = sorted(p.rglob(glob))
        if not files:
            raise GmemError(f"system.corpus: no files matching {glob!r} under {p}")
        return files
    if not p.is_file():
        raise GmemError(f"system.corpus: {corpus!r} is not 'shakespeare', a file or a folder")
    return [p]


def json_problem(path: pathlib.Path) -> str:
    """'FILE:LINE[:COL]: ...' for the first problem of a JSON / JSONL file that failed to load
    (an encoding other than UTF-8, a cut or malformed line), or '' when none is found."""
    try:
        text = read_utf8(path, "a JSON corpus")
    except GmemError as e:
        return str(e)
    if path.suffix == ".json":
        try:
            json.loads(text)
            return ""
        except json.JSONDecodeError as e:
            if not text.lstrip().startswith("{") or "\n{" not in text:  # not JSON lines in a .json
                return f"{path}:{e.lineno}:{e.colno}: bad JSON: {e.msg}"
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as e:
                return f"{path}:{i}:{e.colno}: bad JSON line: {e.msg}"
    return ""


def _json_texts(f: pathlib.Path, text_field: str) -> list[str]:
    import datasets  # slow to import (~2 s): only for Hugging Face datasets
    try:
        ds = datasets.load_dataset("json", data_files=str(f), split="train")
        if text_field not in ds.column_names:
            raise GmemError(f"{f}: no field {text_field!r} (system.text_field); fields are {ds.column_names}")
        return [str(t) for t in ds[text_field]]
    except GmemError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets wraps a bad file in pages of traceback
        where = json_problem(f)
        if where:
            raise GmemError(where) from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise GmemError(f"{f}: not readable as JSON / JSON lines ({type(e).__name__}: {first})") from None


def load_texts(corpus: str, glob: str = "*.txt", text_field: str = "text",
               max_chars: int | None = None) -> list[str]:
    """Documents as strings, in a fixed order, cut to max_chars characters in total. Files must
    be UTF-8: another encoding is an error naming the file, line and byte offset (decoding with
    replacement characters would train on silently altered text)."""
    texts: list[str] = []
    for f in corpus_files(corpus, glob):
        if f.suffix in (".json", ".jsonl"):
            texts += _json_texts(f, text_field)
        else:
            texts.append(read_utf8(f, "a text corpus"))
    if max_chars is not None:
        out, left = [], max_chars
        for t in texts:
            if left <= 0:
                break
            out.append(t[:left])
            left -= len(out[-1])
        texts = out
    return texts


def chunk_tokens(texts: Sequence[str], encode: Callable[[str], list[int]], seq_len: int,
                 eos_id: int | None = None) -> np.ndarray:
    """Concatenate the encoded documents (EOS between them) and cut into rows of seq_len + 1
    tokens (inputs and shifted targets share a row). Returns int32 [N, seq_len + 1]."""
    if seq_len < 1:
        raise GmemError(f"data.seq_len={seq_len}: a row needs at least one input token (use 1 or more)")
    ids: list[int] = []
    for t in texts:
        ids += list(encode(t))
        if eos_id is not None:
            ids.append(int(eos_id))
    n = len(ids) // (seq_len + 1)
    if n == 0:
        raise GmemError(f"data: the corpus has {len(ids)} tokens, fewer than one row of "
                        f"data.seq_len+1={seq_len + 1}")
    return np.asarray(ids[: n * (seq_len + 1)], np.int32).reshape(n, seq_len + 1)


def line_rows(texts: Sequence[str], encode: Callable[[str], list[int]], seq_len: int,
              pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every line of every document is its own row, as the original VardaGPT's data loader reads
    WikiText (one example per raw line, newline kept): encoded, cut to seq_len + 1 tokens and
    right-padded with pad_id. Lines that are blank or encode to fewer than 2 tokens (no
    next-token target) are skipped. Returns (ids int32 [N, seq_len + 1], mask float32 of the
    same shape: 1 on real tokens, 0 on pads)."""
    rows, masks = [], []
    for t in texts:
        for line in t.splitlines(keepends=True):
            if not line.strip():
                continue
            ids = list(encode(line))[: seq_len + 1]
            if len(ids) < 2:
                continue
            n = len(ids)
            rows.append(ids + [pad_id] * (seq_len + 1 - n))
            masks.append([1.0] * n + [0.0] * (seq_len + 1 - n))
    if not rows:
        raise GmemError("data: system.line_split found no line of at least 2 tokens in the corpus")
    return np.asarray(rows, np.int32), np.asarray(masks, np.float32)


def split_rows(rows: np.ndarray, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Last eval_fraction of the rows (at least one, when the fraction is > 0) for evaluation."""
    n_eval = int(round(len(rows) * eval_fraction))
    if eval_fraction > 0:
        n_eval = max(1, n_eval)
    if n_eval >= len(rows):
        raise GmemError(f"system.eval_fraction={eval_fraction} leaves no training rows ({len(rows)} rows)")
    return rows[: len(rows) - n_eval], rows[len(rows) - n_eval:]


class BatchStream:
    """Global batch i (of `batch_size` rows) of a shuffled, epoch-repeating stream of rows;
    `host_batch(i, rows)` returns only this host's rows (and their `mask`, when given)."""

    def __init__(self, rows: np.ndarray, batch_size: int, seed: int = 0, shuffle: bool = True,
                 mask: np.ndarray | None = None):
        if batch_size < 1:
            raise GmemError(f"data.batch_size={batch_size}: must be at least 1")
        if len(rows) < batch_size:
            raise GmemError(f"data.batch_size={batch_size} is larger than the {len(rows)} rows of data")
        self.rows, self.batch_size, self.seed, self.shuffle = rows, batch_size, seed, shuffle
        self.mask = mask
        self.per_epoch = len(rows) // batch_size

    def indices(self, i: int) -> np.ndarray:
        epoch, j = divmod(int(i), self.per_epoch)
        order = (np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
                 if self.shuffle else np.arange(len(self.rows)))
        return order[j * self.batch_size:(j + 1) * self.batch_size]

    def host_batch(self, i: int, host: slice = slice(None)) -> dict:
        idx = self.indices(i)[host]
        out = {"input_ids": self.rows[idx]}
        if self.mask is not None:
            out["mask"] = self.mask[idx]
        return out

    def iterate(self, start: int = 0, host: slice = slice(None)) -> Iterator[dict]:
        i = start
        while True:
            yield self.host_batch(i, host)
            i += 1


class ByteTokenizer:
    """Bytes as tokens (ids 0-255) plus BOS 256, EOS 257, PAD 258: for tiny random models
    and tests, with the encode/decode interface of HF tokenizers."""

    bos_token_id, eos_token_id, pad_token_id = 256, 257, 258
    vocab_size = 259

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.bos_token_id] + ids if add_special_tokens else ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def write_jsonl(path: str | pathlib.Path, rows: Sequence[dict]) -> None:
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
