"""timm VisionTransformer weights in gmem's ViT, without timm: load_timm_vit and back.

    from gmem.hf.timm import load_timm_vit
    module, config, params = load_timm_vit("vit_b16.pth", model_name="vit_base_patch16_224")
    logits = module.apply({"params": params}, pixels_BCHW)          # [B, num_classes] fp32

The GIFT paper's vision backbone is timm's `vit_base_patch16_224.augreg_in21k`: with this its
GIFT checkpoints (gmem.adapters.gift / gmem.systems.gift) run on gmem's ViT. gmem's ViT params
are the same whether they came from timm or HF, so GIFT and LoRA targets, the HF ViT key map
and the HF export (gmem.hf.writer) all apply to a timm-loaded model unchanged.

A timm state dict does not record the number of attention heads: give num_heads, or a timm
model name (model_name=, e.g. the `args.model` of a GIFT checkpoint; a folder's timm
config.json "architecture") from which gmem.hf.keymaps.timm_vit.HEADS gives it. Everything else
comes from the shapes: width, depth, MLP width, patch size, channels, the image size (from the
square grid of position embeddings, or image_size=), qkv bias, and the classes (head.weight;
no head: a ViTModel of the features after the final norm). timm's LayerNorm eps is 1e-6 and its
GELU the exact one; attention scale head_dim^-0.5 as in HF.

Sources: a state dict (torch tensors or numpy arrays), a .safetensors file, a torch file
(.pth / .pth.tar / .bin, weights_only=True; {"state_dict"} / {"model"} / {"state_dict_ema"}
wrappers and a DDP "module." prefix are unwrapped), or a folder with timm's config.json and
model.safetensors or pytorch_model.bin. Keys of variants gmem does not build (LayerScale,
qk-norm, register tokens, fc_norm, pre-norm, ...) are reported as unexpected, all at once.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from typing import Mapping, Optional

import flax.linen as nn
import jax
import numpy as np

from gmem.errors import GmemError, collect_errors
from gmem.hf.convert import load_params
from gmem.hf.keymap import _pattern, gmem_to_hf, hf_to_gmem
from gmem.hf.keymaps import timm_vit as keys
from gmem.hf.readers import SafetensorsSource, open_weights, torch_load_checkpoint
from gmem.hf.registry import family_named
from gmem.models.vit import ViTConfig
from gmem.tree import flatten

_WRAPPERS = ("state_dict", "model", "state_dict_ema")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


class _DictSource:
    """A TensorSource over an in-memory state dict (torch tensors or numpy arrays)."""

    def __init__(self, state: Mapping, where: str):
        self.where = where
        self._state = dict(state)

    def keys(self) -> list[str]:
        return list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._state[key].shape)

    def get(self, key: str) -> np.ndarray:
        v = self._state[key]
        if hasattr(v, "detach"):
            import torch  # optional and slow to import (~4 s): only for timm .pth files

            v = v.detach().cpu()
            if v.dtype == torch.bfloat16:
                v = v.float()
            return v.numpy()
        return np.asarray(v)

    def close(self) -> None:
        self._state.clear()


class _SplitFused:
    """A TensorSource that shows each fused key (keys.FUSED) as its parts: rows split evenly
    along dim 0, e.g. blocks.3.attn.qkv.weight -> blocks.3.attn.{q,k,v}.weight."""

    def __init__(self, base):
        self.base, self.where = base, base.where
        self._virtual: dict[str, tuple[str, int, int]] = {}
        self._keys = []
        fused = [(_pattern(t + ".{_kind}", "."), t, parts) for t, parts in keys.FUSED]
        for k in base.keys():
            hit = next(((m, t, parts) for p, t, parts in fused for m in [p.match(k)] if m), None)
            if hit is None:
                self._keys.append(k)
                continue
            m, t, parts = hit
            stem = t.format(**{n: v for n, v in m.groupdict().items() if n != "_kind"})
            head = stem.rsplit(".", 1)[0]
            for j, part in enumerate(parts):
                v = f"{head}.{part}.{m.group('_kind')}"
                self._virtual[v] = (k, j, len(parts))
                self._keys.append(v)

    def keys(self) -> list[str]:
        return list(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        if key not in self._virtual:
            return self.base.shape(key)
        k, _, n = self._virtual[key]
        s = self.base.shape(k)
        return (s[0] // n, *s[1:])

    def get(self, key: str) -> np.ndarray:
        if key not in self._virtual:
            return self.base.get(key)
        k, j, n = self._virtual[key]
        full = self.base.get(k)
        rows = full.shape[0] // n
        return np.ascontiguousarray(full[j * rows:(j + 1) * rows])

    def close(self) -> None:
        self.base.close()


def heads_for(model_name: str) -> int:
    """Attention heads of a timm ViT model name ("vit_base_patch16_224.augreg_in21k" -> 12)."""
    base = model_name.split(".")[0]
    for prefix, h in keys.HEADS.items():
        if base.startswith(prefix):
            return h
    raise GmemError(f"model_name={model_name!r}: not a timm ViT name gmem knows the head count "
                    f"of ({sorted(keys.HEADS)}); pass num_heads=")


def timm_vit_config(shapes: Mapping[str, tuple], *, num_heads: int, image_size=None,
                    where: str = "timm state dict", **overrides) -> ViTConfig:
    """The ViTConfig of a timm VisionTransformer from its state dict's shapes."""
    need = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")
    missing = [k for k in need if k not in shapes]
    if missing:
        raise GmemError(f"{where}: not a timm VisionTransformer with a class token (no "
                        f"{missing}); keys present: {sorted(shapes)[:12]}...")
    d, c, ph, pw = shapes["patch_embed.proj.weight"]
    depth = 1 + max(int(m.group(1)) for k in shapes for m in [_BLOCK.match(k)] if m)
    n = shapes["pos_embed"][1] - 1
    errors = []
    if image_size is None:
        g = math.isqrt(n)
        if g * g != n:
            errors.append(f"pos_embed holds {n} patch positions, not a square grid; pass image_size=")
        image_size = (g * ph, g * pw)
    image_size = (int(image_size[0]), int(image_size[1])) if isinstance(image_size, (tuple, list)) \
        else (int(image_size), int(image_size))
    if (image_size[0] // ph) * (image_size[1] // pw) != n:
        errors.append(f"image_size={image_size} with patch {ph}x{pw} gives "
                      f"{(image_size[0] // ph) * (image_size[1] // pw)} positions, pos_embed has {n}")
    if d % num_heads:
        errors.append(f"num_heads={num_heads} does not divide the width {d}")
    collect_errors(errors, where)
    head = shapes.get("head.weight")
    kwargs = dict(hidden_size=int(d), num_hidden_layers=depth, num_attention_heads=int(num_heads),
                  intermediate_size=int(shapes["blocks.0.mlp.fc1.weight"][0]), hidden_act="gelu",
                  layer_norm_eps=1e-6, image_size=image_size, patch_size=(int(ph), int(pw)),
                  num_channels=int(c), qkv_bias="blocks.0.attn.qkv.bias" in shapes,
                  num_labels=int(head[0]) if head is not None else 2, add_pooling_layer=False,
                  architecture="ViTForImageClassification" if head is not None else "ViTModel")
    kwargs.update(overrides)
    return ViTConfig(**kwargs)


def load_timm_vit(source, *, model_name: Optional[str] = None, num_heads: Optional[int] = None,
                  image_size=None, dtype=None, shardings=None, **config_overrides):
    """A timm VisionTransformer's weights -> (module, config, params) of gmem's ViT.

    Args:
      source: a state dict, a .safetensors or torch file, or a timm folder (see the module doc).
      model_name / num_heads: the head count, by timm name or directly (one is needed).
      image_size: (H, W) the position embeddings were trained for (default: the square grid).
      dtype, shardings: as gmem.hf.convert.load_params.
      **config_overrides: other ViTConfig fields (e.g. dtype="bfloat16" for compute, remat).
    Returns:
      ViTForImageClassification (timm's head -> classifier) when the weights have a head, else
      ViTModel without a pooler; its ViTConfig; the params.
    """
    base, where, folder_cfg = _open(source)
    try:
        if model_name is None and folder_cfg.get("architecture"):
            model_name = str(folder_cfg["architecture"])
        pool = folder_cfg.get("global_pool", "token")
        if pool not in ("token", None):
            raise GmemError(f"{where}: global_pool={pool!r}; gmem's ViT pools the class token only")
        if num_heads is None:
            if model_name is None:
                raise GmemError(f"{where}: a timm state dict does not record the number of "
                                "attention heads; pass num_heads= or model_name=")
            num_heads = heads_for(model_name)
        elif model_name is not None and model_name.split(".")[0].startswith(tuple(keys.HEADS)) \
                and heads_for(model_name) != num_heads:
            raise GmemError(f"num_heads={num_heads} contradicts model_name={model_name!r} "
                            f"({heads_for(model_name)} heads)")
        src = _SplitFused(base)
        unknown = [k for k in src.keys() if hf_to_gmem(k, keys.TIMM_VIT_IMAGE_CLASSIFICATION) is None]
        if unknown:
            raise GmemError(f"{where}: a timm ViT variant gmem's ViT does not build (LayerScale, "
                            f"qk-norm, register tokens, fc_norm, pre-norm, ...): {len(unknown)} "
                            f"keys it has no place for: {unknown[:20]}")
        config = timm_vit_config({k: tuple(base.shape(k)) for k in base.keys()},
                                 num_heads=num_heads, image_size=image_size, where=where,
                                 **config_overrides)
        family = family_named("timm-vit" if config.architecture == "ViTForImageClassification"
                              else "timm-vit-model")
        module = family.module(config)
        params = load_params(src, family, config, module, dtype=dtype, shardings=shardings)
    finally:
        base.close()
    return module, config, params


def to_timm_state_dict(params: Mapping, config: ViTConfig) -> dict[str, np.ndarray]:
    """gmem ViT params -> a timm VisionTransformer state dict (numpy, torch layouts), q, k, v
    stacked back into attn.qkv. ViTForImageClassification params (vit/ + classifier) or
    ViTModel params."""
    flat = {p: np.asarray(jax.device_get(v)) for p, v in flatten(nn.meta.unbox(dict(params))).items()}
    rules = (keys.TIMM_VIT_IMAGE_CLASSIFICATION if "classifier/kernel" in flat
             else keys.TIMM_VIT_MODEL)
    out, errors = {}, []
    for path, v in flat.items():
        hit = gmem_to_hf(path, rules)
        if hit is None:
            errors.append(f"{path}: no timm name (pooler? timm ViTs have none)")
            continue
        out[hit[0]] = np.ascontiguousarray(v.T) if hit[1] == "T" else v
    collect_errors(errors, "to_timm_state_dict")
    for i in range(config.num_hidden_layers):
        for kind in ("weight", "bias"):
            parts = [out.pop(f"blocks.{i}.attn.{p}.{kind}", None) for p in ("q", "k", "v")]
            if all(x is not None for x in parts):
                out[f"blocks.{i}.attn.qkv.{kind}"] = np.concatenate(parts, axis=0)
    return out


def _open(source):
    """-> (TensorSource, where, timm config.json dict or {})."""
    if isinstance(source, Mapping):
        return _DictSource(_unwrap(source), "timm state dict"), "timm state dict", {}
    p = pathlib.Path(source)
    if not p.exists():
        raise GmemError(f"{p}: not found")
    if p.is_dir():
        cfg = {}
        if (p / "config.json").exists():
            try:
                cfg = json.loads((p / "config.json").read_text())
            except ValueError as e:
                raise GmemError(f"{p / 'config.json'}: invalid JSON ({e})") from None
        return open_weights(p), str(p), cfg
    if p.suffix == ".safetensors":
        return SafetensorsSource([p], str(p)), str(p), {}
    obj = torch_load_checkpoint(p)
    if not isinstance(obj, Mapping):
        raise GmemError(f"{p}: holds a {type(obj).__name__}, not a state dict")
    return _DictSource(_unwrap(obj), str(p)), str(p), {}


def _unwrap(state: Mapping) -> dict:
    for w in _WRAPPERS:
        if isinstance(state.get(w), Mapping):
            state = state[w]
            break
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state
