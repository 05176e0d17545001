"""AdapterSpec and the functions that place adapter trees on a frozen base (see __init__)."""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence, Union

import jax
import numpy as np

from gmem.adapters import gift as _gift
from gmem.adapters import lora as _lora
from gmem.adapters.targets import projection_paths, resolve_targets, _unbox
from gmem.errors import GmemError, collect_errors
from gmem.hf.keymap import Rule
from gmem.tree import flatten, unflatten
from gmem.nn.projection import GIFT_ACT_NAMES


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
    """One named adapter set.

    Args:
      kind: "lora" or "gift".
      targets: tuple of target strings ("q_proj", "attention.self.query", "attn:proj",
        "re:<regex>", "all-linear"), or one str = a regex over the whole module name (PEFT).
      rank: r.
      alpha, dropout, use_rslora: LoRA only (scale alpha/r, or alpha/sqrt(r) with rsLoRA).
      layers_to_transform: None, an int or a tuple of layer indices.
      name: key of this set in init_adapters' result; sets on one base need distinct names.
      share_projections, gift_act, in_projection_bias, out_projection_bias, block_type: GIFT
        only (one pair for all targets; simple_block activation on W phi; biases of phi / psi).
    """

    kind: str = "lora"
    targets: Union[tuple, str] = ("q_proj", "v_proj")
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    use_rslora: bool = False
    layers_to_transform: Optional[tuple] = None
    name: str = "default"
    share_projections: bool = False
    gift_act: str = "identity"
    in_projection_bias: bool = False
    out_projection_bias: bool = False
    block_type: str = "simple_block"

    def __post_init__(self):
        # Lists from YAML become tuples so the spec stays hashable (jit static args).
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))
        if isinstance(self.layers_to_transform, list):
            object.__setattr__(self, "layers_to_transform", tuple(self.layers_to_transform))
        w = f"adapter {self.name!r}"
        errors = []
        if self.kind not in ("lora", "gift"):
            errors.append(f"kind={self.kind!r} (use 'lora' or 'gift')")
        if not isinstance(self.rank, int) or self.rank < 1:
            errors.append(f"rank={self.rank!r} (a positive int)")
        if not 0.0 <= float(self.dropout) < 1.0:
            errors.append(f"dropout={self.dropout!r} (in [0, 1))")
        if self.gift_act == "softmax":
            errors.append(f"gift_act='softmax': {_gift.SOFTMAX_NOTE}")
        elif self.gift_act not in GIFT_ACT_NAMES:
            errors.append(f"gift_act={self.gift_act!r} (one of {list(GIFT_ACT_NAMES)})")
        if self.block_type != "simple_block":
            errors.append(f"block_type={self.block_type!r}: gmem builds GIFT's default "
                          "'simple_block' only (the others are experimental upstream)")
        if not self.targets:
            errors.append("targets is empty")
        collect_errors(errors, w)

    @property
    def scale(self) -> float:
        return _lora.lora_scale(self.rank, self.alpha, self.use_rslora)


Specs = Union[AdapterSpec, Sequence[AdapterSpec]]


def _specs(specs: Specs) -> list[AdapterSpec]:
    specs = [specs] if isinstance(specs, AdapterSpec) else list(specs)
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise GmemError(f"adapter specs: names {dup} used twice; give each set its own name")
    return specs


def placements(spec: AdapterSpec, base_params, rules: Optional[Sequence[Rule]] = None
               ) -> dict[str, list[str]]:
    """{target: [module paths]} for one spec over a base tree (errors list existing names)."""
    return resolve_targets(spec.targets, base_params, spec.layers_to_transform, rules,
                           where=f"adapter {spec.name!r} targets")


def init_adapters(specs: Specs, base_params, rng: jax.Array,
                  rules: Optional[Sequence[Rule]] = None) -> dict[str, dict]:
    """Fresh trainable trees, {spec.name: tree}. LoRA trees mirror the base module paths;
    GIFT trees are {target or "shared_projection": {"phi", "psi", ...}}."""
    specs = _specs(specs)
    shapes = projection_paths(base_params)
    out = {}
    for i, spec in enumerate(specs):
        key = jax.random.fold_in(rng, i)
        groups = placements(spec, base_params, rules)
        if spec.kind == "lora":
            paths = [p for ps in groups.values() for p in ps]
            out[spec.name] = unflatten_modules(_lora.init_lora(spec, {p: shapes[p] for p in paths}, key))
        else:
            out[spec.name] = _gift.init_gift(spec, groups, shapes, key)
    return out


def _tree_for(spec: AdapterSpec, trainable, n_specs: int):
    if isinstance(trainable, Mapping) and spec.name in trainable and (
            n_specs > 1 or _looks_like_sets(trainable)):
        return trainable[spec.name]
    if n_specs == 1:
        return trainable
    raise GmemError(f"adapter {spec.name!r}: trainable trees have keys {sorted(trainable)}; "
                    "pass the {name: tree} dict that init_adapters returned")


