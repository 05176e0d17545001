"""LlamaForCausalLM / MistralForCausalLM <-> gmem.models.llama."""

from gmem.hf.keymap import Rule

RULES = (
    Rule("model.embed_tokens.weight", "model/embed_tokens/embedding"),
    Rule("model.layers.{i}.self_attn.{p}.weight", "model/layers_{i}/self_attn/{p}/kernel", "T"),
    Rule("model.layers.{i}.self_attn.{p}.bias", "model/layers_{i}/self_attn/{p}/bias"),
    Rule("model.layers.{i}.mlp.{p}.weight", "model/layers_{i}/mlp/{p}/kernel", "T"),
    Rule("model.layers.{i}.mlp.{p}.bias", "model/layers_{i}/mlp/{p}/bias"),
    Rule("model.layers.{i}.{n}.weight", "model/layers_{i}/{n}/scale"),
    Rule("model.norm.weight", "model/norm/scale"),
    Rule("lm_head.weight", "lm_head/kernel", "T"),
)

# Buffers some checkpoints carry (older transformers saved rotary inv_freq per layer).
IGNORE = (r".*\.rotary_emb\.inv_freq", r".*\.position_ids")

# With tie_word_embeddings the head is the embedding table; a saved copy is dropped.
TIED = ("lm_head.weight",)
