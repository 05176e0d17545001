"""Autoregressive generation with the KV cache, compiled once per shape.

`generate` prefills left-padded prompts into a cache of prompt_len + max_new_tokens slots, then
runs the decode loop as a `jax.lax.while_loop` inside the same `jax.jit`: one compilation covers
the whole generation (no retrace per token), and the loop exits as soon as every row has emitted
an end-of-sequence token. Rows that are done keep emitting the pad token, as HF generate does.

Works with any decoder that follows the family interface (LLaMA, GPT-2, ...):
    logits_BLV, new_cache = module.apply(variables, input_ids_BL, attention_mask_BL, cache=cache,
                                         logits_to_keep=1)   # the prompt pass; 0 = all positions
    cache = module.init_cache(batch, slots)

Sampling follows HF's processors in HF's order: temperature, then top-k (keep the k largest
logits, ties at the k-th included), then top-p (nucleus: keep the smallest set of tokens whose
cumulative probability reaches top_p, always at least the most likely token).

Shapes and the flags that change the program (max_new_tokens, eos ids, pad id, whether to sample,
whether top-k / top-p are on) are static; the values of temperature, top_k and top_p are traced,
so sweeping them reuses the compiled code. A new prompt length or batch size compiles again:
`generate_text` pads prompts to a multiple of `pad_to_multiple_of` to keep the number of
compilations small.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gmem.errors import GmemError, collect_errors


class GenerateOutput(NamedTuple):
    """tokens: int32 [B, T] (T = max_new_tokens), pad after a row's EOS (the EOS itself kept);
    lengths: int32 [B], tokens generated per row, EOS included; done: bool [B], row emitted EOS."""

    tokens: jax.Array
    lengths: jax.Array
    done: jax.Array


def _as_eos_tuple(eos_token_id) -> tuple[int, ...]:
    if eos_token_id is None:
        return ()
    if isinstance(eos_token_id, (int, np.integer)):
        return (int(eos_token_id),)
    return tuple(int(e) for e in eos_token_id)


def filter_logits(logits_BV: jax.Array, top_k: jax.Array | int, top_p: jax.Array | float, *,
                  use_top_k: bool, use_top_p: bool) -> jax.Array:
    """Set logits outside the top-k / top-p (nucleus) set to -inf (HF semantics). [B, V] -> [B, V].

    top_k and top_p may be traced: the cut-off is read from the sorted logits at a dynamic index.
    """
    if not (use_top_k or use_top_p):
        return logits_BV
    v = logits_BV.shape[-1]
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    rank_V = jnp.arange(v)
    if use_top_k:
        k = jnp.clip(jnp.asarray(top_k, jnp.int32), 1, v)
        kth_B1 = jax.lax.dynamic_slice_in_dim(sorted_BV, k - 1, 1, axis=-1)
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
        sorted_BV = jnp.where(rank_V[None] < k, sorted_BV, -jnp.inf)
    if use_top_p:
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        # A token is kept when the mass of the tokens ranked above it is still below top_p
        # (HF drops tokens whose ascending cumulative mass is <= 1 - top_p; same set).
        before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
        keep_BV = (before_BV < top_p) | (rank_V[None] == 0)
        n_keep_B1 = keep_BV.sum(-1, keepdims=True)
        cut_B1 = jnp.take_along_axis(sorted_BV, n_keep_B1 - 1, axis=-1)
        logits_BV = jnp.where(logits_BV < cut_B1, -jnp.inf, logits_BV)
    return logits_BV


def next_token(logits_BV: jax.Array, rng: jax.Array, temperature, top_k, top_p, *,
               do_sample: bool, use_top_k: bool, use_top_p: bool) -> jax.Array:
    """Greedy argmax (do_sample=False) or a draw from the filtered distribution. -> int32 [B]."""
    logits_BV = logits_BV.astype(jnp.float32)
    if not do_sample:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = logits_BV / temperature
    logits_BV = filter_logits(logits_BV, top_k, top_p, use_top_k=use_top_k, use_top_p=use_top_p)
    return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=(
    "module", "max_new_tokens", "eos", "pad_token_id", "do_sample", "use_top_k", "use_top_p"))
def _generate_jit(module, variables, input_ids_BL, attention_mask_BL, rng, temperature, top_k,
                  top_p, model_kwargs, prefill_kwargs, *, max_new_tokens: int, eos: tuple,
                  pad_token_id: int, do_sample: bool, use_top_k: bool, use_top_p: bool):
    b, l = input_ids_BL.shape
    pick = functools.partial(next_token, temperature=temperature, top_k=top_k, top_p=top_p,
                             do_sample=do_sample, use_top_k=use_top_k, use_top_p=use_top_p)
    eos_E = jnp.asarray(eos, jnp.int32)

    def is_eos(tok_B):
        if not eos:
            return jnp.zeros(tok_B.shape, bool)
        return (tok_B[:, None] == eos_E[None]).any(-1)

    cache = module.init_cache(b, l + max_new_tokens)
    # Only the last position's logits are needed: the LM head (49k x 576 for SmolLM2) and the
    # last layer skip the other prompt positions.
    logits_BLV, cache = module.apply(variables, input_ids_BL, attention_mask_BL, cache=cache,
                                     logits_to_keep=1, **prefill_kwargs, **model_kwargs)
    # Left padding: the last column holds every row's last prompt token.
    rng, step_rng = jax.random.split(rng)
    tok_B = pick(logits_BLV[:, -1], step_rng)
    tokens_BT = jnp.full((b, max_new_tokens), pad_token_id, jnp.int32).at[:, 0].set(tok_B)
    done_B = is_eos(tok_B)
    lengths_B = jnp.ones((b,), jnp.int32)
    ones_B1 = jnp.ones((b, 1), attention_mask_BL.dtype)

    def cond(state):
        i, _, done_B, *_ = state
        return (i < max_new_tokens) & ~done_B.all()

    def body(state):
        i, tokens_BT, done_B, lengths_B, cache, rng = state
        prev_B1 = jax.lax.dynamic_slice_in_dim(tokens_BT, i - 1, 1, axis=1)
        logits_B1V, cache = module.apply(variables, prev_B1, ones_B1, cache=cache, **model_kwargs)
        rng, step_rng = jax.random.split(rng)
        tok_B = jnp.where(done_B, pad_token_id, pick(logits_B1V[:, -1], step_rng))
        tokens_BT = jax.lax.dynamic_update_slice_in_dim(tokens_BT, tok_B[:, None], i, axis=1)
        lengths_B = lengths_B + (~done_B).astype(jnp.int32)
        done_B = done_B | is_eos(tok_B)
        return i + 1, tokens_BT, done_B, lengths_B, cache, rng

    state = (jnp.asarray(1, jnp.int32), tokens_BT, done_B, lengths_B, cache, rng)
    _, tokens_BT, done_B, lengths_B, _, _ = jax.lax.while_loop(cond, body, state)
    return GenerateOutput(tokens_BT, lengths_B, done_B)


def _check(input_ids_BL, attention_mask_BL, max_new_tokens, pad_token_id, temperature, top_k,
           top_p) -> None:
    errs = []
    if getattr(input_ids_BL, "ndim", None) != 2:
        errs.append(f"input_ids: expected [batch, length], got shape {getattr(input_ids_BL, 'shape', None)}")
    elif attention_mask_BL.shape != input_ids_BL.shape:
        errs.append(f"attention_mask: shape {attention_mask_BL.shape} != input_ids shape {input_ids_BL.shape}")
    elif not isinstance(attention_mask_BL, jax.core.Tracer):
        last = np.asarray(attention_mask_BL)[:, -1]
        if not last.all():
            errs.append(f"attention_mask: rows {np.flatnonzero(last == 0).tolist()} end with padding; "
                        "generate needs left-padded prompts (tokenizer padding_side='left')")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        errs.append(f"max_new_tokens: expected an int >= 1, got {max_new_tokens!r}")
    if pad_token_id is None:
        errs.append("pad_token_id: required (use the EOS id if the tokenizer has no pad token)")
    if temperature < 0:
        errs.append(f"temperature: expected >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        errs.append(f"top_k: expected >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        errs.append(f"top_p: expected 0 < top_p <= 1 (1 = off), got {top_p}")
    collect_errors(errs, "generate")


def generate(module, variables, input_ids_BL, attention_mask_BL=None, *, max_new_tokens: int,
             eos_token_id=None, pad_token_id: int | None = 0, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, rng: jax.Array | None = None,
             model_kwargs: dict | None = None, prefill_kwargs: dict | None = None) -> GenerateOutput:
    """Generate up to max_new_tokens per row from left-padded prompts.

    Args:
      module: an unbound decoder module (LlamaForCausalLM, GPT2LMHeadModel, ...).
      variables: its variables ({"params": ..., optionally "adapter": ...}), passed through.
      input_ids_BL: int [B, L] prompts, left-padded; attention_mask_BL: [B, L] 1 = real token
        (default all ones).
      eos_token_id: an int, a list of ints, or None (never stop early).
      temperature: 0 = greedy; > 0 samples from softmax(logits / temperature).
      top_k: 0 = off; top_p: 1.0 = off. Only used when sampling.
      rng: PRNG key for sampling (default PRNGKey(0)); the same key gives the same tokens.
      model_kwargs: extra apply() keyword arrays for every step (e.g. {"hook_inputs": {"memory": mem_BMD}} for GMT);
      prefill_kwargs: extra apply() keyword arrays for the prompt pass only.
    Returns:
      GenerateOutput(tokens [B, max_new_tokens], lengths [B], done [B]).
    """
    input_ids_BL = jnp.asarray(input_ids_BL)
    if attention_mask_BL is None:
        attention_mask_BL = jnp.ones(input_ids_BL.shape, jnp.int32)
    attention_mask_BL = jnp.asarray(attention_mask_BL)
    _check(input_ids_BL, attention_mask_BL, max_new_tokens, pad_token_id, temperature, top_k, top_p)
    do_sample = temperature > 0
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return _generate_jit(
        module, variables, input_ids_BL.astype(jnp.int32), attention_mask_BL, rng,
        jnp.asarray(max(temperature, 1e-6), jnp.float32), jnp.asarray(top_k, jnp.int32),
        jnp.asarray(top_p, jnp.float32), dict(model_kwargs or {}), dict(prefill_kwargs or {}),
        max_new_tokens=int(max_new_tokens), eos=_as_eos_tuple(eos_token_id),
        pad_token_id=int(pad_token_id), do_sample=bool(do_sample),
        use_top_k=bool(do_sample and top_k > 0), use_top_p=bool(do_sample and top_p < 1.0))


def encode_text(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of text from a transformers tokenizer or a `tokenizers.Tokenizer`."""
    out = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    return list(getattr(out, "ids", out))  # tokenizers.Tokenizer returns an Encoding


