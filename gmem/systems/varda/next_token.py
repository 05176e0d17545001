"""VardaGPT's second read (`system.read: next_token`): the memory holds, for every token of an
earlier segment, a key from its context and a value (the token that came next), and a token
reads it by its own key. The read mixes into the output distribution, as kNN-LM does
(Khandelwal et al., 2020):

  h, logits = backbone(embed(ids))                       [B, L, D], [B, L, V]
  key = unit(W h)  (W: key_proj, identity at init; else h itself), and with key_ngram = n > 0
        [unit(W h), unit(e_{t-n+1} + .. + e_t)] / sqrt(2)  (the last n input embeddings)
  s_j, v_j = top-k of key . stored keys                  [B, L, k] cosines, next-token ids
  p_mem = sum_j softmax_j(s_j / tau) onehot(v_j)          [B, L, V]
  lam = sigmoid(a * max_j s_j + b)                        [B, L]   trust a close match only
  log p = log((1 - lam) softmax(logits) + lam p_mem)      returned as the logits

Why: the original's read (`read: input`: results fused into the input embeddings, queries the
raw token embeddings) has no context in its query and must learn, through a hard top-k, to
store vectors that a later token's embedding lands next to; five recipes left it at chance on
the long-context probe (README). Here a question's last words ("... the key is") and the
fact's same words have near keys, so the fact's next token comes back from step 0, and
training tunes how far to trust it (tau, a, b) and the key map W.

Storage: one memory entry per token, the vector [key (key_dim) | next-token id (1)] searched
with the inner product against [key | 0], so the id takes no part in the score (`metric: ip`).
Every token whose next token is in the input stores (no store or delete decisions here).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmem.nn.projection import Projection

# Step-0 trust: lam = sigmoid(12 s - 9) is 0.05 at cosine 0.5 and 0.82 at 0.88.
GATE_SLOPE, GATE_BIAS, TEMPERATURE = 12.0, -9.0, 0.05


def unit(x_BLD):
    x = x_BLD.astype(jnp.float32)
    return x / jnp.sqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-12)


class NextTokenRead(nn.Module):
    """The read's parameters: log tau, the trust gate (a, b), and optionally the key map."""

    hidden: int
    key_proj: bool = False
    key_ngram: int = 0

    def setup(self):
        const = nn.initializers.constant
        self.log_tau = self.param("log_tau", const(math.log(TEMPERATURE)), ())
        self.gate_slope = self.param("gate_slope", const(GATE_SLOPE), ())
        self.gate_bias = self.param("gate_bias", const(GATE_BIAS), ())
        if self.key_proj:
            eye = lambda _, shape, dtype=jnp.float32: jnp.eye(*shape, dtype=dtype)
            self.fc_key = Projection(self.hidden, axes=("embed", "memory"), use_bias=False, kernel_init=eye)

    def keys(self, h_BLD, x_BLD):
        """Unit keys (and queries) [B, L, key_dim(D)] float32 from the final hidden states h and,
        with key_ngram = n > 0, the sum of the last n input embeddings x (within the segment):
        [unit(h), unit(n-gram)] / sqrt(2), so the score is the mean of the two cosines."""
        h = h_BLD.astype(jnp.float32)
        k = unit(self.fc_key(h) if self.key_proj else h)
        if not self.key_ngram:
            return k
        c = jnp.cumsum(x_BLD.astype(jnp.float32), 1)
        back = jnp.pad(c, ((0, 0), (self.key_ngram, 0), (0, 0)))[:, :c.shape[1]]
        return jnp.concatenate([k, unit(c - back)], -1) / math.sqrt(2.0)

    def trust_logit(self, s_BLK):
        """logit(lam) [B, L]: a * (best cosine) + b; no result found: lam ~ 0."""
        valid = jnp.isfinite(s_BLK)
        top = jnp.max(jnp.where(valid, s_BLK, -1.0), -1)
        return jnp.where(valid.any(-1), self.gate_slope * top + self.gate_bias, -60.0)

    def mix(self, logits_BLV, s_BLK, tok_BLK):
        """Mix the memory's next-token distribution into the model's: (log-probs [B, L, V],
        the trust lam [B, L])."""
        b, l, v = logits_BLV.shape
        valid = jnp.isfinite(s_BLK)
        z = self.trust_logit(s_BLK)
        safe = jnp.where(valid, s_BLK, 0.0)  # empty results score -inf: no inf * 0 in the gradient
        w = jax.nn.softmax(jnp.where(valid, safe / jnp.exp(self.log_tau), -1e30), -1)
        w = jnp.where(valid, w, 0.0)
        rows = jnp.arange(b * l)[:, None]
        p_mem = jnp.zeros((b * l, v), jnp.float32).at[rows, tok_BLK.reshape(b * l, -1)].add(
            w.reshape(b * l, -1)).reshape(b, l, v)
        lp = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), -1)
        mem = jnp.log(jnp.maximum(p_mem, 1e-30))
        out = jnp.logaddexp(jax.nn.log_sigmoid(-z)[..., None] + lp, jax.nn.log_sigmoid(z)[..., None] + mem)
        return out, jax.nn.sigmoid(z)

    def __call__(self, h_BLD, logits_BLV, s_BLK, tok_BLK):  # for init: touches every parameter
        return self.keys(h_BLD, h_BLD), self.mix(logits_BLV, s_BLK, tok_BLK)


def next_token_segment(model, hp, backbone_vars, state, seg_ids_BL, next_ids_BL, next_ok_BL):
    """One segment of the next_token read: (new state, log-probs [B, L, V], stats: the mean
    trust lam, the stored count).

    next_ids / next_ok: each token's next token and whether it is in the input (the row's last
    token has none), what the segment stores."""
    c, heads = model.cfg, model.heads
    x = model.backbone.apply(backbone_vars, seg_ids_BL, method="embed")
    logits, _, h = model.backbone.apply(backbone_vars, inputs_embeds_BLD=x, return_hidden=True)
    if not c.use_memory:
        return state, logits, {}
    key = heads.apply(hp, h, x, method="keys")
    q = jnp.concatenate([key, jnp.zeros(key.shape[:-1] + (1,), key.dtype)], -1)
    _, s, r = jax.vmap(model.memory.search, (0, 0, None))(state, q, c.num_search_results)
    tok = jnp.round(jax.lax.stop_gradient(r[..., -1])).astype(jnp.int32)
    out, trust = heads.apply(hp, logits, s, tok, method="mix")
    stored = jnp.concatenate([key, next_ids_BL[..., None].astype(key.dtype)], -1)
    state = model.write(state, stored, next_ok_BL)
    return state, out, {"memory/trust": trust.mean(), "memory/count": state.count.mean(dtype=jnp.float32)}


def key_dim(hidden: int, key_ngram: int) -> int:
    """Width of a key: D, or 2D with the n-gram half."""
    return hidden * (2 if key_ngram else 1)
