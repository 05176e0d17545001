"""Relation semantics for GMT's SGM: one vector per relation (specs/gofa-gmt.md B4).

Sources (`relation_semantics(..., source=...)`):
  "bert"           relation texts (names, or definitions from `texts`) encoded by
                   all-MiniLM-L6-v2 through gmem's own BERT: mean pooling over real tokens,
                   then L2 norm (sentence-transformers' recipe), d = 384. The reference's
                   `build_rel_semantics.py` does the same with sentence-transformers.
  "<file>"         a table [R, d]: .npy, .safetensors (key rel_embeddings, or the only tensor),
                   or a torch file (.pt/.pth/.bin, weights_only) holding a tensor or a dict with
                   key rel_embeddings.
  "kge:<file>"     an OpenKE checkpoint: rel_embeddings.weight (ComplEx: rel_re/rel_im
                   concatenated); when the entity width differs, the relation vectors are
                   concatenated with themselves (as the reference's process_kge.py).
  "random"         randn(R, dim) * 0.02 from `seed`. Only when asked for: the reference falls
                   back to it silently (and unseeded).
With add_inverse, inverse relation r + R gets the same vector as r (table duplicated).

Relation texts (`relation_texts`): a definition where one is given (`load_definitions`: a JSON
{name: description}, or `name<TAB>description` / `name,description` lines, as the reference's
build_rel_semantics.py reads them), else the name: as the reference reads it (its first
whitespace-separated token) or made readable (underscores as spaces). Names that are opaque
ids (Wikidata-style P1412, Q5, or bare numbers) carry no meaning for a sentence encoder:
encoding them warns.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

import gmem.assets
from gmem.errors import GmemError
from gmem.hf.convert import load_pretrained
from gmem.hf.readers import torch_load


def relation_semantics(names: Sequence[str], source: str = "bert", *, add_inverse: bool = False,
                       dim: int = 256, seed: int = 0,
                       texts: Mapping[str, str] | None = None,
                       batch_size: int = 64) -> np.ndarray:
    """float32 [R or 2R, d]: the relation-semantic table for base relations `names` (R)."""
    r = len(names)
    if source == "random":
        table = np.random.default_rng(seed).standard_normal((r, dim)).astype(np.float32) * 0.02
    elif source in ("bert", "minilm"):
        missing = [n for n in (texts or {}) if n not in set(names)]
        if missing:
            raise GmemError(f"relation texts: unknown relations {missing[:5]}")
        strs = [(texts or {}).get(n, n) for n in names]
        ids = opaque_names(strs)
        if ids:
            warnings.warn(f"relation semantics: {len(ids)} of {len(strs)} relation texts are ids, not words "
                          f"(e.g. {ids[:3]}): their sentence embeddings carry no meaning. Give definitions "
                          "(system.rel_definitions) or a table (system.rel_semantics=FILE)", stacklevel=2)
        table = encode_texts(strs, batch_size=batch_size)
    elif source.startswith("kge:"):
        table = load_kge_relations(source[4:])
    else:
        table = load_table(source)
    if table.ndim != 2 or table.shape[0] not in (r, 2 * r):
        raise GmemError(f"{source}: relation table has shape {tuple(table.shape)}; expected "
                        f"[{r}, d] (one row per relation)" + (f" or [{2 * r}, d]" if add_inverse else ""))
    if table.shape[0] == 2 * r and not add_inverse:
        raise GmemError(f"{source}: {2 * r} rows but the KG has {r} relations and no add_inverse")
    if add_inverse and table.shape[0] == r:
        table = np.concatenate([table, table], 0)
    return np.ascontiguousarray(table, np.float32)


_OPAQUE = re.compile(r"^[A-Za-z]{0,2}\d+$")


def opaque_names(texts: Sequence[str]) -> list[str]:
    """The texts that are ids rather than words (P1412, Q5, 42)."""
    return [t for t in texts if _OPAQUE.match(t.strip())]


def load_definitions(path: str) -> dict[str, str]:
    """Relation definitions {name: description}: a .json object, or lines `name<TAB>text` or
    `name,text` (blank or other lines skipped), as the reference's build_rel_semantics.py."""
    if not os.path.isfile(path):
        raise GmemError(f"{path}: relation definitions file not found")
    text = open(path, encoding="utf-8").read()
    if path.endswith(".json"):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise GmemError(f"{path}:{e.lineno}: bad JSON: {e.msg}") from None
        if not isinstance(d, dict) or not all(isinstance(v, str) for v in d.values()):
            raise GmemError(f"{path}: expected a JSON object {{relation name: description}}")
        return {str(k): v for k, v in d.items()}
    out = {}
    for ln in text.splitlines():
        ln = ln.strip()
        sep = "\t" if "\t" in ln else ","
        if sep in ln:
            k, v = ln.split(sep, 1)
            out[k] = v
    return out


def relation_texts(names: Sequence[str], mode: str = "original", definitions: str | Mapping[str, str] = "") -> list[str]:
    """The text to embed per relation: its definition, else its name (mode "original": the
    reference's first whitespace-separated token; "readable": underscores as spaces).
    Definitions are keyed by that original name; unknown keys are an error."""
    keys = [(n.split() or [n])[0] for n in names]
    defs = load_definitions(definitions) if isinstance(definitions, str) and definitions else dict(definitions or {})
    unknown = sorted(set(defs) - set(keys))
    if unknown:
        raise GmemError(f"relation definitions: unknown relations {unknown[:5]}"
                        f"{' ...' if len(unknown) > 5 else ''} (the KG's are e.g. {keys[:3]})")
    if mode not in ("original", "readable"):
        raise GmemError(f"relation text mode: {mode!r} is not 'original' or 'readable'")
    plain = keys if mode == "original" else [n.replace("_", " ").strip() for n in names]
    return [defs.get(k, p) for k, p in zip(keys, plain)]


