"""The gradient bank: g = grad_theta L_LM(passage) for every passage, on disk, keyed by passage id.

Layout of a bank directory (RUN_DIR/passes/bank by default):

  bank.json                      what the bank was built from, checked on every resume and open:
                                 format, dtype, the corpus (name, fingerprint), the base model
                                 (source, family sizes, sha256 of its frozen weights), the LoRA
                                 tensors (path -> shape), the passage list (count, sha256 of the
                                 keys in order) and the bytes one passage takes
  shard-SSSSSSSSS-EEEEEEEEE.safetensors
                                 passages [S, E) of the list, one tensor per (passage, LoRA
                                 tensor) named "{n}/{lora path}" (n = position in the shard,
                                 e.g. "3/model/layers_15/mlp/gate_proj/lora_B", shape as the
                                 LoRA tensor), the shard's keys in its header metadata ("keys",
                                 a JSON list); written to a temporary name and renamed, so a
                                 shard is whole or absent
  index.json                     key -> shard file, written when the pass finishes (a reader
                                 without it scans the shard headers)
  progress.json, metrics.jsonl   gmem.train.passes' commit record and per-chunk rates

Passages are computed once each, however many questions retrieved them (the original keys its
file by question and rank and recomputes shared passages). A resumed pass first deletes shards
at or past its first uncommitted passage (written after the last commit), so none is duplicated.

Past one disk: the layout is a key -> fixed-shape record store, so it maps one to one onto
object storage (each shard an object under a prefix, bank.json and index.json beside them;
safetensors' header gives each tensor's byte range, so a reader fetches one passage with an
HTTP range request) or onto tensorstore: one zarr array per LoRA tensor of shape
[num_passages, *tensor shape], chunked [bank_chunk, *tensor shape], with bank.json's passage
list giving each key's row, written chunk by chunk by the same pass (a chunk is one row block)
and read a row at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Iterable, Sequence

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from gmem.errors import GmemError
from gmem.tree import flatten

FORMAT = "gmem-regrad-bank/1"
META = "bank.json"
INDEX = "index.json"
DTYPES = ("float32", "bfloat16")


def np_dtype(name: str):
    if name not in DTYPES:
        raise GmemError(f"system.bank_dtype: {name!r} is not one of {list(DTYPES)}")
    if name == "bfloat16":
        return ml_dtypes.bfloat16
    return np.float32


def human(n: float) -> str:
    """Bytes as kB / MB / GB (decimal)."""
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.2f} {unit}"
    return f"{int(n)} B"


def weights_sha256(frozen) -> str:
    """sha256 over the frozen tree's leaf paths, dtypes, shapes and bytes (sorted paths)."""
    h = hashlib.sha256()
    for path, leaf in sorted(flatten(dict(frozen)).items()):
        a = np.asarray(leaf)
        h.update(f"{path}|{a.dtype}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def keys_sha256(keys: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(keys)).encode("utf-8")).hexdigest()


def lora_shapes(lora) -> dict[str, list[int]]:
    return {p: list(np.shape(x)) for p, x in sorted(flatten(dict(lora)).items())}


def bank_meta(dtype: str, corpus: dict, base: dict, shapes: dict, keys: Sequence[str]) -> dict:
    per = sum(int(np.prod(s)) for s in shapes.values()) * np.dtype(np_dtype(dtype)).itemsize
    return {"format": FORMAT, "dtype": dtype, "corpus": corpus, "base": base, "lora": shapes,
            "passages": len(keys), "keys_sha256": keys_sha256(keys), "bytes_per_passage": per}


def _diff(saved: dict, want: dict, fields: Iterable[str]) -> list[str]:
    out = []
    for f in fields:
        if saved.get(f) != want.get(f):
            s, w = json.dumps(saved.get(f))[:60], json.dumps(want.get(f))[:60]
            out.append(f"{f}: {s} in the bank, {w} here")
    return out


def check_meta(path: pathlib.Path, saved: dict, want: dict, fields: Iterable[str]) -> None:
    diff = _diff(saved, want, fields)
    if diff:
        raise GmemError(f"{path}: this bank was built for another " + "; ".join(diff))


def ensure_meta(out: pathlib.Path, meta: dict) -> None:
    """Write bank.json (atomically) or, when present, refuse a bank built from other inputs."""
    path = out / META
    if path.is_file():
        check_meta(path, read_json(path), meta, ("format", "dtype", "corpus", "base", "lora",
                                                 "passages", "keys_sha256"))
        return
    write_json(path, meta)


def read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GmemError(f"{path}: unreadable ({e})") from None


def write_json(path: pathlib.Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def shard_name(start: int, stop: int) -> str:
    return f"shard-{start:09d}-{stop:09d}.safetensors"


def shard_range(path: pathlib.Path) -> tuple[int, int]:
    _, s, e = path.stem.split("-")
    return int(s), int(e)


def drop_uncommitted(out: pathlib.Path, start: int) -> None:
    """Delete shards (and temporaries) at or past `start`: written after the last commit."""
    for p in out.glob("shard-*.safetensors.tmp"):
        p.unlink()
    for p in out.glob("shard-*.safetensors"):
        if shard_range(p)[0] >= start:
            p.unlink()


def write_shard(out: pathlib.Path, start: int, keys: Sequence[str], grads: dict[str, np.ndarray],
                dtype: str) -> pathlib.Path:
    """grads {lora path: [N, *shape]} of passages keys[0..N) -> one shard, atomically."""
    dt = np_dtype(dtype)
    tensors = {f"{n}/{p}": np.ascontiguousarray(np.asarray(g[n], np.float32).astype(dt))
               for p, g in grads.items() for n in range(len(keys))}
    path = out / shard_name(start, start + len(keys))
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "keys": json.dumps(list(keys))})
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)  # on disk before the rename makes it visible
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def shard_keys(path: pathlib.Path) -> list[str]:
    try:
        with safe_open(str(path), "numpy") as f:
            meta = f.metadata() or {}
        keys = json.loads(meta["keys"])
    except Exception as e:  # a truncated or foreign file: safetensors raises its own types
        raise GmemError(f"{path}: not a gradient-bank shard ({type(e).__name__}: {e})") from None
    return keys


