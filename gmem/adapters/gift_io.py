"""The original GIFT's files: its state-dict layout (from_gift_state_dict / to_gift_state_dict),
its checkpoints and the GIFT settings stored with them. read_gift_file reads a checkpoint and
those settings, gift_spec_from_checkpoint turns them into an AdapterSpec, load_gift_checkpoint
refuses a spec that contradicts them; original_act says what an activation name meant there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import warnings
from typing import Mapping, Optional

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from gmem.adapters.core import AdapterSpec
from gmem.adapters.gift import SHARED, SOFTMAX_NOTE
from gmem.errors import GmemError, collect_errors
from gmem.hf.readers import torch_load_checkpoint

# ---- the original GIFT checkpoint layout -------------------------------------------------

def from_gift_state_dict(state: Mapping, spec) -> tuple[dict, dict]:
    """Original GIFT state dict -> (trainable tree for `spec`, the keys left over).

    Reads `in_projections.<target>.weight [r, D_in]` (+ `.bias [r]`) and
    `out_projections.<target>.weight [D_in, r]` (+ `.bias [D_in]`), <target> as written in the
    original config ('q_proj', 'attn:proj', or 'shared_projection'). Left over: everything
    else (e.g. `backbone.head.weight`), for the caller to map (systems.gift does the head).
    `hypernets.*` keys mean a hypernet other than simple_block, which gmem does not build.
    """
    arrays = {k: _np(v) for k, v in state.items()}
    tree: dict = {}
    rest = {}
    errors = []
    for k, v in arrays.items():
        parts = k.split(".")
        if len(parts) == 3 and parts[0] in ("in_projections", "out_projections"):
            side, tgt, kind = parts
            name = ("phi" if side == "in_projections" else "psi") + ("_bias" if kind == "bias" else "")
            tree.setdefault(tgt, {})[name] = v.T if kind == "weight" else v
        elif k.startswith("hypernets."):
            errors.append(f"{k}: hypernet parameters (block_type other than simple_block)")
        else:
            rest[k] = v
    for tgt, e in tree.items():
        if "phi" not in e or "psi" not in e:
            errors.append(f"{tgt}: needs both in_projections and out_projections weights")
        elif e["phi"].shape[1] != spec.rank or e["psi"].shape[0] != spec.rank:
            errors.append(f"{tgt}: rank {e['phi'].shape[1]} in the checkpoint, spec.rank={spec.rank}")
        if spec.in_projection_bias != ("phi_bias" in e):
            errors.append(f"{tgt}: in_projections bias present={'phi_bias' in e}, "
                          f"spec.in_projection_bias={spec.in_projection_bias}")
        if spec.out_projection_bias != ("psi_bias" in e):
            errors.append(f"{tgt}: out_projections bias present={'psi_bias' in e}, "
                          f"spec.out_projection_bias={spec.out_projection_bias}")
    want = {SHARED} if spec.share_projections else {t.replace(".", ":") for t in _target_list(spec)}
    if not tree:
        errors.append("no in_projections.*/out_projections.* keys found")
    elif set(tree) != want:
        errors.append(f"projection keys {sorted(tree)} != the spec's {sorted(want)}")
    collect_errors(errors, f"GIFT checkpoint for adapter {spec.name!r}")
    return {k: {n: jnp.asarray(a, jnp.float32) for n, a in e.items()} for k, e in tree.items()}, rest


def to_gift_state_dict(tree: Mapping) -> dict[str, np.ndarray]:
    """Trainable GIFT tree -> the original's key layout (torch Linear [out, in] weights)."""
    out = {}
    for tgt, e in tree.items():
        out[f"in_projections.{tgt}.weight"] = np.ascontiguousarray(np.asarray(e["phi"]).T)
        out[f"out_projections.{tgt}.weight"] = np.ascontiguousarray(np.asarray(e["psi"]).T)
        if "phi_bias" in e:
            out[f"in_projections.{tgt}.bias"] = np.asarray(e["phi_bias"])
        if "psi_bias" in e:
            out[f"out_projections.{tgt}.bias"] = np.asarray(e["psi_bias"])
    return out


