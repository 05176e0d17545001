"""Which gmem family serves which HF architecture: config class, module, key map.

Add a family by adding one Family entry to FAMILIES (keep entries small: data, not code).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from gmem.errors import GmemError
from gmem.hf.keymap import Rule
from gmem.hf.keymaps import bert as bert_keys
from gmem.hf.keymaps import gpt2 as gpt2_keys
from gmem.hf.keymaps import llama as llama_keys
from gmem.hf.keymaps import timm_vit as timm_vit_keys
from gmem.hf.keymaps import vit as vit_keys
from gmem.models import bert, gpt2, llama, vit


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
    Family("gpt2", ("gpt2",), ("GPT2LMHeadModel",), gpt2.GPT2Config, gpt2.GPT2LMHeadModel,
           gpt2_keys.RULES, ignore=gpt2_keys.IGNORE, tied=gpt2_keys.TIED),
    Family("bert", ("bert",), ("BertModel",), bert.BertConfig, bert.BertModel,
           bert_keys.BERT_MODEL, ignore=bert_keys.IGNORE, auto_class="AutoModel"),
    Family("bert-sequence-classification", (), ("BertForSequenceClassification",), bert.BertConfig,
           bert.BertForSequenceClassification, bert_keys.BERT_SEQUENCE_CLASSIFICATION,
           ignore=bert_keys.IGNORE, auto_class="AutoModelForSequenceClassification"),
    Family("roberta", ("roberta",), ("RobertaModel",), bert.BertConfig, bert.RobertaModel,
           bert_keys.ROBERTA_MODEL, ignore=bert_keys.IGNORE, auto_class="AutoModel"),
    Family("roberta-sequence-classification", (), ("RobertaForSequenceClassification",),
           bert.BertConfig, bert.RobertaForSequenceClassification,
           bert_keys.ROBERTA_SEQUENCE_CLASSIFICATION, ignore=bert_keys.IGNORE,
           auto_class="AutoModelForSequenceClassification"),
    Family("vit", ("vit",), ("ViTModel",), vit.ViTConfig, vit.ViTModel, vit_keys.VIT_MODEL,
           ignore=vit_keys.IGNORE, auto_class="AutoModel", example_inputs=vit.example_inputs),
    Family("vit-image-classification", (), ("ViTForImageClassification",), vit.ViTConfig,
           vit.ViTForImageClassification, vit_keys.VIT_IMAGE_CLASSIFICATION, ignore=vit_keys.IGNORE,
           auto_class="AutoModelForImageClassification", example_inputs=vit.example_inputs),
    # timm's VisionTransformer state dicts (GIFT's vision backbone). Not reached from an HF
    # config.json (no architectures listed): gmem.hf.timm.load_timm_vit picks these by name.
    # Exports go out through the HF ViT families above (same gmem module, same params).
    Family("timm-vit", (), (), vit.ViTConfig, vit.ViTForImageClassification,
           timm_vit_keys.TIMM_VIT_IMAGE_CLASSIFICATION,
           auto_class="AutoModelForImageClassification", example_inputs=vit.example_inputs),
    Family("timm-vit-model", (), (), vit.ViTConfig, vit.ViTModel, timm_vit_keys.TIMM_VIT_MODEL,
           auto_class="AutoModel", example_inputs=vit.example_inputs),
]


def family_named(name: str) -> Family:
    """The family called `name` ("llama", "timm-vit", ...)."""
    for fam in FAMILIES:
        if fam.name == name:
            return fam
    raise GmemError(f"family {name!r} is not known; gmem knows {[f.name for f in FAMILIES]}")


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
