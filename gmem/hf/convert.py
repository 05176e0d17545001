"""Import HF checkpoints into gmem: `load_pretrained(folder) -> (module, config, params)`.

    from gmem.hf.convert import load_pretrained
    module, config, params = load_pretrained("path/to/hf_folder")          # fp32, default device
    logits, _ = module.apply({"params": params}, input_ids_BL)

The key map of the family (gmem.hf.registry) turns every HF key into a gmem path. Before any
tensor is read, the file's keys and shapes (headers only) are checked against the module's
abstract parameter tree (jax.eval_shape of init), and every missing, unexpected and mis-shaped
key is reported in one GmemError. Tensors are then converted one at a time: read to host,
transformed, put on device (onto its Sharding when a shardings tree is given), host copy dropped,
so peak host memory is one tensor, not one model.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from huggingface_hub import snapshot_download

from gmem.errors import GmemError, collect_errors, read_utf8
from gmem.hf.keymap import apply_transform, gmem_to_hf, hf_to_gmem
from gmem.hf.readers import TensorSource, open_weights
from gmem.hf.registry import family_by_architecture, family_for
from gmem.tree import flatten, unflatten


def _example_inputs(family, config) -> tuple:
    if family.example_inputs is not None:
        return tuple(family.example_inputs(config))
    return (jnp.ones((1, 1), jnp.int32),)


def abstract_params(family, config, module=None, *, boxed: bool = False) -> dict:
    """The parameter tree the module expects, as ShapeDtypeStructs (no memory allocated).

    boxed=True keeps flax's LogicallyPartitioned boxes, from which a caller derives shardings
    (nn.get_partition_spec + nn.logical_to_mesh_sharding).
    """
    module = module if module is not None else family.module(config)
    tree = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                              *_example_inputs(family, config)))["params"]
    return tree if boxed else nn.meta.unbox(tree)


def _matcher(patterns: tuple[str, ...]):
    compiled = [re.compile(p) for p in patterns]
    return lambda key: any(c.fullmatch(key) for c in compiled)


def _shape_after(shape: tuple[int, ...], transform: str) -> tuple[int, ...]:
    return tuple(reversed(shape)) if transform == "T" else tuple(shape)


def plan_import(source: TensorSource, family, config, expected: dict[str, Any]
                ) -> dict[str, tuple[str, str]]:
    """{gmem path: (HF key, transform)} covering `expected` exactly, or one GmemError listing
    every missing, unexpected, duplicated and mis-shaped key."""
    ignored = _matcher(family.ignore)
    tied = set(family.tied) if getattr(config, "tie_word_embeddings", False) else set()
    plan: dict[str, tuple[str, str]] = {}
    unexpected, misshaped, dup = [], [], []
    bad_paths: set[str] = set()
    for key in source.keys():
        if ignored(key) or key in tied:
            continue
        hit = hf_to_gmem(key, family.rules)
        if hit is None or hit[0] not in expected:
            unexpected.append(key if hit is None else f"{key} (-> {hit[0]})")
            continue
        path, transform = hit
        if path in plan:
            dup.append(f"{key} and {plan[path][0]} both map to {path}")
            continue
        got = _shape_after(source.shape(key), transform)
        want = tuple(expected[path].shape)
        if got != want:
            bad_paths.add(path)
            misshaped.append(f"{key} has shape {list(source.shape(key))}, expected "
                             f"{list(_shape_after(want, transform))} (-> {path})")
            continue
        plan[path] = (key, transform)
    missing = []
    for path in expected:
        if path in plan or path in bad_paths:  # mis-shaped ones are reported as such
            continue
        hf = gmem_to_hf(path, family.rules)
        missing.append(f"{hf[0]} (-> {path})" if hf else path)
    errors = ([f"missing {m}" for m in missing] + [f"unexpected {u}" for u in unexpected]
              + [f"mis-shaped {m}" for m in misshaped] + [f"duplicate {d}" for d in dup])
    collect_errors(errors, f"{source.where}: weights do not fit gmem family {family.name!r} "
                           f"({len(missing)} missing, {len(unexpected)} unexpected, "
                           f"{len(misshaped)} mis-shaped)")
    return plan


def load_params(source: TensorSource, family, config, module=None, *, dtype=None,
                shardings=None) -> dict:
    """Read, check and convert every tensor of `source` into a gmem params tree (plain arrays).

    Args:
      dtype: dtype of the floating parameters (None: as the module declares, float32).
      shardings: None, or a tree like params whose leaves are jax.sharding.Sharding; each
        tensor is device_put straight onto its sharding.
    """
    expected = flatten(abstract_params(family, config, module))
    plan = plan_import(source, family, config, expected)
    flat_shardings = flatten(dict(shardings)) if shardings is not None else None
    if flat_shardings is not None:
        collect_errors([f"no sharding for {p}" for p in expected if p not in flat_shardings],
                       f"{source.where}: shardings tree does not cover the params")
    out = {}
    for path, (key, transform) in plan.items():
        want = jnp.dtype(expected[path].dtype)
        if dtype is not None and jnp.issubdtype(want, jnp.floating):
            want = jnp.dtype(dtype)
        host = apply_transform(source.get(key), transform)
        if host.dtype != want:  # e.g. bf16/fp16 checkpoints into fp32 params
            host = host.astype(want)
        target = flat_shardings[path] if flat_shardings is not None else None
        out[path] = jax.device_put(host, target)
        del host  # one tensor on host at a time
    return unflatten(out)


def resolve_folder(name_or_path) -> pathlib.Path:
    """A local folder as is; otherwise an HF hub id ("org/name"), downloaded when online."""
    p = pathlib.Path(name_or_path)
    if p.exists() or str(name_or_path).count("/") != 1 or str(name_or_path).startswith((".", "/")):
        return p
    try:
        return pathlib.Path(snapshot_download(
            str(name_or_path), allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt",
                                               "*.model"]))
    except Exception as e:  # offline, unknown repo, gated model ...
        raise GmemError(f"{name_or_path}: not a local folder and not downloadable from the HF "
                        f"hub ({type(e).__name__}: {e})") from None


# config.json fields that size the model: an integer (None where HF allows it), so a typo such
# as "two" is reported here with its line, not as a traceback from inside the model's init.
_INT_FIELDS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings", "n_layer", "n_embd", "n_head",
               "n_positions", "n_ctx", "n_inner", "type_vocab_size", "num_channels", "image_size",
               "patch_size", "sliding_window", "num_labels"}
_NONE_OK = {"head_dim", "n_inner", "sliding_window", "num_key_value_heads"}
_POSITIVE = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "n_layer", "n_embd", "n_head"}
_FLOAT_FIELDS = {"rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "rope_theta", "initializer_range",
                 "attention_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob",
                 "resid_pdrop", "embd_pdrop", "attn_pdrop"}


def _json_line(text: str, key: str) -> int | None:
    m = re.search(rf'"{re.escape(key)}"\s*:', text)
    return text.count("\n", 0, m.start()) + 1 if m else None


def check_hf_config(d: dict, text: str, path) -> None:
    """Types of the sizing fields of a config.json, every problem listed (file:line: field)."""
    errors = []
    for k in sorted(set(d) & (_INT_FIELDS | _FLOAT_FIELDS)):
        v = d[k]
        if v is None and (k in _NONE_OK or k in _FLOAT_FIELDS):
            continue
        if k in _INT_FIELDS:
            ok = isinstance(v, int) and not isinstance(v, bool) and (v > 0 if k in _POSITIVE else v >= 0)
            want = "a positive integer" if k in _POSITIVE else "an integer >= 0"
        else:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            want = "a number"
        if not ok:
            line = _json_line(text, k)
            errors.append(f"{path}{f':{line}' if line else ''}: {k}: expected {want}, got {json.dumps(v)}")
    if errors:
        raise GmemError("; ".join(errors))


def read_hf_config(folder: pathlib.Path) -> dict:
    """config.json as a dict; bad JSON names its line and column, mistyped sizes their field."""
    path = folder / "config.json"
    if not path.is_file():
        raise GmemError(f"{path}: not found; an HF model folder needs config.json")
    text = read_utf8(path, "an HF config.json")
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise GmemError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    if not isinstance(d, dict):
        raise GmemError(f"{path}: expected a JSON object, got {type(d).__name__}")
    check_hf_config(d, text, path)
    return d


def load_pretrained(folder, *, dtype=None, shardings=None, architecture: str | None = None,
                    **config_overrides):
    """Load an HF model folder into gmem.

    Args:
      folder: HF folder with config.json and model.safetensors, sharded safetensors with
        model.safetensors.index.json, or pytorch_model.bin; or a hub id when online.
      dtype: parameter dtype (None: float32).
      shardings: optional tree like params of jax.sharding.Sharding (see load_params).
      architecture: pick the family by this HF architecture name instead of config.json's.
      **config_overrides: fields of the family config to set (e.g. dtype="bfloat16" for the
        compute dtype, remat=True).

    Returns:
      (module, config, params): a linen module, its frozen config, and params for
      module.apply({"params": params}, ...).
    """
    folder = resolve_folder(folder)
    hf_config = read_hf_config(folder)
    family = (family_by_architecture(architecture) if architecture
              else family_for(hf_config, str(folder / "config.json")))
    config = family.config_cls.from_hf(hf_config, **config_overrides)
    module = family.module(config)
    source = open_weights(folder)
    try:
        params = load_params(source, family, config, module, dtype=dtype, shardings=shardings)
    finally:
        source.close()
    return module, config, params


def to_numpy_tree(params) -> dict[str, np.ndarray]:
    """Flat {path: host array} of a params tree (boxes unwrapped), for export and tests."""
    return {k: np.asarray(jax.device_get(v)) for k, v in flatten(nn.meta.unbox(params)).items()}