# ---- original files: the weights, and the GIFT settings written beside them ---------------
#
# The original writes its GIFT settings in one of two places:
#   vision (timm's train.py)  the checkpoint itself: {"state_dict", "optimizer", "args", ...}
#                             with `args` an argparse.Namespace of the command line, GIFT fields
#                             named gift_* (older files: hypernet_*, the rank as
#                             hypernet_embed_dim; `args.rank` there is the distributed rank)
#   causal LM (save())        <dir>/checkpoint.pth beside <dir>/config/config.json, the
#                             GIFTConfig (model_type "gift")
# A bare state dict (GLUE) states nothing. read_gift_file reads both forms into AdapterSpec
# fields; load_gift_checkpoint refuses a spec that disagrees with them and
# gift_spec_from_checkpoint builds the spec from them.

# The original's simple_block activations (its ACTIVATION_LAYERS table) as gmem gift_act names.
# SimpleBlock looks act_layer up there and falls back to nn.Identity, so every other name
# ("identity", but also "relu", "tanh", "silu", "gelu_tanh") ran as identity.
ORIGINAL_ACTS = {"gelu": "gelu", "sigmoid": "sigmoid", "standard_sigmoid": "standard_sigmoid",
                 "hsigmoid": "hsigmoid"}
# The layer-list names after which gmem's models carry their one layer index
# (model.layers.3..., encoder.layer.3..., transformer.h.3..., blocks.3...).
_LAYER_LISTS = ("layers", "layer", "h", "blocks")


def original_act(name: str) -> str:
    """The gmem gift_act that computes what the original's act_layer=`name` computed."""
    if name == "softmax":
        raise GmemError(f"act_layer='softmax': {SOFTMAX_NOTE}")
    return ORIGINAL_ACTS.get(str(name), "identity")


@dataclasses.dataclass(frozen=True)
class GiftFile:
    """An original GIFT checkpoint as read.

    state: its state dict (projections, head keys, ...).
    settings: the AdapterSpec fields it states, in gmem's terms (rank, targets,
      share_projections, gift_act, in_projection_bias, out_projection_bias,
      layers_to_transform); {} for a bare state dict.
    source: where the settings were read (the checkpoint's args, or a config.json), or None.
    act_layer: the original's activation name as written (settings["gift_act"] is what it ran).
    dtype: the original's GIFT dtype when stated ("float32", "bfloat16", ...).
    backbone: the timm model name the vision scripts record (args.model), else None.
    notes: settings translated on the way in, one sentence each.
    """

    path: str
    state: dict
    settings: dict
    source: Optional[str] = None
    act_layer: Optional[str] = None
    dtype: Optional[str] = None
    backbone: Optional[str] = None
    notes: tuple = ()


def read_gift_file(path: str) -> GiftFile:
    """Read an original GIFT checkpoint (.pth / .pth.tar / .bin through
    gmem.hf.readers.torch_load_checkpoint: weights_only=True, argparse.Namespace allowed; or
    .safetensors) and the settings stored with it."""
    if not os.path.exists(path):
        raise GmemError(f"{path}: GIFT checkpoint not found")
    args = None
    if path.endswith(".safetensors"):
        state = load_file(path)
    else:
        state = torch_load_checkpoint(path)
        if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
            args = state.get("args")          # timm-style training checkpoint
            state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise GmemError(f"{path}: holds a {type(state).__name__}, not a state dict")
    cfg, source, backbone = None, None, None
    if args is not None:
        a = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
        cfg, source, backbone = _config_from_args(a, path), f"{path} (args)", a.get("model")
    if cfg is None:
        cfg, source = _config_beside(path)
    if cfg is None:
        return GiftFile(path, dict(state), {}, backbone=backbone)
    settings, act_layer, dtype, notes = _settings(cfg, source)
    return GiftFile(path, dict(state), settings, source, act_layer, dtype, backbone, notes)


