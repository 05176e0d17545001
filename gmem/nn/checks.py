"""Shape checks at the public entry points of models, memories and graph layers (chex).

They read only shapes, ranks and dtypes, never values: under `jit` they run once, while
tracing, and leave nothing in the compiled program (the jaxpr is the same with
`chex.disable_asserts()`); called eagerly they cost a few Python comparisons and no device
sync. A failed check raises AssertionError with the shapes it saw: it marks a caller's bug
(wrong rank, mismatched batch), not a user's configuration error (those are GmemError).
"""

from __future__ import annotations

import chex


_INPUTS = ("model inputs: ids int [B, L] (or embeddings [B, L, D]); attention mask, positions and "
           "token types, where given, [B, L] each")


def check_token_inputs(input_ids_BL=None, inputs_embeds_BLD=None, *per_token_BL, cache=None) -> None:
    """A sequence model's inputs: token ids int [B, L] or embeddings [B, L, D], and every other
    per-token array that is given (attention mask, position ids, token types: None entries are
    skipped) [B, L] with the same B and L. cache: a KVCache whose batch must be B."""
    if input_ids_BL is None and inputs_embeds_BLD is None:
        raise AssertionError("model inputs: neither input_ids_BL nor inputs_embeds_BLD given")
    msg = dict(custom_message=_INPUTS)
    tokens = [a for a in (input_ids_BL, *per_token_BL) if a is not None]
    if tokens:
        chex.assert_rank(tokens, 2, **msg)
    if input_ids_BL is not None:
        chex.assert_type(input_ids_BL, int, **msg)
    if inputs_embeds_BLD is not None:
        chex.assert_rank(inputs_embeds_BLD, 3, **msg)
        tokens.append(inputs_embeds_BLD)
    chex.assert_equal_shape_prefix(tokens, 2, **msg)
    if cache is not None:
        chex.assert_axis_dimension(cache.valid_BS, 0, tokens[0].shape[0],
                                   custom_message="the KV cache was made for another batch size")
