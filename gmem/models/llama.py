"""LLaMA family (LLaMA 2/3, Mistral, SmolLM2) as HF LlamaForCausalLM / MistralForCausalLM.

Parameter paths follow HF module names: model/embed_tokens, model/layers_{i}/self_attn/q_proj,
model/layers_{i}/mlp/gate_proj, model/norm, lm_head. Kernels are [in, out].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmem.models.common import dropout_rng, hf_dict, require, to_dtype
from gmem.models.hooks import check_hooks, layer_hooks, run_hooks
from gmem.nn.attention import (KVCache, constrain, decoder_mask, dot_product_attention,
                               update_layer_cache, written_cache)
from gmem.nn.checks import check_token_inputs
from gmem.nn.embeddings import Embed
from gmem.nn.norms import RMSNorm
from gmem.nn.projection import Projection
from gmem.nn.rope import apply_rope, inverse_frequencies, rope_cos_sin
from gmem.nn.swiglu import swiglu


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a LLaMA-family decoder.

    Args:
      rope_scaling: None, or a tuple of (key, value) pairs as in HF's rope dict
        (rope_type 'linear' or 'llama3'); a tuple keeps the dataclass hashable for jit.
      sliding_window: Mistral's window (a token sees itself and window-1 before it); None = full.
      attention_dropout: dropout rate on the attention probabilities, used only when apply()
        gets a "dropout" rng (training).
      dtype: compute dtype name; parameters stay float32.
      remat: rematerialise each decoder layer in the backward pass.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: Optional[int] = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[tuple] = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    sliding_window: Optional[int] = None
    attention_bias: bool = False
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    bos_token_id: Optional[int] = 1
    eos_token_id: Any = 2
    pad_token_id: Optional[int] = None
    model_type: str = "llama"
    dtype: str = "float32"
    remat: bool = False

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def rope_dict(self) -> dict | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    @classmethod
    def from_hf(cls, hf_config: Any, **overrides) -> "LlamaConfig":
        """From a transformers LlamaConfig/MistralConfig or its config.json dict (v4 or v5)."""
        d = hf_dict(hf_config)
        where = "config.json"
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        kind = rope.get("rope_type", rope.get("type", "default"))
        scaling = None
        if kind not in (None, "default"):
            keep = {k: v for k, v in rope.items() if k != "rope_theta" and v is not None}
            keep["rope_type"] = kind
            keep.pop("type", None)
            scaling = tuple(sorted(keep.items()))
        heads = require(d, "num_attention_heads", where)
        window = d.get("sliding_window") if d.get("use_sliding_window", True) else None
        kwargs = dict(
            vocab_size=require(d, "vocab_size", where),
            hidden_size=require(d, "hidden_size", where),
            intermediate_size=require(d, "intermediate_size", where),
            num_hidden_layers=require(d, "num_hidden_layers", where),
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim"),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=scaling,
            max_position_embeddings=d.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            sliding_window=window,
            attention_bias=bool(d.get("attention_bias", False)),
            mlp_bias=bool(d.get("mlp_bias", False)),
            attention_dropout=float(d.get("attention_dropout", 0.0)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
            model_type=d.get("model_type", "llama"),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self) -> dict:
        """A config.json dict that transformers' AutoConfig reads (v5 rope_parameters form)."""
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope = dict(self.rope_scaling, rope_theta=self.rope_theta)
        arch = "MistralForCausalLM" if self.model_type == "mistral" else "LlamaForCausalLM"
        d = {
            "architectures": [arch], "model_type": self.model_type,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads, "head_dim": self.head_size,
            "rms_norm_eps": self.rms_norm_eps, "rope_parameters": rope,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias, "attention_dropout": self.attention_dropout,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id, "torch_dtype": "float32",
        }
        if self.model_type == "llama":
            d["mlp_bias"] = self.mlp_bias
        else:
            d["sliding_window"] = self.sliding_window
        if self.rope_scaling:
            d["rope_scaling"] = dict(self.rope_scaling)
        return d