def _looks_like_sets(trainable: Mapping) -> bool:
    # {name: tree} (init_adapters' result) vs a bare tree: a bare LoRA tree's values are module
    # dicts, a bare GIFT tree's values hold "phi"; a set dict's values are whole trees.
    return not any(isinstance(v, Mapping) and "phi" in v for v in trainable.values())


def module_entries(specs: Specs, trainable, base_params=None,
                   rules: Optional[Sequence[Rule]] = None) -> dict[str, dict]:
    """{module path: hook entry} for every module any of the specs touches."""
    specs = _specs(specs)
    out: dict[str, dict] = {}
    owner: dict[tuple[str, str], str] = {}
    for spec in specs:
        tree = _tree_for(spec, trainable, len(specs))
        if spec.kind == "lora":
            entries = _lora.lora_entries(spec, flatten_modules(tree))
        else:
            if base_params is None:
                raise GmemError(f"adapter {spec.name!r} (GIFT): pass base_params so the shared "
                                "projections can be placed on every targeted module")
            entries = _gift.gift_entries(spec, tree, placements(spec, base_params, rules))
        for path, e in entries.items():
            if (path, spec.kind) in owner:
                raise GmemError(f"adapter sets {owner[(path, spec.kind)]!r} and {spec.name!r} "
                                f"both put {spec.kind} on {path}; pass them in separate calls")
            owner[(path, spec.kind)] = spec.name
            out.setdefault(path, {}).update(e)
    return out


def adapter_collection(specs: Specs, trainable, base_params=None,
                       rules: Optional[Sequence[Rule]] = None) -> dict:
    """The "adapter" variable collection for `module.apply`: nested by module path."""
    return unflatten_modules(module_entries(specs, trainable, base_params, rules))


def merge(specs: Specs, base_params, trainable, rules: Optional[Sequence[Rule]] = None):
    """Fold adapters into the kernels: K' = K + sum of deltas, each computed from the frozen K
    (so LoRA and GIFT on one module add). Returns a new tree (plain arrays, same nesting)."""
    return _fold(specs, base_params, trainable, rules, sign=+1)


def unmerge(specs: Specs, merged_params, trainable, rules: Optional[Sequence[Rule]] = None):
    """Inverse of merge: subtract LoRA deltas, then invert GIFT's K' = K + dK(K)."""
    return _fold(specs, merged_params, trainable, rules, sign=-1)


def _fold(specs, base_params, trainable, rules, sign):
    specs = _specs(specs)
    wrapped = isinstance(base_params, Mapping) and set(base_params) == {"params"}
    flat = flatten(_unbox(base_params))
    acts = {}
    for spec in specs:
        if spec.kind == "gift":
            for ps in placements(spec, base_params, rules).values():
                acts.update({p: spec.gift_act for p in ps})
    entries = module_entries(specs, trainable, base_params, rules)
    errors = []
    for path, e in entries.items():
        kpath = path + "/kernel"
        if kpath not in flat:
            errors.append(f"{path}: no such projection in the base tree")
            continue
        k = np.asarray(flat[kpath], np.float64)
        if sign > 0:
            delta = np.zeros_like(k)
            if "lora_A" in e:
                delta += _lora.lora_delta_kernel(e)
            if "gift_psi" in e:
                delta += _gift.gift_delta_kernel(k, e, acts[path])
            new = k + delta
        else:
            new = k - _lora.lora_delta_kernel(e) if "lora_A" in e else k
            if "gift_psi" in e:
                new = _gift.gift_unmerge_kernel(new, e, acts[path], path)
        flat[kpath] = jax.numpy.asarray(new.astype(np.asarray(flat[kpath]).dtype))
    collect_errors(errors, "merge")
    tree = unflatten(flat)
    return {"params": tree} if wrapped else tree


def count_params(trainable) -> int:
    """Number of trainable scalars in a tree (or in a {name: tree} dict)."""
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(trainable)))


def flatten_modules(tree: Mapping) -> dict[str, dict]:
    """Nested adapter tree -> {module path: {leaf name: array}} (leaves sit one level down)."""
    out: dict[str, dict] = {}
    for path, leaf in flatten(dict(tree)).items():
        mod, _, leaf_name = path.rpartition("/")
        out.setdefault(mod, {})[leaf_name] = leaf
    return out


def unflatten_modules(flat: Mapping[str, dict]) -> dict:
    return unflatten({f"{m}/{k}": v for m, e in flat.items() for k, v in e.items()})


def specs_from_config(entries) -> list[AdapterSpec]:
    """AdapterSpecs from the config's `adapters:` entries (gmem.config.AdapterConfig: every
    field of one is a field of the other)."""
    names = [f.name for f in dataclasses.fields(AdapterSpec)]
    return [AdapterSpec(**{k: getattr(a, k) for k in names if hasattr(a, k)}) for a in entries]
