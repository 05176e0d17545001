"""Tensor sources: read an HF checkpoint one tensor at a time, without torch where possible.

A TensorSource lists its keys and shapes up front (from file headers only) and hands out one
host numpy array per `get`, so a converter can move each tensor to its device and drop the host
copy before reading the next. Sources:

  safetensors  model.safetensors, or shards listed in model.safetensors.index.json
  torch        pytorch_model.bin (or its sharded index), via torch.load(weights_only=True, mmap=True)
  gguf         gmem.hf.gguf.GGUFSource (llama.cpp files, dequantised)

Untrusted files: safetensors first; torch pickles only with weights_only=True.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import pickle
import re
from typing import Iterable, Protocol

import ml_dtypes
import numpy as np
from safetensors import safe_open

from gmem.errors import GmemError

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
TORCH_INDEX = "pytorch_model.bin.index.json"
TORCH_SINGLE = "pytorch_model.bin"


class TensorSource(Protocol):
    where: str                                    # the file or folder, for error messages

    def keys(self) -> list[str]: ...
    def shape(self, key: str) -> tuple[int, ...]: ...
    def get(self, key: str) -> np.ndarray: ...    # HF layout ([out, in] for Linear weights)
    def close(self) -> None: ...


def _read_index(path: pathlib.Path) -> dict[str, str]:
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as e:
        raise GmemError(f"{path}: not a readable shard index ({e})") from None
    missing = sorted({f for f in weight_map.values() if not (path.parent / f).exists()})
    if missing:
        raise GmemError(f"{path}: lists shard files that do not exist: {missing}")
    return weight_map


class SafetensorsSource:
    """One or more .safetensors files read lazily with safe_open (numpy framework)."""

    def __init__(self, files: Iterable[pathlib.Path], where: str):
        self.where = where
        self._handles = []
        self._owner: dict[str, object] = {}
        for f in files:
            try:
                h = safe_open(str(f), framework="np")
            except Exception as e:  # safetensors raises its own SafetensorError
                raise GmemError(f"{f}: not a readable safetensors file ({e})") from None
            self._handles.append(h)
            for k in h.keys():
                self._owner[k] = h

    def keys(self) -> list[str]:
        return list(self._owner)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._owner[key].get_slice(key).get_shape())

    def get(self, key: str) -> np.ndarray:
        return self._owner[key].get_tensor(key)

    def close(self) -> None:
        self._handles.clear()
        self._owner.clear()


def torch_refusal(path, e: BaseException) -> str:
    """One line for a torch.load(weights_only=True) failure, with its reason: torch's message
    spreads over several lines (and suggests weights_only=False, which gmem never does)."""
    text = str(e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if text.startswith("Weights only load failed"):
        detail = [ln for ln in lines[1:] if not ln.startswith(("Check the documentation", "Please file an issue"))]
        detail = [ln for ln in lines if "GLOBAL" in ln] or detail or lines[-1:]
        reason = detail[0].removeprefix("WeightsUnpickler error: ").rstrip(".")
        if "GLOBAL" in reason:  # a pickle that would call something: the refusal gmem promises
            return (f"{path}: refused: the file's pickle needs more than tensors ({reason}); gmem loads "
                    "torch files only with weights_only=True and never runs their code. Convert it to "
                    "safetensors where you trust it")
        return f"{path}: cannot read as a torch file (weights-only unpickler: {reason[:200]})"
    first = lines[0] if lines else type(e).__name__
    if len(first) > 200:
        first = first[:197] + "..."
    return f"{path}: cannot read as a torch file ({type(e).__name__}: {first})"


def torch_load(path, mmap: bool = True):
    """torch.load(weights_only=True) on CPU, memory-mapped when the file allows it (files in the
    pre-1.6 format cannot be mapped and are read whole); a one-line GmemError on failure."""
    import torch  # optional and slow to import (~4 s): only for .bin/.pth files

    try:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as e:
            if not (mmap and "mmap can only be used with files saved with" in str(e)):
                raise
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle refused by weights_only, truncated file, ...
        raise GmemError(torch_refusal(path, e)) from None


class TorchSource:
    """pytorch_model.bin file(s), loaded with weights_only=True and mmap (no full copy)."""

    def __init__(self, files: Iterable[pathlib.Path], where: str):
        self.where = where
        self._tensors: dict[str, object] = {}
        for f in files:
            sd = torch_load(f)
            if not isinstance(sd, dict):
                raise GmemError(f"{f}: holds a {type(sd).__name__}, not a state dict")
            self._tensors.update(sd)

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def get(self, key: str) -> np.ndarray:
        import torch  # optional and slow to import (~4 s): only for .bin/.pth files

        t = self._tensors[key].detach()
        if t.dtype == torch.bfloat16:  # numpy has no bf16: reinterpret the bits via ml_dtypes
            return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()

    def close(self) -> None:
        self._tensors.clear()


# What torch_load_checkpoint lets a pickle hold beyond tensors and plain containers: the one
# class timm's training checkpoints add (their `args`, an argparse.Namespace of the command
# line; the original GIFT's released vision checkpoints are such files).
SAFE_GLOBALS = (argparse.Namespace,)


def torch_load_checkpoint(path) -> object:
    """torch.load(path, weights_only=True) with SAFE_GLOBALS allowed, nothing else; a refused
    or unreadable file is one GmemError line naming the file (and the class it pickles)."""
    import torch  # optional and slow to import (~4 s): only for .bin/.pth files

    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch words it "Unsupported global: GLOBAL a.B ..." or "... unsupported GLOBAL a.b
        # whose module a is blocked"
        m = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(e), re.IGNORECASE)
        what = m.group(1) if m else " ".join(str(e).split())[:200]
        raise GmemError(f"{path}: refused by torch.load(weights_only=True): it pickles {what}; "
                        "gmem allows tensors, plain containers and argparse.Namespace (timm "
                        "training checkpoints' args), nothing else") from None
    except Exception as e:  # noqa: BLE001 - truncated zip, not a torch file, ...
        first = (str(e).strip().splitlines() or [""])[0]
        raise GmemError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {first})") from None


def open_weights(folder: str | pathlib.Path) -> TensorSource:
    """The weights of an HF folder: safetensors (single or sharded) first, else torch .bin."""
    folder = pathlib.Path(folder)
    if (folder / SAFE_INDEX).exists():
        files = sorted({folder / f for f in _read_index(folder / SAFE_INDEX).values()})
        return SafetensorsSource(files, str(folder))
    if (folder / SAFE_SINGLE).exists():
        return SafetensorsSource([folder / SAFE_SINGLE], str(folder))
    if (folder / TORCH_INDEX).exists():
        files = sorted({folder / f for f in _read_index(folder / TORCH_INDEX).values()})
        return TorchSource(files, str(folder))
    if (folder / TORCH_SINGLE).exists():
        return TorchSource([folder / TORCH_SINGLE], str(folder))
    raise GmemError(f"{folder}: no weights found (looked for {SAFE_SINGLE}, {SAFE_INDEX}, "
                    f"{TORCH_SINGLE}, {TORCH_INDEX})")
