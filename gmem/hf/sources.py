"""Where a base model comes from: `model.source` -> (family config, params, tokenizer).

A source is an embedded asset name ("smollm2"), a .gguf file, or a local HF folder with
config.json. ('random' sources are built by the model families themselves: gmem.models.tiny.)
"""

from __future__ import annotations

import pathlib

import flax.linen as nn

import gmem.assets
from gmem.errors import GmemError
from gmem.hf.convert import load_pretrained
from gmem.hf.gguf import load_gguf
from gmem.hf.tokenizer import load_tokenizer

# Short names accepted in `model.source` -> gmem.assets names.
EMBEDDED_MODELS = {"smollm2": "smollm2-135m-instruct", "smollm2-135m-instruct": "smollm2-135m-instruct",
                   "minilm": "all-minilm-l6-v2", "all-minilm-l6-v2": "all-minilm-l6-v2"}


def resolve_source(source: str) -> tuple[str, pathlib.Path | None]:
    """('random' | 'gguf' | 'hf', path) for a model.source value."""
    if source == "random":
        return "random", None
    if source in EMBEDDED_MODELS:
        p = pathlib.Path(gmem.assets.path(EMBEDDED_MODELS[source]))
        return ("gguf" if p.suffix == ".gguf" else "hf"), p
    p = pathlib.Path(source).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return "gguf", p
    if p.is_dir() and (p / "config.json").is_file():
        return "hf", p
    raise GmemError(f"model.source: {source!r} is not 'random', an embedded model "
                    f"({sorted(EMBEDDED_MODELS)}), a .gguf file or an HF folder with config.json")


def load_source(kind: str, path) -> tuple:
    """(family config, params (unboxed), tokenizer) from a GGUF file (kind 'gguf') or an HF folder."""
    if kind == "gguf":
        _, config, params = load_gguf(path)
    elif kind == "hf":
        _, config, params = load_pretrained(path)
    else:
        raise GmemError(f"model.source: cannot load weights of kind {kind!r}")
    return config, nn.unbox(params), load_tokenizer(path)
