"""GIFT: W' = W (I + phi psi), weight residuals generated from the frozen weights themselves.

One (phi, psi) pair per target type, shared by every layer where that type occurs
(share_projections=True: one pair, key "shared_projection", for every target). No LoRA-style
scaling. Trainable tree (shapes for a target type whose kernels are [D_in, D_out]):

    {"q_proj": {"phi": [D_in, r], "psi": [r, D_in],
                "phi_bias": [r] (in_projection_bias), "psi_bias": [D_in] (out_projection_bias)}}

phi is the original's in_projections[t].weight transposed (A^T), psi is
out_projections[t].weight transposed (B^T). The hypernet is the original's default
'simple_block': an elementwise activation on C = W phi (identity by default), no parameters.
`adapter_collection` broadcasts each pair to every module of its type; gradients from all
layers sum into the one shared pair.

Original files (bottom of this module): read_gift_file reads a checkpoint and the GIFT settings
stored with it, gift_spec_from_checkpoint turns them into an AdapterSpec, load_gift_checkpoint
refuses a spec that contradicts them; original_act says what an activation name meant there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import warnings
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import erf

from gmem.errors import GmemError, collect_errors
from gmem.hf.readers import torch_load_checkpoint
from gmem.nn.projection import GIFT_ACT_NAMES

SHARED = "shared_projection"

def _sig(h):
    return 1.0 / (1.0 + np.exp(-h))


_C = math.sqrt(2.0 / math.pi)
# float64 numpy forms of the simple_block activations and their derivatives (merge/unmerge).
_NP_ACTS = {
    "identity": (lambda h: h, lambda h: np.ones_like(h)),
    "gelu": (lambda h: 0.5 * h * (1.0 + erf(h / math.sqrt(2.0))),
             lambda h: 0.5 * (1.0 + erf(h / math.sqrt(2.0))) + h * np.exp(-0.5 * h * h) / math.sqrt(2 * math.pi)),
    "gelu_tanh": (lambda h: 0.5 * h * (1.0 + np.tanh(_C * (h + 0.044715 * h ** 3))),
                  lambda h: 0.5 * (1.0 + np.tanh(_C * (h + 0.044715 * h ** 3)))
                  + 0.5 * h * (1.0 - np.tanh(_C * (h + 0.044715 * h ** 3)) ** 2)
                  * _C * (1.0 + 3 * 0.044715 * h * h)),
    "relu": (lambda h: np.maximum(h, 0.0), lambda h: (h > 0).astype(h.dtype)),
    "tanh": (np.tanh, lambda h: 1.0 - np.tanh(h) ** 2),
    "silu": (lambda h: h * _sig(h), lambda h: _sig(h) * (1.0 + h * (1.0 - _sig(h)))),
    "sigmoid": (_sig, lambda h: _sig(h) * (1.0 - _sig(h))),
    "standard_sigmoid": (_sig, lambda h: _sig(h) * (1.0 - _sig(h))),
    "hsigmoid": (lambda h: np.clip(h + 3.0, 0.0, 6.0) / 6.0,
                 lambda h: ((h > -3.0) & (h < 3.0)).astype(h.dtype) / 6.0),
}


def group_key(spec, target: str) -> str:
    return SHARED if spec.share_projections else target


def init_gift(spec, groups: dict[str, list[str]], shapes: dict[str, tuple[int, int]],
              rng: jax.Array) -> dict[str, dict]:
    """One pair per group key. phi (and its bias) ~ U(+-1/sqrt(D_in)) as torch nn.Linear
    initialises the original's in_projection; psi and its bias are zero (zero_init=True)."""
    d_in = _group_dims(spec, groups, shapes)
    out = {}
    keys = jax.random.split(rng, max(len(d_in), 1))
    for key, g in zip(keys, sorted(d_in)):
        n = d_in[g]
        bound = 1.0 / math.sqrt(n)
        k1, k2 = jax.random.split(key)
        e = {"phi": jax.random.uniform(k1, (n, spec.rank), jnp.float32, -bound, bound),
             "psi": jnp.zeros((spec.rank, n), jnp.float32)}
        if spec.in_projection_bias:
            e["phi_bias"] = jax.random.uniform(k2, (spec.rank,), jnp.float32, -bound, bound)
        if spec.out_projection_bias:
            e["psi_bias"] = jnp.zeros((n,), jnp.float32)
        out[g] = e
    return out


def _group_dims(spec, groups, shapes) -> dict[str, int]:
    """Each group's D_in; every module sharing a pair must have the same D_in."""
    dims: dict[str, dict[int, list[str]]] = {}
    for t, paths in groups.items():
        for p in paths:
            dims.setdefault(group_key(spec, t), {}).setdefault(shapes[p][0], []).append(p)
    errors = [f"{g}: modules differ in input width {sorted(d)} ({ {k: v[0] for k, v in d.items()} })"
              for g, d in dims.items() if len(d) > 1]
    collect_errors(errors, f"adapter {spec.name!r} (GIFT): shared projections need one D_in")
    return {g: next(iter(d)) for g, d in dims.items()}