def left_pad(seqs: Sequence[Sequence[int]], pad_token_id: int,
             pad_to_multiple_of: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (ids int32 [B, L], mask int32 [B, L]), padded on the left; L is the longest
    length rounded up to a multiple of pad_to_multiple_of (fewer distinct shapes to compile)."""
    m = max(1, int(pad_to_multiple_of))
    longest = max(len(s) for s in seqs)
    width = -(-longest // m) * m
    ids = np.full((len(seqs), width), pad_token_id, np.int32)
    mask = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = s
            mask[i, width - len(s):] = 1
    return ids, mask


def generate_text(module, variables, tokenizer, prompts: str | Sequence[str], *,
                  max_new_tokens: int = 64, chat: bool = False, system: str | None = None,
                  add_special_tokens: bool = True, pad_to_multiple_of: int = 16,
                  eos_token_id=None, pad_token_id: int | None = None,
                  skip_special_tokens: bool = True, **sampling: Any) -> str | list[str]:
    """Tokenize prompts (left padding), generate, and decode the new tokens to strings
    (one string for one prompt string, else a list).

    tokenizer: a transformers tokenizer or a `tokenizers.Tokenizer` (encode/decode). With
    chat=True each prompt becomes a user turn rendered by tokenizer.apply_chat_template with the
    generation prompt appended (transformers tokenizers only). eos/pad ids default to the
    tokenizer's. sampling: temperature, top_k, top_p, rng (see `generate`).
    """
    single = isinstance(prompts, str)
    prompts = [prompts] if single else list(prompts)
    if not prompts:
        raise GmemError("generate_text: prompts is empty")
    if chat:
        if not hasattr(tokenizer, "apply_chat_template"):
            raise GmemError("generate_text: chat=True needs a transformers tokenizer with a chat template")
        head = [{"role": "system", "content": system}] if system else []
        prompts = [tokenizer.apply_chat_template(head + [{"role": "user", "content": p}],
                                                 tokenize=False, add_generation_prompt=True)
                   for p in prompts]
        add_special_tokens = False  # the template already holds the special tokens
    if eos_token_id is None:
        eos_token_id = getattr(tokenizer, "eos_token_id", None)
    if pad_token_id is None:
        pad_token_id = getattr(tokenizer, "pad_token_id", None)
    if pad_token_id is None:  # many decoder tokenizers have none; HF generate pads with EOS
        eos = _as_eos_tuple(eos_token_id)
        pad_token_id = eos[0] if eos else 0
    seqs = [encode_text(tokenizer, p, add_special_tokens) for p in prompts]
    ids, mask = left_pad(seqs, pad_token_id, pad_to_multiple_of)
    out = generate(module, variables, ids, mask, max_new_tokens=max_new_tokens,
                   eos_token_id=eos_token_id, pad_token_id=pad_token_id, **sampling)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    texts = [tokenizer.decode(tokens[i, :lengths[i]].tolist(), skip_special_tokens=skip_special_tokens)
             for i in range(len(prompts))]
    return texts[0] if single else texts
