"""Answers by greedy generation, each row with its own adapted LoRA (theta' differs per question).

`generate_rows` runs gmem.models.generate under jax.vmap over rows: row b decodes with
variables {"params": frozen, "adapter": LoRA_b}, so a batch of questions with different
theta' = theta - gamma * alpha (.) sum_i g_i is one compiled call (the frozen base is shared,
only the small LoRA tensors are batched). Decoding stops at the first token whose text holds a
newline (the original's stop_strings="\\n") or EOS, after at most max_new_tokens (the
original's 20); the answer is the text after the last "Answer:" (prompt.extract_answer).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gmem.adapters import adapter_collection
from gmem.models.generate import generate, left_pad
from gmem.systems.regrad import prompt as P

PAD_MULTIPLE = 32  # prompt lengths are rounded up to this: fewer shapes to compile


@functools.partial(jax.jit, static_argnames=("module", "spec", "max_new_tokens", "eos", "pad"))
def _rows(module, spec, frozen, lora_B, ids_BL, mask_BL, *, max_new_tokens, eos, pad):
    def one(lora, ids_L, mask_L):
        variables = {"params": frozen}
        if lora is not None:
            variables["adapter"] = adapter_collection([spec], lora)
        out = generate(module, variables, ids_L[None], mask_L[None], max_new_tokens=max_new_tokens,
                       eos_token_id=eos, pad_token_id=pad)
        return out.tokens[0], out.lengths[0]
    if lora_B is None:
        out = generate(module, {"params": frozen}, ids_BL, mask_BL, max_new_tokens=max_new_tokens,
                       eos_token_id=eos, pad_token_id=pad)
        return out.tokens, out.lengths
    return jax.vmap(one)(lora_B, ids_BL, mask_BL)


def generate_rows(model, tokenizer, frozen, prompts: Sequence[Sequence[int]], lora_B=None, *,
                  max_new_tokens: int = 20, vocab_size: int) -> list[str]:
    """Generated texts (special tokens dropped) for prompt token lists; lora_B: a LoRA tree
    with a leading row dim (one theta' per prompt) or None for the base model."""
    pad = P.pad_id_of(tokenizer)
    ids, mask = left_pad([list(p) for p in prompts], pad, PAD_MULTIPLE)
    toks, lens = _rows(model.module, model.spec, frozen, lora_B, jnp.asarray(ids), jnp.asarray(mask),
                       max_new_tokens=int(max_new_tokens), eos=P.stop_ids(tokenizer, vocab_size), pad=pad)
    toks, lens = np.asarray(toks), np.asarray(lens)
    return [P.decode(tokenizer, toks[i, :lens[i]].tolist()) for i in range(len(prompts))]


def stack_rows(trees: Sequence) -> object:
    """Per-row trees -> one tree with a leading row dim."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


@functools.partial(jax.jit, static_argnames=("model",))
def adapt_rows(model, trainable, grads_B, gamma):
    """theta'_b = theta - gamma * alpha (.) g_b for each row b of grads_B (leading dim B)."""
    return jax.vmap(lambda g: model.adapt(trainable, g, gamma))(grads_B)


@functools.partial(jax.jit, static_argnames=("model",))
def inner_rows(model, lora, frozen, ids_BKL, mask_BKL):
    """sum_i g_i per row, computed on the fly (no bank): [B, K, Lp] passages -> grads [B, ...]."""
    return jax.vmap(lambda i, m: model.inner_grads(lora, frozen, i, m)[1])(ids_BKL, mask_BKL)