class LlamaAttention(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x_BLD, cos, sin, mask_B1LS, kv_cache=None, cache_index=None, keep=0):
        """keep > 0: queries (and the output) for the last `keep` positions only; keys and
        values still come from all L (the last layer when only the last logits are wanted)."""
        c = self.config
        dt = to_dtype(c.dtype)
        b, l, _ = x_BLD.shape
        h, kvh, hd = c.num_attention_heads, c.num_key_value_heads, c.head_size
        proj = lambda n, f, axes: Projection(f, axes=axes, use_bias=c.attention_bias, dtype=dt, name=n)
        lq = keep or l
        q = proj("q_proj", h * hd, ("embed", "heads"))(x_BLD[:, l - lq:]).reshape(b, lq, h, hd)
        k = proj("k_proj", kvh * hd, ("embed", "kv_heads"))(x_BLD).reshape(b, l, kvh, hd)
        v = proj("v_proj", kvh * hd, ("embed", "kv_heads"))(x_BLD).reshape(b, l, kvh, hd)
        q = constrain(apply_rope(q, cos[:, l - lq:], sin[:, l - lq:]), ("batch", "length", "heads", "head_dim"))
        k = apply_rope(k, cos, sin)
        new_cache = None
        if kv_cache is not None:
            k_all, v_all = update_layer_cache(kv_cache[0], kv_cache[1], k, v, cache_index)
            new_cache = (k_all, v_all)
            k, v = k_all, v_all
        out = dot_product_attention(q, k, v, mask_B1LS[:, :, l - lq:], dropout_rate=c.attention_dropout,
                                    dropout_rng=dropout_rng(self, c.attention_dropout))
        out = out.reshape(b, lq, h * hd)
        o = Projection(c.hidden_size, axes=("heads", "embed"), use_bias=c.attention_bias,
                       dtype=dt, name="o_proj")(out)
        return o, new_cache


