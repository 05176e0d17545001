"""GPT2LMHeadModel <-> gmem.models.gpt2.

HF's Conv1D weights (c_attn, c_proj, c_fc) are already [in, out]: copied without a transpose.
lm_head.weight is tied to wte and absent from saved files; its rule serves untied configs only.
Older files saved from GPT2Model (e.g. the original `gpt2` upload) have no "transformer."
prefix; they import through the second table (export always writes the prefixed names). Their
"h.{i}.attn.bias" / "attn.masked_bias" entries are causal-mask buffers, not weights, and match
no rule.
"""

from gmem.hf.keymap import Rule


def _rules(hf_prefix: str) -> tuple:
    p = hf_prefix
    return (
        Rule(p + "wte.weight", "transformer/wte/embedding"),
        Rule(p + "wpe.weight", "transformer/wpe/embedding"),
        Rule(p + "h.{i}.attn.{p}.weight", "transformer/h_{i}/attn/{p}/kernel"),
        Rule(p + "h.{i}.attn.{p}.bias", "transformer/h_{i}/attn/{p}/bias"),
        Rule(p + "h.{i}.mlp.{p}.weight", "transformer/h_{i}/mlp/{p}/kernel"),
        Rule(p + "h.{i}.mlp.{p}.bias", "transformer/h_{i}/mlp/{p}/bias"),
        Rule(p + "h.{i}.ln_1.weight", "transformer/h_{i}/ln_1/scale"),
        Rule(p + "h.{i}.ln_1.bias", "transformer/h_{i}/ln_1/bias"),
        Rule(p + "h.{i}.ln_2.weight", "transformer/h_{i}/ln_2/scale"),
        Rule(p + "h.{i}.ln_2.bias", "transformer/h_{i}/ln_2/bias"),
        Rule(p + "ln_f.weight", "transformer/ln_f/scale"),
        Rule(p + "ln_f.bias", "transformer/ln_f/bias"),
    )


RULES = _rules("transformer.") + (Rule("lm_head.weight", "lm_head/kernel", "T"),) + _rules("")

# Causal-mask buffers that older files carry per layer.
IGNORE = (r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)",)

# With tie_word_embeddings the head is wte; a saved copy is dropped.
TIED = ("lm_head.weight",)
