"""Attention core shared by every family: masks, scaled dot-product with GQA, and the KV cache.

Families keep their own thin modules (HF names differ: q_proj / query / c_attn) and call these
functions. Positions in a sequence are *slots*: with left padding the pad tokens take the first
slots and are masked out as keys, so causality and sliding windows are decided on slot indices.
"""

from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

# Large negative used instead of -inf so that fully-masked rows (pad queries) give a uniform
# softmax instead of NaN, as HF does with finfo.min.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def make_mask(q_slots_L: jax.Array, kv_valid_BS: jax.Array, *, causal: bool = True,
              window: int | None = None) -> jax.Array:
    """Boolean mask [B, 1, L, S]: query at slot q_slots[l] may see key slot s.

    kv_valid_BS marks real (non-pad) keys. With causal, s <= q; with window w, q - s < w
    (HF/Mistral convention: a token sees itself and the w-1 before it).
    """
    s = jnp.arange(kv_valid_BS.shape[1])
    mask = kv_valid_BS[:, None, None, :].astype(bool)
    q = q_slots_L[:, None]
    if causal:
        mask = mask & (s[None, :] <= q)[None, None]
    if window is not None:
        mask = mask & ((q - s[None, :]) < window)[None, None]
    return jnp.broadcast_to(mask, (kv_valid_BS.shape[0], 1, q_slots_L.shape[0], kv_valid_BS.shape[1]))


# Long sequences attend in query chunks: each chunk's [L_c, S] scores are recomputed in the
# backward pass (jax.checkpoint) instead of keeping an fp32 L x S matrix per layer alive, which
# is what bounds a 2048-token train step's memory. Chunking over queries is exact: every query
# row has its own softmax.
Q_CHUNK = 512


def dot_product_attention(q_BLHD: jax.Array, k_BSKD: jax.Array, v_BSKD: jax.Array,
                          mask_B1LS: jax.Array | None, *, scale: float | None = None,
                          q_chunk: int | None = Q_CHUNK, dropout_rate: float = 0.0,
                          dropout_rng: jax.Array | None = None) -> jax.Array:
    """Softmax attention with grouped KV heads (H = K * G). Returns [B, L, H, D].

    Scores and softmax run in fp32 whatever the compute dtype, as in HF eager attention.
    When L is a multiple of q_chunk and at least twice it, queries are processed in chunks.

    Dropout on the attention probabilities (HF's attn_pdrop / attention_probs_dropout_prob /
    attention_dropout) runs only when dropout_rate > 0 and dropout_rng is given: after the
    softmax and before the product with V, kept probabilities are scaled by 1 / (1 - rate).
    dropout_rate is a Python float (static). The keep mask, in the layout of the scores
    [B, K, G, L, S] (head h = k * G + g), is
        jax.random.bernoulli(dropout_rng, 1 - dropout_rate, (B, K, G, L, S));
    with query chunks of length C, chunk i draws its own [B, K, G, C, S] mask with the key
    jax.random.fold_in(dropout_rng, i) (so the masks differ from the unchunked path's, and are
    redrawn from the key, not stored, in the backward pass).
    """
    b, l, h, _ = q_BLHD.shape
    scale = q_BLHD.shape[-1] ** -0.5 if scale is None else scale
    rate = float(dropout_rate) if dropout_rng is not None else 0.0
    if q_chunk and l >= 2 * q_chunk and l % q_chunk == 0:
        n = l // q_chunk
        q_NBCHD = q_BLHD.reshape(b, n, q_chunk, h, -1).swapaxes(0, 1)
        masks = None
        if mask_B1LS is not None:
            m = jnp.broadcast_to(mask_B1LS, (b, 1, l, mask_B1LS.shape[-1]))
            masks = m.reshape(b, 1, n, q_chunk, -1).transpose(2, 0, 1, 3, 4)

        def chunk(xs):
            i, q_BCHD, mask_B1CS = xs
            key = jax.random.fold_in(dropout_rng, i) if rate else None
            return _attend(q_BCHD, k_BSKD, v_BSKD, mask_B1CS, scale, rate, key)

        out = jax.lax.map(jax.checkpoint(chunk), (jnp.arange(n), q_NBCHD, masks))
        return out.swapaxes(0, 1).reshape(b, l, h, v_BSKD.shape[-1])
    return _attend(q_BLHD, k_BSKD, v_BSKD, mask_B1LS, scale, rate, dropout_rng)


