"""One interface across model families, so no system special-cases a family by class.

Every family config answers to `model_type`, `hidden_size`, `num_hidden_layers` and
`num_attention_heads` (GPT-2's n_embd / n_layer / n_head under the common names), and:

    config = tiny_config("gpt2", hidden_size=32, num_hidden_layers=2, ...)   # random tests/benches
    module = causal_lm(config, hooks=(...))       # decoders: LlamaForCausalLM | GPT2LMHeadModel
    sizes(config)                                 # the structural sizes a checkpoint records

Decoder hook points (gmem.models.hooks) are the same in every decoder: "pre" (before layer i)
and "post_attn" (after its self-attention), fed by the `hook_inputs` keyword of the call.
"""

from __future__ import annotations

from typing import Any, Optional

from gmem.errors import GmemError
from gmem.models.bert import BertConfig, BertForSequenceClassification
from gmem.models.gpt2 import GPT2Config, GPT2LMHeadModel
from gmem.models.llama import LlamaConfig, LlamaForCausalLM
from gmem.models.vit import ViTConfig

DECODERS = {"llama": (LlamaConfig, LlamaForCausalLM), "gpt2": (GPT2Config, GPT2LMHeadModel)}
ENCODERS = {"bert": (BertConfig, BertForSequenceClassification), "vit": (ViTConfig, None)}
FAMILIES = tuple(DECODERS) + tuple(ENCODERS)


def tiny_config(family: str, *, vocab_size: int, hidden_size: int, intermediate_size: int,
                num_hidden_layers: int, num_attention_heads: int, num_key_value_heads: Optional[int] = None,
                head_dim: Optional[int] = None, max_position_embeddings: int = 2048,
                tie_word_embeddings: Optional[bool] = None, **overrides) -> Any:
    """A config of `family` with these sizes (random weights follow from module.init).
    tie_word_embeddings None keeps the family's default (LLaMA untied, GPT-2 tied); overrides
    are other fields of the family config (token ids, dropout rates, dtype, ...)."""
    tie = {} if tie_word_embeddings is None else {"tie_word_embeddings": bool(tie_word_embeddings)}
    if family == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                           num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                           num_key_value_heads=num_key_value_heads or num_attention_heads, head_dim=head_dim,
                           max_position_embeddings=max_position_embeddings, **tie, **overrides)
    if family == "gpt2":
        # A tiny random model is for tests and benches: no dropout unless asked for.
        overrides = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **overrides}
        return GPT2Config(vocab_size=vocab_size, n_positions=max_position_embeddings, n_embd=hidden_size,
                          n_layer=num_hidden_layers, n_head=num_attention_heads, n_inner=intermediate_size,
                          **tie, **overrides)
    if family == "bert":
        return BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                          num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                          max_position_embeddings=max_position_embeddings, **overrides)
    if family == "vit":
        return ViTConfig(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                         num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                         **overrides)
    raise GmemError(f"model.family: {family!r} is not one of {list(FAMILIES)}")


def family_of(config: Any) -> str:
    """'llama' | 'gpt2' | 'bert' | 'vit' for a family config (Mistral is 'llama', RoBERTa 'bert')."""
    for name, (cls, _) in {**DECODERS, **ENCODERS}.items():
        if isinstance(config, cls):
            return name
    raise GmemError(f"model: {type(config).__name__} is not a gmem model family config")


def causal_lm(config: Any, hooks: tuple = ()):
    """The causal-LM module of a decoder family config, with decoder hooks."""
    fam = family_of(config)
    if fam not in DECODERS:
        raise GmemError(f"model: a {fam} model is not a decoder (this system needs one of {list(DECODERS)})")
    return DECODERS[fam][1](config, hooks=tuple(hooks))


def sizes(config: Any) -> dict:
    """Structural sizes every family reports (what a checkpoint's structure records)."""
    out = {"hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
           "num_attention_heads": config.num_attention_heads}
    for k in ("vocab_size", "num_key_value_heads", "intermediate_size"):
        if hasattr(config, k):
            out[k] = getattr(config, k)
    if isinstance(config, GPT2Config):
        out["intermediate_size"] = config.inner_size
    return out