def gift_entries(spec, tree: Mapping, groups: dict[str, list[str]]) -> dict[str, dict]:
    """Broadcast each shared pair to its modules: {module path: hook entry}."""
    act = GIFT_ACT_NAMES.index(spec.gift_act)
    out = {}
    for t, paths in groups.items():
        g = group_key(spec, t)
        if g not in tree:
            raise GmemError(f"adapter {spec.name!r} (GIFT): trainable tree has no pair {g!r}; "
                            f"it has {sorted(tree)}")
        e = tree[g]
        entry = {"gift_phi": e["phi"], "gift_psi": e["psi"]}
        if "phi_bias" in e:
            entry["gift_phi_bias"] = e["phi_bias"]
        if "psi_bias" in e:
            entry["gift_psi_bias"] = e["psi_bias"]
        if act != 0:
            entry["gift_act"] = jnp.asarray(act, jnp.int32)
        for p in paths:
            out[p] = entry
    return out


def gift_delta_kernel(kernel, entry: dict, act: str) -> np.ndarray:
    """dK = (dW)^T = psi^T act(K^T phi + a)^T + c 1^T, shape [D_in, D_out] (float64)."""
    k = np.asarray(kernel, np.float64)
    c = k.T @ np.asarray(entry["gift_phi"], np.float64)
    if "gift_phi_bias" in entry:
        c = c + np.asarray(entry["gift_phi_bias"], np.float64)
    d = np.asarray(entry["gift_psi"], np.float64).T @ _NP_ACTS[act][0](c).T
    if "gift_psi_bias" in entry:
        d = d + np.asarray(entry["gift_psi_bias"], np.float64)[:, None]
    return d


def gift_unmerge_kernel(merged, entry: dict, act: str, where: str) -> np.ndarray:
    """Invert K' = K + dK(K). Identity activation: dK = M K + v 1^T with M = psi^T phi^T,
    so K = (I + M)^{-1} (K' - v 1^T). Other activations: Newton on W phi (below)."""
    km = np.asarray(merged, np.float64)
    if act == "identity":
        phi = np.asarray(entry["gift_phi"], np.float64)
        psi = np.asarray(entry["gift_psi"], np.float64)
        v = np.zeros(km.shape[0])
        if "gift_phi_bias" in entry:
            v = v + psi.T @ np.asarray(entry["gift_phi_bias"], np.float64)
        if "gift_psi_bias" in entry:
            v = v + np.asarray(entry["gift_psi_bias"], np.float64)
        return np.linalg.solve(np.eye(km.shape[0]) + psi.T @ phi.T, km - v[:, None])
    # dK depends on K only through U = K^T phi [D_out, r]. From K = K' - psi^T act(U + a)^T
    # - c 1^T: U = B - act(U + a) M with M = psi phi [r, r], B = K'^T phi - 1 c^T phi: one
    # r-dimensional equation per output row, solved by Newton (batched r x r systems).
    f, df = _NP_ACTS[act]
    phi = np.asarray(entry["gift_phi"], np.float64)
    psi = np.asarray(entry["gift_psi"], np.float64)
    a = np.asarray(entry.get("gift_phi_bias", np.zeros(phi.shape[1])), np.float64)
    c = np.asarray(entry.get("gift_psi_bias", np.zeros(phi.shape[0])), np.float64)
    m = psi @ phi
    b = km.T @ phi - (c @ phi)[None, :]
    u = b.copy()
    eye = np.eye(m.shape[0])
    for _ in range(50):
        g = u + f(u + a) @ m - b                                  # [D_out, r]
        jac = eye[None] + m.T[None] * df(u + a)[:, None, :]       # d g_j / d u_i per row
        step = np.linalg.solve(jac, g[..., None])[..., 0]
        u = u - step
        if np.max(np.abs(step)) < 1e-13 * max(1.0, np.max(np.abs(u))):
            break
    k = km - psi.T @ f(u + a).T - c[:, None]
    err = np.max(np.abs(k + gift_delta_kernel(k, entry, act) - km))
    if not np.isfinite(err) or err > 1e-8 * max(1.0, np.max(np.abs(km))):
        raise GmemError(f"{where}: GIFT unmerge did not converge (act={act!r}, residual "
                        f"{err:.2e}); keep the base weights instead of unmerging")
    return k


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
SOFTMAX_NOTE = ("the original's 'softmax' is nn.Softmax() without a dim, applied to the "
                "[1, D_out, r] tensor its hypernet passes: torch then takes dim 0, of size 1, so "
                "the block outputs the constant 1 and dW no longer depends on W; gmem does not "
                "build it")
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
        from safetensors.numpy import load_file
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
    from gmem.adapters.core import AdapterSpec

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
