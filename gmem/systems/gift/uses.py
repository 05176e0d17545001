"""GIFT (Generative Interpretable Fine-Tuning) in its three uses, and its cluster maps.

  causal LM                 targets (q_proj, v_proj), r=64 in the paper; the base stays frozen
  sequence classification   targets (query, value), r=32, plus a trainable classifier head
  image classification      target attn:proj (ViT attention output), r=16, plus the head

The adapter itself is gmem.adapters (kind="gift"): W' = W (I + phi psi), one (phi, psi) pair
per target type shared by every layer. This module adds what the original wrapper classes add
on top: a trainable head for the classification uses (GIFTWrapperFor{Seq,Image}Classification),
loading the original checkpoints (projections plus `backbone.head.*` / `backbone.classifier.*`)
and the interpretability maps of vis_utils.ClusterVisualizer.

Trainable tree of a use: {"gift": GIFT tree, "head": {head module: its params}} ("head" is
absent for the causal LM). Parameter counts follow the paper: the head is not counted.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gmem.adapters import AdapterSpec, adapter_collection, count_params, init_adapters, placements
from gmem.adapters.gift_io import load_gift_checkpoint
from gmem.adapters.targets import hf_names, layer_index
from gmem.errors import GmemError, collect_errors
from gmem.hf.keymap import Rule, apply_transform, hf_to_gmem

# Defaults from the paper's configs (spec section 1.9).
from gmem.tree import flatten, unflatten

# Defaults from the paper's configs (spec section 1.9).
USES = {
    "causal_lm": dict(targets=("q_proj", "v_proj"), rank=64, head=()),
    "sequence_classification": dict(targets=("query", "value"), rank=32, head=("classifier",)),
    "image_classification": dict(targets=("attn:proj",), rank=16, head=("classifier",)),
}


@dataclasses.dataclass(frozen=True)
class GiftUse:
    """One GIFT use: the adapter spec and which top-level modules form the trainable head."""

    spec: AdapterSpec
    head: tuple = ()

    @classmethod
    def make(cls, use: str, **spec_overrides) -> "GiftUse":
        if use not in USES:
            raise GmemError(f"gift use: {use!r} is not one of {sorted(USES)}")
        d = dict(USES[use])
        head = d.pop("head")
        d.update(spec_overrides)
        return cls(AdapterSpec(kind="gift", name="gift", **d), tuple(head))


def init_trainable(use: GiftUse, base_params: Mapping, rng, rules: Optional[Sequence[Rule]] = None) -> dict:
    """{"gift": fresh GIFT tree, "head": copies of the base head params (trained from there)}."""
    out = {"gift": init_adapters([use.spec], base_params, rng, rules)[use.spec.name]}
    if use.head:
        missing = [h for h in use.head if h not in base_params]
        collect_errors([f"{h}: not a top-level module of the base ({sorted(base_params)})"
                        for h in missing], "gift head")
        out["head"] = {h: jax.tree_util.tree_map(jnp.asarray, base_params[h]) for h in use.head}
    return out


def variables(use: GiftUse, trainable: Mapping, base_params: Mapping,
              rules: Optional[Sequence[Rule]] = None) -> dict:
    """Model variables: the base with the trainable head swapped in, plus the GIFT adapters.
    Call inside the loss so gradients reach both the shared pairs and the head."""
    params = dict(base_params)
    params.update(trainable.get("head", {}))
    return {"params": params,
            "adapter": adapter_collection([use.spec], trainable["gift"], base_params, rules)}


def num_trainable_parameters(trainable: Mapping, with_head: bool = False) -> int:
    """GIFT parameters (the paper's count); with_head adds the classifier."""
    n = count_params(trainable["gift"])
    return n + (count_params(trainable.get("head", {})) if with_head else 0)


def load_original(path: str, use: GiftUse, base_params: Mapping, rules: Sequence[Rule]) -> dict:
    """An original GIFT checkpoint -> gmem trainable tree. The projections load as they are;
    `backbone.head.*` (timm's classifier) and `backbone.classifier.*` (RoBERTa's) map onto the
    gmem head through the family key map (timm `head` is HF `classifier`)."""
    gift, rest = load_gift_checkpoint(path, use.spec)
    out = {"gift": gift}
    if not use.head:
        return out
    flat, errors = {}, []
    for k, v in rest.items():
        if not k.startswith("backbone."):
            errors.append(f"{k}: unexpected key")
            continue
        hf = k[len("backbone."):]
        hf = "classifier" + hf[len("head"):] if hf.startswith("head.") else hf
        hit = hf_to_gmem(hf, rules)
        if hit is None or hit[0].split("/")[0] not in use.head:
            errors.append(f"{k}: not a head parameter of this family")
            continue
        flat[hit[0]] = jnp.asarray(apply_transform(np.asarray(v), hit[1]))
    want = {p for p in flatten({h: base_params[h] for h in use.head})}
    if flat and set(flat) != want:
        errors.append(f"head keys {sorted(flat)} != the model's {sorted(want)}")
    for p, v in flat.items():
        ref = flatten(base_params).get(p)
        if ref is not None and tuple(ref.shape) != tuple(v.shape):
            errors.append(f"{p}: shape {tuple(v.shape)} in the checkpoint, {tuple(ref.shape)} in the model")
    collect_errors(errors, f"{path}")
    out["head"] = unflatten(flat) if flat else {h: base_params[h] for h in use.head}
    return out


# ---- interpretability (vis_utils.ClusterVisualizer) -------------------------------------

def cluster_maps(module, use: GiftUse, trainable: Mapping, base_params: Mapping, pixel_values,
                 layer: int, rules: Optional[Sequence[Rule]] = None, image_size=None,
                 threshold: float = 0.5, num_prefix_tokens: int = 1) -> dict:
    """GIFT's r token-clustering heads over ViT patch tokens, as maps over the image.

    For the targeted projection of `layer` (weights W [D_out, D_in]), C = W phi [D_out, r];
    its r columns score the layer's output tokens Y [N, D_out]: S = C^T Y^T [r, N], reshaped
    to the patch grid, bilinearly resized to the image, min-max normalised per map, and values
    below `threshold` zeroed. "pre" uses the frozen path's output (x W^T + b), "post" the
    full output (with GIFT's residual).

    Args:
      pixel_values: [B, C, H, W]. layer: encoder layer index.
      num_prefix_tokens: tokens before the patches (ViT's CLS) that are dropped.
    Returns:
      {"pre": [B, r, H, W], "post": [B, r, H, W], "scores_pre"/"scores_post": [B, r, h, w]}.
    """
    path = _layer_path(use, base_params, layer, rules)
    node = base_params
    for part in path.split("/"):
        node = node[part]
    kernel, bias = node["kernel"], node.get("bias")
    variables_ = variables(use, trainable, base_params, rules)
    captured = {}

    def grab(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if "/".join(context.module.path) == path and context.method_name == "__call__":
            captured["x"], captured["y"] = args[0], out
        return out

    with nn.intercept_methods(grab):
        module.apply(variables_, jnp.asarray(pixel_values))
    if "x" not in captured:
        raise GmemError(f"cluster_maps: the model never called {path}")
    x, y_post = captured["x"], captured["y"]
    y_pre = x @ kernel + (0 if bias is None else bias)
    group = "shared_projection" if use.spec.share_projections else _target_of(use, base_params, path, rules)
    c = kernel.T @ trainable["gift"][group]["phi"]                    # W phi: [D_out, r]
    if "phi_bias" in trainable["gift"][group]:
        c = c + trainable["gift"][group]["phi_bias"]
    b = x.shape[0]
    hw = pixel_values.shape[-2:] if image_size is None else tuple(image_size)
    out = {}
    for name, y in (("pre", y_pre), ("post", y_post)):
        s = jnp.einsum("bnd,dr->brn", y[:, num_prefix_tokens:], c)   # [B, r, N]
        n = s.shape[-1]
        g = int(round(n ** 0.5))
        if g * g != n:
            raise GmemError(f"cluster_maps: {n} patch tokens do not form a square grid")
        s = s.reshape(b, -1, g, g)
        up = jax.image.resize(s, s.shape[:2] + tuple(hw), method="bilinear")
        lo = up.min(axis=(-2, -1), keepdims=True)
        hi = up.max(axis=(-2, -1), keepdims=True)
        m = (up - lo) / jnp.maximum(hi - lo, 1e-12)
        out[name] = jnp.where(m < threshold, 0.0, m)
        out["scores_" + name] = s
    return out


def _layer_path(use, base_params, layer, rules) -> str:
    paths = [p for ps in placements(use.spec, base_params, rules).values() for p in ps]
    hits = [p for p in paths if layer_index(hf_names(p, rules)[0]) == layer]
    if not hits:
        layers = sorted({layer_index(hf_names(p, rules)[0]) for p in paths})
        raise GmemError(f"cluster_maps: layer={layer} has no GIFT target; targeted layers: {layers}")
    return hits[0]


def _target_of(use, base_params, path, rules) -> str:
    for t, ps in placements(use.spec, base_params, rules).items():
        if path in ps:
            return t
    raise GmemError(f"{path}: not a GIFT target")  # unreachable: path came from placements
