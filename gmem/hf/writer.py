"""Export gmem params as an HF folder that transformers loads offline.

    from gmem.hf.writer import save_pretrained
    save_pretrained("out/", config, params, tokenizer=tok)
    # -> out/config.json (config.to_hf()), out/model.safetensors (or shards + index),
    #    and the tokenizer's files when one is given

The family key map (the same rules as import) names every tensor; transforms are their own
inverse. The folder appears atomically: everything is written into a temporary sibling which
is renamed into place at the end, so a failure never leaves a half-written model behind.
Adapters are not exported here: merge them into the base first (gmem.adapters).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import flax.linen as nn
import jax
import numpy as np
from safetensors.numpy import save_file

from gmem.errors import GmemError, collect_errors
from gmem.hf.keymap import apply_transform, gmem_to_hf
from gmem.hf.readers import SAFE_INDEX, SAFE_SINGLE
from gmem.hf.registry import family_for
from gmem.tree import flatten

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


def _family_of(config, family=None):
    if family is not None:
        return family
    return family_for(config.to_hf(), where=f"{type(config).__name__}.to_hf()")


def _hf_tensors(params, family) -> list[tuple[str, str, object]]:
    """[(hf key, transform, device array)] in param order; GmemError for unmapped paths."""
    flat = flatten(nn.meta.unbox(params))
    out, errors, seen = [], [], {}
    for path, leaf in flat.items():
        hit = gmem_to_hf(path, family.rules)
        if hit is None:
            errors.append(f"no HF key for {path}")
            continue
        key, transform = hit
        if key in seen:
            errors.append(f"{path} and {seen[key]} both map to {key}")
            continue
        seen[key] = path
        out.append((key, transform, leaf))
    collect_errors(errors, f"save_pretrained: params do not fit family {family.name!r} "
                           f"(merge adapters first)")
    return out


def _shards(tensors, max_bytes: int) -> list[list]:
    shards, current, size = [], [], 0
    for item in tensors:
        n = int(np.prod(item[2].shape)) * np.dtype(item[2].dtype).itemsize
        if current and size + n > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(item)
        size += n
    if current:
        shards.append(current)
    return shards


def _write_shard(path: pathlib.Path, items) -> int:
    """Write one safetensors file; returns its tensor bytes. Host copies live for one shard."""
    host = {}
    for key, transform, leaf in items:
        host[key] = np.ascontiguousarray(apply_transform(np.asarray(jax.device_get(leaf)), transform))
    save_file(host, str(path), metadata={"format": "pt"})  # transformers requires "format"
    return sum(a.nbytes for a in host.values())


def save_pretrained(folder, config, params, tokenizer=None, *, family=None,
                    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> pathlib.Path:
    """Write an HF folder: config.json, model.safetensors (sharded + index above max_shard_bytes).

    Args:
      folder: destination; replaced atomically if it exists.
      config: a family config with to_hf().
      params: the params tree (plain or boxed arrays, on any devices).
      tokenizer: anything with save_pretrained(dir) (a transformers tokenizer), or None.
      family: a registry Family; None picks it from config.to_hf().

    Returns:
      the folder path.
    """
    folder = pathlib.Path(folder)
    family = _family_of(config, family)
    tensors = _hf_tensors(params, family)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        hf_config = dict(config.to_hf())
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        shards = _shards(tensors, max_shard_bytes)
        if len(shards) == 1:
            _write_shard(tmp / SAFE_SINGLE, shards[0])
        else:
            weight_map, total = {}, 0
            for i, items in enumerate(shards):
                name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                total += _write_shard(tmp / name, items)
                weight_map.update({key: name for key, _, _ in items})
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        _replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _replace_dir(new: pathlib.Path, folder: pathlib.Path) -> None:
    """Rename `new` to `folder`; an existing folder is swapped out first, then removed."""
    if folder.exists() and not folder.is_dir():
        raise GmemError(f"save_pretrained: {folder} exists and is not a folder")
    if folder.is_dir():
        try:
            folder.rmdir()  # empty: nothing to keep
        except OSError:
            old = pathlib.Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
            os.rename(folder, old / "x")
            os.rename(new, folder)
            shutil.rmtree(old, ignore_errors=True)
            return
    os.rename(new, folder)
