"""Checks on the layers of a run config before and after they merge: old-layout keys, list
overrides past the end of a list, dtype names. Each problem is one GmemError line that says
what to write instead (gmem.config.load_config calls these)."""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig

from gmem.dtypes import DTYPE_NAMES
from gmem.errors import GmemError


def check_list_index(cfg, item: str, key: str) -> None:
    """`adapters.3.rank=4` on a one-entry list: say which entries exist and how to add one
    (OmegaConf would report 'Invalid type assigned: dict is not a subclass of AdapterConfig')."""
    node, done = cfg, []
    for part in key.split("."):
        if isinstance(node, ListConfig):
            if not part.lstrip("-").isdigit():
                return
            i = int(part)
            if not 0 <= i < len(node):
                name = ".".join(done)
                have = (f"{len(node)} entr{'y' if len(node) == 1 else 'ies'} ({name}.0"
                        + (f" to {name}.{len(node) - 1})" if len(node) > 1 else ")")) if len(node) else "no entries"
                raise GmemError(f"override {item!r}: {name} has {have}, so there is no {name}.{part}; "
                                f"an override changes an existing entry: add entries in a YAML file "
                                f"(an `{name}:` list) or replace the whole list, {name}='[{{...}}, {{...}}]'")
            node = node[i]
        elif isinstance(node, DictConfig):
            if part not in node:
                return
            node = node[part]
        else:
            return
        done.append(part)


def check_dtypes(cfg) -> None:
    """model.dtype / model.frozen_dtype name a dtype gmem knows (checked here, where the key is known)."""
    model = cfg.get("model") if hasattr(cfg, "get") else None
    if model is None:
        return
    for field_name in ("dtype", "frozen_dtype"):
        value = model.get(field_name)
        if value is not None and str(value) not in DTYPE_NAMES:
            raise GmemError(f"model.{field_name}: unknown dtype {value!r}; use one of {sorted(DTYPE_NAMES)}")


# Keys that moved into a system's own options (issue: each config holds only what applies).
MOVED = {"data.corpus": "system.corpus", "data.glob": "system.glob", "data.text_field": "system.text_field",
         "data.eval_fraction": "system.eval_fraction", "data.max_chars": "system.max_chars",
         "eval.prompts": "system.prompts", "eval.max_new_tokens": "system.max_new_tokens",
         "eval.temperature": "system.temperature", "eval.top_k": "system.top_k"}


def check_old_form(where: str, layer: dict) -> None:
    """One line for a config written for the old layout (system.params, moved keys)."""
    sysd = layer.get("system")
    if isinstance(sysd, dict) and "params" in sysd:
        keys = list(sysd["params"] or {}) or ["top_k"]
        raise GmemError(f"{where}: system.params is gone: a system's options sit directly under "
                        f"`system:` now (system.params.{keys[0]} -> system.{keys[0]})")
    for old, new in MOVED.items():
        sec, key = old.split(".")
        if isinstance(layer.get(sec), dict) and key in layer[sec]:
            raise GmemError(f"{where}: {old} is now {new} (an option of the systems that read it)")