def load_table(path: str) -> np.ndarray:
    """A [R, d] table from .npy, .safetensors or a torch file (tensor or {rel_embeddings})."""
    if not os.path.isfile(path):
        raise GmemError(f"{path}: relation-semantics file not found (source must be 'bert', "
                        "'random', 'kge:<file>' or a file)")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise GmemError(f"{path}: not an .npy file (no NUMPY header)")
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as e:  # object arrays (pickled), or not an .npy file at all
            why = ("it holds Python objects (an object array needs pickle, which gmem does not load); "
                   "save a float array" if "allow_pickle" in str(e) else str(e).splitlines()[0])
            raise GmemError(f"{path}: not a numeric .npy table: {why}") from None
    if ext == ".safetensors":
        d = _safetensors(path)
        if "rel_embeddings" in d:
            return d["rel_embeddings"]
        if len(d) == 1:
            return next(iter(d.values()))
        raise GmemError(f"{path}: no tensor 'rel_embeddings' among {sorted(d)}")
    obj = _torch_load(path)
    if isinstance(obj, dict):
        if "rel_embeddings" not in obj:
            raise GmemError(f"{path}: dict without key 'rel_embeddings' (keys: {sorted(obj)[:8]})")
        obj = obj["rel_embeddings"]
    return _to_numpy(obj, path)


def load_kge_relations(path: str) -> np.ndarray:
    """Relation vectors of an OpenKE checkpoint (state dict), as the reference's process_kge."""
    if not os.path.isfile(path):
        raise GmemError(f"{path}: KGE checkpoint not found")
    sd = _torch_load(path) if not path.endswith(".safetensors") else _safetensors(path)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if "rel_embeddings.weight" in sd:
        rel = _to_numpy(sd["rel_embeddings.weight"], path)
    elif "rel_re_embeddings.weight" in sd and "rel_im_embeddings.weight" in sd:   # ComplEx
        rel = np.concatenate([_to_numpy(sd["rel_re_embeddings.weight"], path),
                              _to_numpy(sd["rel_im_embeddings.weight"], path)], -1)
    else:
        raise GmemError(f"{path}: no rel_embeddings.weight (or ComplEx rel_re/rel_im) in the "
                        f"checkpoint (keys: {sorted(sd)[:8]})")
    ent = sd.get("ent_embeddings.weight")
    if ent is not None and _to_numpy(ent, path).shape[-1] != rel.shape[-1]:
        rel = np.concatenate([rel, rel], -1)
    return rel


def encode_texts(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Sentence embeddings of all-MiniLM-L6-v2 (gmem's BERT, weights from gmem.assets):
    mean of the last hidden states over real tokens, L2-normalised. [len(texts), 384]."""
    forward, tokenizer = _minilm()
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                        max_length=128, return_tensors="np")
        out.append(np.asarray(forward(enc["input_ids"], enc["attention_mask"]), np.float32))
    return np.concatenate(out, 0) if out else np.zeros((0, 384), np.float32)


_MINILM: dict = {}


def _minilm():
    """(jitted ids, mask -> pooled embeddings, tokenizer) of all-MiniLM-L6-v2, loaded once."""
    if "m" not in _MINILM:
        from transformers import AutoTokenizer  # slow to import (~2 s): only when relation texts are encoded

        folder = str(gmem.assets.path("all-minilm-l6-v2"))
        module, _, params = load_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)

        @jax.jit
        def forward(ids, mask):
            hidden, _ = module.apply({"params": params}, ids, mask)
            m = mask[..., None].astype(jnp.float32)
            pooled = (hidden.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
            return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

        _MINILM["m"] = (forward, tokenizer)
    return _MINILM["m"]


def _torch_load(path: str):
    return torch_load(path, mmap=False)


def _safetensors(path: str) -> dict:
    try:
        return load_file(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError
        raise GmemError(f"{path}: not a readable .safetensors file ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:160]})") from None


def _to_numpy(x, path: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind not in "fi":
        raise GmemError(f"{path}: relation table is not numeric ({x.dtype})")
    return x.astype(np.float32)


def set_relation_semantics(params: dict, table: np.ndarray, path: Sequence[str] = ("sgm",)) -> dict:
    """Put `table` [R_edge, d] into an SGM/encoder params tree (at path/rel_semantic), checking
    the shape. Returns a new tree (dict nodes copied; the input is not modified)."""
    new = dict(params)
    node = new
    for p in path:
        if p not in node:
            raise GmemError(f"params: no {'/'.join(path)} in the tree")
        node[p] = dict(node[p])
        node = node[p]
    old = node.get("rel_semantic")
    if old is None:
        raise GmemError(f"params: no {'/'.join(path)}/rel_semantic")
    shape = nn.unbox(old).shape
    if tuple(table.shape) != tuple(shape):
        raise GmemError(f"relation semantics: table {tuple(table.shape)} does not fit "
                        f"rel_semantic {tuple(shape)} (num_edge_relations, rel_dim)")
    value = jnp.asarray(table, jnp.float32)
    node["rel_semantic"] = old.replace_boxed(value) if isinstance(old, nn.Partitioned) else value
    return new
