"""VardaGPT generation: each step reruns the segments over prompt + tokens so far with a fresh
memory (see generate_with_memory)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from gmem.errors import GmemError
from gmem.models.generate import next_token


def generate_with_memory(system, trainable, frozen, prompts_ids: list[list[int]],
                         max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                         eos_token_id: Optional[int] = None, rng=None) -> list[list[int]]:
    """New token ids per prompt. Every step runs the segments over prompt + tokens so far with a
    fresh memory, and reads the logits at each row's last token. Rows are right-padded to one
    width (a multiple of segment_len), so this compiles once: a token in segment t reads the
    memory written by segments < t and attends causally, so the pads after it change nothing
    it sees. There is no KV cache: memory writes between segments change what later segments
    read, so each step recomputes (cost: max_new_tokens forwards of the padded width)."""
    if not prompts_ids or any(len(p) == 0 for p in prompts_ids):
        raise GmemError("varda generate: every prompt needs at least one token")
    b = len(prompts_ids)
    seg = system.varda_cfg.segment_len
    width = -(-(max(map(len, prompts_ids)) + max_new_tokens) // seg) * seg
    ids = np.zeros((b, width), np.int32)
    for i, p in enumerate(prompts_ids):
        ids[i, :len(p)] = p
    length = np.asarray([len(p) for p in prompts_ids])
    done = np.zeros(b, bool)
    do_sample = temperature > 0
    rng = jax.random.PRNGKey(0) if rng is None else rng

    @jax.jit
    def step(trainable, frozen, ids_BT, last_B, key):
        logits, _, _ = system.forward(trainable, frozen, system.model.init_memory(b), ids_BT)
        last = jnp.take_along_axis(logits, last_B[:, None, None], axis=1)[:, 0]
        return next_token(last, key, jnp.float32(max(temperature, 1e-6)), top_k, 1.0,
                          do_sample=do_sample, use_top_k=do_sample and top_k > 0, use_top_p=False)

    out = [[] for _ in range(b)]
    for n in range(max_new_tokens):
        tok = np.asarray(step(trainable, frozen, jnp.asarray(ids), jnp.asarray(length - 1), jax.random.fold_in(rng, n)))
        for i in np.flatnonzero(~done):
            t = int(tok[i])
            if t == eos_token_id:          # the row ends; eos itself is not returned
                done[i] = True
                continue
            out[i].append(t)
            ids[i, length[i]] = t
            length[i] += 1
        if done.all():
            break
    return out
