"""Which gmem family serves which HF architecture: config class, module, key map.

Add a family by adding one Family entry to FAMILIES (keep entries small: data, not code).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from gmem.errors import GmemError
from gmem.hf.keymap import Rule
from gmem.hf.keymaps import llama as llama_keys
from gmem.models import llama


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]          # HF config.json "model_type" values served
    architectures: tuple[str, ...]        # HF config.json "architectures" values served
    config_cls: Any                       # has from_hf(dict) and to_hf() -> dict
    module: Callable[[Any], Any]          # config -> linen Module
    rules: tuple[Rule, ...]
    # HF keys that are buffers, not weights (regexes, full match), skipped on import.
    ignore: tuple[str, ...] = ()
    # HF keys that duplicate a tied parameter: skipped on import when the config ties them.
    tied: tuple[str, ...] = ()
    # transformers Auto class that loads an exported folder.
    auto_class: str = "AutoModelForCausalLM"
    # config -> positional args for module.init (shapes only matter); None = ids of shape [1, 1].
    example_inputs: Optional[Callable[[Any], tuple]] = None


FAMILIES: list[Family] = [
    Family("llama", ("llama", "mistral"), ("LlamaForCausalLM", "MistralForCausalLM"),
           llama.LlamaConfig, llama.LlamaForCausalLM, llama_keys.RULES,
           ignore=llama_keys.IGNORE, tied=llama_keys.TIED),
]


def family_by_architecture(architecture: str) -> Family:
    """The family serving an HF architecture name such as "LlamaForCausalLM"."""
    for fam in FAMILIES:
        if architecture in fam.architectures:
            return fam
    known = sorted({a for f in FAMILIES for a in f.architectures})
    raise GmemError(f"architecture={architecture!r} is not supported; gmem knows {known}")


def family_for(hf_config: dict, where: str = "config.json") -> Family:
    """Pick the family for an HF config dict (architecture first, then model_type)."""
    archs = hf_config.get("architectures") or []
    for fam in FAMILIES:
        if any(a in fam.architectures for a in archs):
            return fam
    mt = hf_config.get("model_type")
    for fam in FAMILIES:
        if mt in fam.model_types:
            return fam
    known = sorted({a for f in FAMILIES for a in f.architectures})
    raise GmemError(f"{where}: architectures={archs} model_type={mt!r} is not supported; "
                    f"gmem knows {known}")