def check_gift_settings(gf: GiftFile, spec) -> None:
    """One GmemError listing every setting of the file that `spec` contradicts."""
    errors = []
    for field, want in gf.settings.items():
        have = getattr(spec, field)
        if field == "targets":
            same = _norm_targets(have) == _norm_targets(want)
        elif field == "layers_to_transform":
            same = _norm_layers(have) == _norm_layers(want)
        else:
            same = have == want
        if not same:
            note = ""
            if field == "gift_act" and gf.act_layer not in (want, None):
                note = f" (act_layer={gf.act_layer!r}, which the original ran as {want!r})"
            errors.append(f"{field}: the file has {want!r}{note}, the spec {have!r}")
    collect_errors(errors, f"{gf.path}: adapter {spec.name!r} contradicts the GIFT settings in "
                           f"{gf.source} (gift_spec_from_checkpoint applies them)")


def gift_spec_from_checkpoint(path: str, **overrides):
    """The AdapterSpec an original GIFT checkpoint was trained with, from the settings stored
    with it (name "gift" unless overridden). Overrides may set what the file does not state;
    one that contradicts it is refused. Translated settings are reported as warnings."""
    gf = read_gift_file(path)
    if not gf.settings:
        raise GmemError(f"{path}: states no GIFT settings (no `args` in the checkpoint, no "
                        "config/config.json beside it); build the AdapterSpec yourself")
    spec = AdapterSpec(**{"kind": "gift", "name": "gift", **gf.settings, **overrides})
    check_gift_settings(gf, spec)
    for n in gf.notes:
        warnings.warn(f"{path}: {n}", stacklevel=2)
    return spec


def load_gift_checkpoint(path: str, spec) -> tuple[dict, dict]:
    """Read an original GIFT checkpoint and return from_gift_state_dict's (tree, leftover
    keys), after checking `spec` against the settings stored with the file (check_gift_settings)."""
    gf = read_gift_file(path)
    check_gift_settings(gf, spec)
    return from_gift_state_dict(gf.state, spec)


_MISSING = object()


def _arg(args: dict, name: str, default=_MISSING):
    for prefix in ("gift_", "hypernet_"):
        if prefix + name in args:
            return args[prefix + name]
    return default


def _config_from_args(args: dict, where: str) -> Optional[dict]:
    """The GIFTConfig the original's build_gift makes from a command line, or None when the
    args hold no GIFT fields."""
    method = args.get("method")
    if method not in (None, "gift"):
        raise GmemError(f"{where}: args.method={method!r}: not a GIFT checkpoint")
    rank = _arg(args, "rank", args.get("hypernet_embed_dim", _MISSING))
    targets = _arg(args, "target_modules", _MISSING)
    if rank is _MISSING and targets is _MISSING:
        return None
    targets = None if targets is _MISSING else targets
    enable = _arg(args, "enable_gift", None)
    enable_gift = ({"qkv": [k in enable for k in "qkv"]}
                   if enable is not None and targets and "qkv" in targets else None)
    return {
        "rank": 16 if rank is _MISSING else rank,
        "dtype": _arg(args, "dtype", "float32"),
        # build_gift keeps the block fields its block type takes: simple_block's act_layer
        "gift_parameters": {"block_type": _arg(args, "block_block_type", "simple_block"),
                            "act_layer": _arg(args, "block_act_layer", "identity")},
        "in_projection_bias": bool(_arg(args, "in_projection_bias", False)),
        "out_projection_bias": bool(_arg(args, "out_projection_bias", False)),
        "target_modules": targets,
        "enable_gift": enable_gift,
        "share_projections": bool(_arg(args, "share_projections", False)),
        "layers_to_transform": None,   # the scripts never pass one
        "layers_pattern": None,
    }


def _config_beside(path: str) -> tuple[Optional[dict], Optional[str]]:
    """The GIFTConfig JSON that GIFTWrapperForCausalLM.save writes beside checkpoint.pth."""
    d = os.path.dirname(os.path.abspath(path))
    for cand in (os.path.join(d, "config", "config.json"), os.path.join(d, "config.json")):
        if not os.path.isfile(cand):
            continue
        try:
            with open(cand) as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:
            raise GmemError(f"{cand}: not readable JSON ({e})") from None
        if isinstance(cfg, dict) and cfg.get("model_type") == "gift":
            return cfg, cand
    return None, None