class Bank:
    """A built bank, opened for reading: `grads(key)` -> {lora path: float32 array}."""

    def __init__(self, directory: str | pathlib.Path, expect: dict):
        """expect: bank.json fields this model needs (corpus, base, lora); any difference,
        a missing bank.json or an unfinished pass is one GmemError naming the file."""
        self.dir = pathlib.Path(directory)
        path = self.dir / META
        if not path.is_file():
            raise GmemError(f"{path}: no gradient bank here; build it with "
                            "`python train.py --config CONFIG --pass bank`")
        self.meta = read_json(path)
        check_meta(path, self.meta, {"format": FORMAT, **expect}, ("format",) + tuple(expect))
        self.shapes = {p: tuple(s) for p, s in self.meta["lora"].items()}
        idx = self.dir / INDEX
        if idx.is_file():
            self.where = read_json(idx)
        else:
            self.where = {k: p.name for p in sorted(self.dir.glob("shard-*.safetensors"))
                          for k in shard_keys(p)}
        if len(self.where) != self.meta["passages"]:
            raise GmemError(f"{self.dir}: the bank holds {len(self.where)} of its "
                            f"{self.meta['passages']} passages; finish it with --pass bank")
        self._open: dict[str, tuple] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def _shard(self, name: str):
        if name not in self._open:
            path = self.dir / name
            if not path.is_file():
                raise GmemError(f"{path}: shard listed in {self.dir / INDEX} is missing")
            f = safe_open(str(path), "numpy")
            self._open[name] = (f, {k: i for i, k in enumerate(shard_keys(path))})
        return self._open[name]

    def grads(self, key: str, where: str = "") -> dict[str, np.ndarray]:
        """{lora path: float32 array} of passage `key`; GmemError if the bank lacks it or its
        file holds tensors of other shapes."""
        if key not in self.where:
            at = f"{where}: " if where else ""
            raise GmemError(f"{at}passage id {key!r} is not in the gradient bank {self.dir} "
                            f"(built for other questions? rebuild it with --pass bank)")
        name = self.where[key]
        f, pos = self._shard(name)
        if key not in pos:
            raise GmemError(f"{self.dir / name}: passage id {key!r} listed in {INDEX} is not in this shard")
        n = pos[key]
        out = {}
        for p, shape in self.shapes.items():
            t = f"{n}/{p}"
            try:
                a = f.get_tensor(t)
            except Exception:
                raise GmemError(f"{self.dir / name}: tensor {t!r} (passage {key!r}) is missing") from None
            if tuple(a.shape) != shape:
                raise GmemError(f"{self.dir / name}: tensor {t!r} (passage {key!r}) has shape "
                                f"{list(a.shape)}, the LoRA tensor needs {list(shape)}")
            out[p] = np.asarray(a, np.float32)
        return out

    def summed(self, keys: Sequence[str], where: str = "") -> dict[str, np.ndarray]:
        """sum_i g_i over the non-empty keys (zeros when none)."""
        total = {p: np.zeros(s, np.float32) for p, s in self.shapes.items()}
        for k in keys:
            if k:
                for p, g in self.grads(k, where).items():
                    total[p] += g
        return total