def _attend(q_BLHD, k_BSKD, v_BSKD, mask_B1LS, scale, rate=0.0, rng=None):
    b, l, h, d = q_BLHD.shape
    kvh = k_BSKD.shape[2]
    q = q_BLHD.reshape(b, l, kvh, h // kvh, d)
    # fp32 at least; float64 inputs (x64 finite-difference tests) keep float64.
    acc = jnp.promote_types(jnp.float32, q.dtype)
    scores = jnp.einsum("blkgd,bskd->bkgls", q, k_BSKD).astype(acc) * scale
    if mask_B1LS is not None:
        scores = jnp.where(mask_B1LS[:, :, None], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    if rate:
        keep = jax.random.bernoulli(rng, 1.0 - rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - rate), 0.0)
    out = jnp.einsum("bkgls,bskd->blkgd", probs.astype(v_BSKD.dtype), v_BSKD)
    return out.reshape(b, l, h, v_BSKD.shape[-1])


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer for S slots, which slots hold real tokens, and the next slot.

    keys[i], values[i]: [B, S, K, D]; valid_BS: bool [B, S]; index: int32 scalar.
    The shapes are static, so a jitted decode step compiles once for the whole generation.
    """

    keys: tuple
    values: tuple
    valid_BS: jax.Array
    index: jax.Array

    @classmethod
    def zeros(cls, num_layers: int, batch: int, slots: int, kv_heads: int, head_dim: int,
              dtype=jnp.float32) -> "KVCache":
        shape = (batch, slots, kv_heads, head_dim)
        z = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
        return cls(keys=z, values=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
                   valid_BS=jnp.zeros((batch, slots), bool), index=jnp.zeros((), jnp.int32))

    @property
    def slots(self) -> int:
        return self.valid_BS.shape[1]

    def layer(self, i: int) -> tuple[jax.Array, jax.Array]:
        """(keys, values) of layer i."""
        return self.keys[i], self.values[i]


def update_layer_cache(k_cache: jax.Array, v_cache: jax.Array, k_BLKD: jax.Array,
                       v_BLKD: jax.Array, index: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Write L new keys/values at slots [index, index + L)."""
    start = (0, index, 0, 0)
    k_cache = jax.lax.dynamic_update_slice(k_cache, k_BLKD.astype(k_cache.dtype), start)
    v_cache = jax.lax.dynamic_update_slice(v_cache, v_BLKD.astype(v_cache.dtype), start)
    return k_cache, v_cache


def advance_valid(valid_BS: jax.Array, attention_mask_BL: jax.Array, index: jax.Array) -> jax.Array:
    """Mark the L slots written at `index` as valid where the new tokens are not padding."""
    return jax.lax.dynamic_update_slice(valid_BS, attention_mask_BL.astype(bool), (0, index))


def decoder_mask(attention_mask_BL: jax.Array, cache: "KVCache | None", window: int | None = None):
    """Causal mask for L new tokens, read alone or appended to a cache.

    Returns (mask [B, 1, L, S], write index or None, valid slots [B, S] or None).
    """
    l = attention_mask_BL.shape[1]
    if cache is None:
        return make_mask(jnp.arange(l), attention_mask_BL, window=window), None, None
    valid = advance_valid(cache.valid_BS, attention_mask_BL, cache.index)
    return make_mask(cache.index + jnp.arange(l), valid, window=window), cache.index, valid


def written_cache(cache: "KVCache | None", layer_kvs: list, valid_BS, length: int) -> "KVCache | None":
    """The cache after a forward wrote `length` slots; layer_kvs holds each layer's (k, v)."""
    if cache is None:
        return None
    return KVCache(keys=tuple(k for k, _ in layer_kvs), values=tuple(v for _, v in layer_kvs),
                   valid_BS=valid_BS, index=cache.index + length)


def constrain(x: jax.Array, axes: tuple) -> jax.Array:
    """Logical sharding constraint; a no-op outside a mesh with axis rules."""
    return nn.with_logical_constraint(x, axes)