def _settings(cfg: dict, where: str) -> tuple[dict, str, Optional[str], tuple]:
    """GIFTConfig fields -> (AdapterSpec fields, act_layer as written, dtype, notes)."""
    errors, notes = [], []
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        errors.append(f"target_modules={targets!r} is a string: the original loops over it "
                      "character by character")
        targets = []
    elif not targets:
        errors.append("target_modules is empty")
        targets = []
    else:
        targets = sorted(set(targets))               # GIFTConfig.validate sorts and dedupes
    params = cfg.get("gift_parameters") or {"block_type": "simple_block", "act_layer": "identity"}
    block = params.get("block_type", "simple_block")
    if block != "simple_block":
        errors.append(f"gift_parameters.block_type={block!r}: gmem builds simple_block only")
    act_layer = str(params.get("act_layer", "identity"))
    act = "identity"
    if act_layer == "softmax":
        errors.append(f"act_layer='softmax': {SOFTMAX_NOTE}")
    else:
        act = original_act(act_layer)
        if act_layer != act and act_layer != "identity":
            notes.append(f"act_layer={act_layer!r} is not an activation the original knows; it "
                         "ran as identity, and gmem applies identity")
    share = bool(cfg.get("share_projections", False))
    enable = cfg.get("enable_gift") or {}
    spec_targets = []
    for t in targets:
        flags = enable.get(t)
        if flags is None:
            spec_targets.append(t)
        elif t != "qkv" or len(flags) != 3:
            errors.append(f"enable_gift[{t!r}]={flags}: gmem reads the fused form only as target "
                          "'qkv' with three flags (q, k, v)")
        elif not share:
            errors.append(f"enable_gift[{t!r}]={flags} without share_projections: the original's "
                          "fused path calls a ModuleList and fails at its first forward, so no "
                          "checkpoint can come from it")
        else:
            picked = [n for n, f in zip(("q_proj", "k_proj", "v_proj"), flags) if f]
            spec_targets.extend(picked)
            notes.append(f"enable_gift qkv={list(flags)}: the shared pair on {picked} (gmem's ViT "
                         "keeps q, k and v as separate projections)")
    lt = cfg.get("layers_to_transform")
    layers = (int(lt),) if isinstance(lt, int) else (tuple(sorted({int(i) for i in lt})) or None) if lt else None
    lp = cfg.get("layers_pattern")
    patterns = [p for p in ([lp] if isinstance(lp, str) else list(lp or [])) if p]
    bad = [p for p in patterns if p not in _LAYER_LISTS]
    if layers is not None and bad:
        errors.append(f"layers_pattern={lp!r}: gmem takes a module's layer index from the first "
                      f"'.<digits>.' of its name, the index after {list(_LAYER_LISTS)} in gmem's "
                      "models; another pattern is not supported")
    dtype = cfg.get("dtype") if isinstance(cfg.get("dtype"), str) else None
    collect_errors(errors, f"{where}: GIFT settings gmem does not reproduce")
    settings = {"rank": int(cfg.get("rank", 16)), "targets": tuple(spec_targets),
                "share_projections": share, "gift_act": act,
                "in_projection_bias": bool(cfg.get("in_projection_bias", False)),
                "out_projection_bias": bool(cfg.get("out_projection_bias", False)),
                "layers_to_transform": layers}
    return settings, act_layer, dtype, tuple(notes)


def _norm_targets(t) -> frozenset:
    return frozenset(x.replace(".", ":") for x in ((t,) if isinstance(t, str) else t))


def _norm_layers(lt):
    if lt is None:
        return None
    s = frozenset((lt,) if isinstance(lt, int) else lt)
    return s or None

def _target_list(spec):
    return (spec.targets,) if isinstance(spec.targets, str) else spec.targets


def _np(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().float().cpu().numpy()
    return np.asarray(v, np.float32)
