"""Which projections an adapter touches: targets written as users write them.

Candidates are the linear projections of a base tree: every node holding a 2-D "kernel"
(gmem.nn.projection.Projection). Each gets an HF-style module name, from the family key map
by the naming convention every gmem family follows (a list entry `layers_3` is HF's
`layers.3`: `model/layers_3/self_attn/q_proj` -> `model.layers.3.self_attn.q_proj`), plus
every other spelling the family key map knows when one is given. A module matches a target
when any of its spellings does, matched as PEFT and GIFT match them:

  "q_proj", "self_attn.q_proj", "attention.self.query"   the name ends with "." + target
                                                          (or equals it), as in PEFT
  "attn:proj"      GIFT's notation: ':' stands for '.' (ModuleDict keys cannot hold dots).
                   timm names (attn:proj, qkv / attn:qkv, mlp:fc1, mlp:fc2) also match HF
                   ViT/BERT modules through ALIASES, since gmem models carry HF names
  "re:<regex>"     the regex must match the whole HF-style name (re.fullmatch)
  a bare string    (AdapterSpec.targets="...") is one regex, as PEFT treats a str
  "all-linear"     every projection except the output head (lm_head, classifier, head)

layers_to_transform keeps only modules whose layer index (the first ".<digits>." in the name,
PEFT's rule) is listed. A target that matches nothing raises GmemError with the names present.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional, Sequence

import flax.linen as nn

from gmem.errors import GmemError
from gmem.hf.keymap import Rule, gmem_to_hf, hf_to_gmem

# timm module names (GIFT's vision configs) -> regexes over HF ViT / BERT module names.
from gmem.tree import flatten

# timm module names (GIFT's vision configs) -> regexes over HF ViT / BERT module names.
# timm's fused attn.qkv (GIFT target "qkv" or "attn:qkv") is gmem's three q, k, v projections:
# one GIFT pair on them computes the fused layer's residual, since dW = W phi psi acts row-wise.
_QKV = r".*\.attention\.(attention|self)\.(query|key|value)|.*\.attention\.[qkv]_proj"
ALIASES = {
    "attn.proj": r".*\.attention\.(output\.dense|o_proj)",
    "attn.qkv": _QKV,
    "qkv": _QKV,
    "mlp.fc1": r".*\.intermediate\.dense",
    "mlp.fc2": r".*\.layer\.\d+\.output\.dense",
}
_HEADS = ("lm_head", "classifier", "head", "score")
_LIST_ENTRY = re.compile(r"^(.*)_(\d+)$")
_LAYER_INDEX = re.compile(r".*?\.(\d+)\.")


def projection_paths(base_params: dict) -> dict[str, tuple[int, int]]:
    """Module paths 'a/b/c' of every 2-D kernel in a base tree -> kernel shape (D_in, D_out)."""
    flat = flatten(_unbox(base_params))
    out = {}
    for path, leaf in flat.items():
        if path.endswith("/kernel") and getattr(leaf, "ndim", 0) == 2:
            out[path[: -len("/kernel")]] = tuple(leaf.shape)
    return out


def _unbox(tree):
    # Accept a {"params": ...} variables dict or flax Partitioned boxes.
    if isinstance(tree, dict) and set(tree) == {"params"}:
        tree = tree["params"]
    try:
        return nn.unbox(tree)
    except Exception:  # noqa: BLE001 - plain dicts need no unboxing
        return tree


def hf_names(path: str, rules: Optional[Sequence[Rule]] = None) -> list[str]:
    """Every HF module name of a gmem module path: the live-module name by gmem's naming
    convention first (`layers_3` -> `layers.3`; gmem modules carry transformers' module
    names), then any other spelling the key map knows (e.g. ViT's file names
    `encoder.layer.3.attention.output.dense` next to v5's `layers.3.attention.o_proj`)."""
    parts = []
    for seg in path.split("/"):
        m = _LIST_ENTRY.match(seg)
        parts.extend([m.group(1), m.group(2)] if m else [seg])
    names = [".".join(parts)]
    for rule in rules or ():
        got = gmem_to_hf(path + "/kernel", (rule,))
        if got is not None and got[0].endswith(".weight") and got[0][:-7] not in names:
            names.append(got[0][: -len(".weight")])
    return names


def hf_name(path: str, rules: Optional[Sequence[Rule]] = None) -> str:
    """gmem module path -> its HF module name (no '.weight'): the convention's name when the
    key map agrees with it (or has no rule), else the key map's first spelling."""
    names = hf_names(path, rules)
    if not rules or len(names) == 1 or _known(names[0], path, rules):
        return names[0]
    return names[1]


def _known(name: str, path: str, rules: Sequence[Rule]) -> bool:
    got = hf_to_gmem(name + ".weight", rules)
    return got is not None and got[0] == path + "/kernel"


def layer_index(name: str) -> Optional[int]:
    m = _LAYER_INDEX.match(name)
    return int(m.group(1)) if m else None


def target_matches(target: str, name: str) -> bool:
    """Does HF-style module `name` match one user target string?"""
    if target.startswith("re:"):
        return re.fullmatch(target[3:], name) is not None
    if target == "all-linear":
        return name.split(".")[-1] not in _HEADS
    t = target.replace(":", ".").replace("/", ".")
    if name == t or name.endswith("." + t):
        return True
    alias = ALIASES.get(t)
    return alias is not None and re.fullmatch(alias, name) is not None


def resolve_targets(targets, base_params: dict, layers_to_transform=None,
                    rules: Optional[Sequence[Rule]] = None,
                    where: str = "adapter targets") -> dict[str, list[str]]:
    """Match targets against a base tree.

    Args:
      targets: a tuple of target strings, or one str (a PEFT-style regex over the whole name).
      layers_to_transform: None, an int, or a sequence of ints.
    Returns:
      {target string: [module paths it owns]}; a module belongs to the first target (in the
      order given) that matches it, so every path appears once.
    Raises:
      GmemError naming every target that matches nothing, with the module names present.
    """
    if isinstance(targets, str):
        targets = ("re:" + targets,)
    targets = tuple(dict.fromkeys(targets))  # dedupe, keep order
    if not targets:
        raise GmemError(f"{where}: no targets given")
    paths = projection_paths(base_params)
    keep_layers = _layers(layers_to_transform)
    names = {p: hf_names(p, rules) for p in paths}
    out: dict[str, list[str]] = {t: [] for t in targets}
    for path, spellings in names.items():
        if keep_layers is not None and layer_index(spellings[0]) not in keep_layers:
            continue
        for t in targets:
            if any(target_matches(t, n) for n in spellings):
                out[t].append(path)
                break
    missing = [t for t, ps in out.items() if not ps]
    if missing:
        existing = sorted({_short(n) for ns in names.values() for n in ns})
        layer_note = f" in layers {sorted(keep_layers)}" if keep_layers is not None else ""
        raise GmemError(f"{where}: target(s) {missing} match no linear module{layer_note}; "
                        f"module names present: {existing}")
    return out


def _short(name: str) -> str:
    # 'model.layers.3.self_attn.q_proj' -> 'self_attn.q_proj' (the part users write)
    parts = name.split(".")
    idx = [i for i, p in enumerate(parts) if p.isdigit()]
    return ".".join(parts[idx[-1] + 1:]) if idx else name


def _layers(spec) -> Optional[set[int]]:
    if spec is None:
        return None
    if isinstance(spec, int):
        return {spec}
    if isinstance(spec, Iterable):
        return {int(i) for i in spec}
    raise GmemError(f"layers_to_transform: expected an int or a list of ints, got {spec!r}")