class LlamaMLP(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x_BLD):
        c = self.config
        dt = to_dtype(c.dtype)
        gate = Projection(c.intermediate_size, axes=("embed", "mlp"), use_bias=c.mlp_bias, dtype=dt, name="gate_proj")(x_BLD)
        up = Projection(c.intermediate_size, axes=("embed", "mlp"), use_bias=c.mlp_bias, dtype=dt, name="up_proj")(x_BLD)
        h = constrain(swiglu(gate, up), ("batch", "length", "mlp"))
        return Projection(c.hidden_size, axes=("mlp", "embed"), use_bias=c.mlp_bias, dtype=dt, name="down_proj")(h)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block. `hooks` (gmem.models.hooks) run before it ("pre") or after
    self-attention, before the MLP ("post_attn": where GMT's memory cross-attention sits)."""

    config: LlamaConfig
    hooks: tuple = ()

    @nn.compact
    def __call__(self, x_BLD, cos, sin, mask_B1LS, kv_cache=None, cache_index=None, hook_inputs=None,
                 keep=0):
        """keep > 0: return only the last `keep` positions (their keys/values still enter the
        cache for all L). hook_inputs: {hook input name: array} for this layer's hooks."""
        c = self.config
        dt = to_dtype(c.dtype)
        x_BLD = run_hooks(self.hooks, "pre", x_BLD, hook_inputs)
        h, new_cache = LlamaAttention(c, name="self_attn")(
            RMSNorm(c.rms_norm_eps, dtype=dt, name="input_layernorm")(x_BLD),
            cos, sin, mask_B1LS, kv_cache, cache_index, keep)
        x_BLD = (x_BLD[:, x_BLD.shape[1] - keep:] if keep else x_BLD) + h
        x_BLD = run_hooks(self.hooks, "post_attn", x_BLD, hook_inputs)
        h = LlamaMLP(c, name="mlp")(RMSNorm(c.rms_norm_eps, dtype=dt, name="post_attention_layernorm")(x_BLD))
        x_BLD = constrain(x_BLD + h, ("batch", "length", "embed"))
        return x_BLD, new_cache


def default_positions(attention_mask_BL: jax.Array, cache: KVCache | None) -> jax.Array:
    """Position ids from the padding mask: real tokens count 0, 1, 2, ... per row (pads get 1,
    like HF generate), continuing after the tokens already in the cache."""
    m = attention_mask_BL.astype(jnp.int32)
    pos = jnp.cumsum(m, axis=-1) - 1
    if cache is not None:
        pos = pos + cache.valid_BS.sum(-1, dtype=jnp.int32)[:, None]
    return jnp.where(m > 0, pos, 1)


class LlamaModel(nn.Module):
    """The decoder stack. hooks: blocks placed inside chosen layers (gmem.models.hooks).
    shared_prefix > 0 (with prefix_split) turns on the shared-prefix path for prompt passes
    longer than shared_prefix: see `_shared_prefix_forward`."""

    config: LlamaConfig
    hooks: tuple = ()
    shared_prefix: int = 0
    prefix_split: int = 0

    def setup(self):
        c = self.config
        dt = to_dtype(c.dtype)
        self.embed_tokens = Embed(c.vocab_size, c.hidden_size, dtype=dt)
        # static: `keep` (argument 8 counting self) decides shapes
        layer_cls = nn.remat(LlamaDecoderLayer, static_argnums=(8,)) if c.remat else LlamaDecoderLayer
        check_hooks(self.hooks, c.num_hidden_layers)
        self.layers = [layer_cls(c, hooks=layer_hooks(self.hooks, i)) for i in range(c.num_hidden_layers)]
        self.norm = RMSNorm(c.rms_norm_eps, dtype=dt)

    def __call__(self, input_ids_BL=None, attention_mask_BL=None, position_ids_BL=None,
                 cache: KVCache | None = None, inputs_embeds_BLD=None, hook_inputs=None, keep: int = 0):
        """Returns (hidden_BLD after the final norm, new cache or None). keep > 0: hidden states
        of the last `keep` positions only [B, keep, D] (the last layer computes no others)."""
        check_token_inputs(input_ids_BL, inputs_embeds_BLD, attention_mask_BL, position_ids_BL, cache=cache)
        c = self.config
        if inputs_embeds_BLD is None:
            b, l = input_ids_BL.shape
        else:
            b, l = inputs_embeds_BLD.shape[:2]
        if (self.shared_prefix and l > self.shared_prefix and position_ids_BL is None
                and inputs_embeds_BLD is None):
            if attention_mask_BL is None:
                attention_mask_BL = jnp.ones((b, l), jnp.int32)
            return self._shared_prefix_forward(input_ids_BL, attention_mask_BL, cache, hook_inputs, keep)
        x = self.embed_tokens(input_ids_BL) if inputs_embeds_BLD is None else inputs_embeds_BLD
        if attention_mask_BL is None:
            attention_mask_BL = jnp.ones((b, l), jnp.int32)
        if position_ids_BL is None:
            position_ids_BL = default_positions(attention_mask_BL, cache)
        x = constrain(x, ("batch", "length", "embed"))
        x, layer_kvs, valid = self._run(range(c.num_hidden_layers), x, position_ids_BL,
                                        attention_mask_BL, cache, hook_inputs, keep)
        return self.norm(x), written_cache(cache, layer_kvs, valid, l)

    def run_layers(self, x_BLD, position_ids_BL, attention_mask_BL, start: int, stop: int,
                   hook_inputs=None):
        """Decoder layers start..stop-1 on hidden states x_BLD [B, L, D] -> [B, L, D] (no cache,
        no final norm; that is `self.norm`). For a system that changes the rows between layers:
        GOFA runs its texts through the lower layers, expands node rows by a gather, and runs
        the upper layers (with its GNN hooks) on the expanded rows."""
        x, _, _ = self._run(range(start, stop), x_BLD, position_ids_BL, attention_mask_BL, None,
                            hook_inputs)
        return x

    def _run(self, layers, x, positions_BL, attention_mask_BL, cache, hook_inputs, keep=0):
        """Layers `layers` (indices) on x against `cache` (or alone); -> (x, [(k, v)], valid).
        keep > 0: x comes back as its last `keep` positions (the model's last layer, if among
        `layers`, computes only those)."""
        c = self.config
        cos, sin = rope_cos_sin(positions_BL, inverse_frequencies(c.head_size, c.rope_theta, c.rope_dict))
        mask, index, valid = decoder_mask(attention_mask_BL, cache, c.sliding_window)
        kvs = []
        for i in layers:
            last = keep if i == c.num_hidden_layers - 1 else 0
            x, kv = self.layers[i](x, cos, sin, mask, None if cache is None else cache.layer(i),
                                   index, hook_inputs, last)
            kvs.append(kv)
        if keep and x.shape[1] != keep:
            x = x[:, x.shape[1] - keep:]
        return x, kvs, valid

    def _shared_prefix_forward(self, input_ids_BL, attention_mask_BL, cache, hook_inputs, keep=0):
        """Same result as the plain forward, for rows that all begin with the same shared_prefix
        real tokens (row 0's are used), cheaper: layers below prefix_split, which hold nothing
        that differs between rows (no memory, no adapter), run on the prefix once (batch 1) and
        on each row's remainder against the prefix's keys/values; layers from prefix_split up
        run on whole rows. With the GMT template (84 shared tokens of ~100) this removes about
        two thirds of the work of the lower layers. Only for a prompt pass into an empty cache
        (or none): `cache` (if given) is filled for every layer as the plain forward fills it.
        """
        c = self.config
        p, split, n = self.shared_prefix, self.prefix_split, c.num_hidden_layers
        b, l = input_ids_BL.shape
        slots = l if cache is None else cache.slots
        lower = range(split)
        # 1. The shared prefix, once.
        pre = KVCache.zeros(split, 1, slots, c.num_key_value_heads, c.head_size, to_dtype(c.dtype))
        ones_1P = jnp.ones((1, p), attention_mask_BL.dtype)
        x_1PD, kvs, valid = self._run(lower, self.embed_tokens(input_ids_BL[:1, :p]),
                                      default_positions(ones_1P, pre), ones_1P, pre, None)
        pre = written_cache(pre, kvs, valid, p)
        # 2. Each row's remainder, reading the prefix's keys/values (broadcast over rows).
        rows = lambda a: jnp.broadcast_to(a, (b,) + a.shape[1:])
        pre = KVCache(tuple(map(rows, pre.keys)), tuple(map(rows, pre.values)), rows(pre.valid_BS),
                      pre.index)
        rest_BS = attention_mask_BL[:, p:]
        x_BSD, lower_kvs, _ = self._run(lower, self.embed_tokens(input_ids_BL[:, p:]),
                                        default_positions(rest_BS, pre), rest_BS, pre, None)
        # 3. Whole rows through the layers that differ per row.
        x = constrain(jnp.concatenate([rows(x_1PD), x_BSD], 1), ("batch", "length", "embed"))
        x, upper_kvs, valid = self._run(range(split, n), x, default_positions(attention_mask_BL, cache),
                                        attention_mask_BL, cache, hook_inputs, keep)
        return self.norm(x), written_cache(cache, lower_kvs + upper_kvs, valid, l)


class LlamaForCausalLM(nn.Module):
    """Causal LM: __call__(input_ids [B, L], ...) -> (logits [B, L, V] fp32, cache).

    shared_prefix / prefix_split: see LlamaModel._shared_prefix_forward (same parameters; use
    only on batches whose rows all start with the same shared_prefix real tokens)."""

    config: LlamaConfig
    hooks: tuple = ()
    shared_prefix: int = 0
    prefix_split: int = 0

    def setup(self):
        c = self.config
        self.model = LlamaModel(c, hooks=tuple(self.hooks), shared_prefix=self.shared_prefix,
                                prefix_split=self.prefix_split)
        if not c.tie_word_embeddings:
            self.lm_head = Projection(c.vocab_size, axes=("embed", "vocab"), dtype=to_dtype(c.dtype))

    def __call__(self, input_ids_BL=None, attention_mask_BL=None, position_ids_BL=None,
                 cache: KVCache | None = None, inputs_embeds_BLD=None, hook_inputs=None,
                 return_hidden: bool = False, logits_to_keep: int = 0):
        """logits_to_keep > 0 (HF's argument): logits (and hidden) of the last n positions only;
        the last decoder layer then computes only those (a prompt pass before decoding needs 1)."""
        h, cache = self.model(input_ids_BL, attention_mask_BL, position_ids_BL, cache=cache,
                              inputs_embeds_BLD=inputs_embeds_BLD, hook_inputs=hook_inputs,
                              keep=logits_to_keep)
        logits = self.lm_head(h) if not self.config.tie_word_embeddings else self.model.embed_tokens.attend(h)
        # fp32 (float64 under a float64 compute dtype: x64 finite-difference tests)
        logits = logits.astype(jnp.promote_types(jnp.float32, logits.dtype))
        logits = constrain(logits, ("batch", "length", "vocab"))
        if return_hidden:
            return logits, cache, h
        return logits, cache

    def embed(self, input_ids_BL):
        return self.model.embed_tokens(input_ids_BL)

    def init_cache(self, batch: int, slots: int) -> KVCache:
        c = self.config
        return KVCache.zeros(c.num_hidden_layers, batch, slots, c.num_key_value_heads, c.head_size,
                             to_dtype(c.dtype))
