"""GPT-2 as HF GPT2LMHeadModel: learned positions, pre-norm blocks, fused q|k|v, tied LM head.

Parameter paths follow HF module names: transformer/wte, transformer/wpe, transformer/h_{i}/ln_1,
transformer/h_{i}/attn/c_attn (fused q|k|v, kernel [D, 3D]), attn/c_proj, ln_2, mlp/c_fc,
mlp/c_proj, transformer/ln_f; lm_head only when the embeddings are not tied. HF's Conv1D
weights are already [in, out], so they load without a transpose.

Same call interface as LlamaForCausalLM, so gmem.models.generate serves both:
    logits_BLV, cache = GPT2LMHeadModel(cfg).apply(vars, input_ids_BL, attention_mask_BL,
                                                    position_ids_BL=None, cache=None)
Position ids default to the padding mask's running count (left padding works like HF generate);
HF's forward without position_ids uses 0..L-1 whatever the padding.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from gmem.errors import GmemError
from gmem.models.common import activation, dropout, dropout_rng, hf_dict, require, to_dtype
from gmem.models.hooks import check_hooks, layer_hooks, run_hooks
from gmem.models.llama import default_positions
from gmem.nn.attention import (KVCache, constrain, decoder_mask, dot_product_attention,
                               update_layer_cache, written_cache)
from gmem.nn.checks import check_token_inputs
from gmem.nn.embeddings import Embed
from gmem.nn.norms import LayerNorm
from gmem.nn.projection import Projection


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Hyper-parameters of a GPT-2 decoder (HF field names).

    Args:
      n_inner: MLP width; None = 4 * n_embd.
      scale_attn_by_inverse_layer_idx: also divide layer i's scores by i + 1 (HF option).
      resid_pdrop, embd_pdrop, attn_pdrop: dropout rates (residual, embeddings, attention
        probabilities), used only when apply() gets a "dropout" rng (training).
      dtype: compute dtype name; parameters stay float32.
      remat: rematerialise each block in the backward pass.
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: Optional[int] = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    tie_word_embeddings: bool = True
    bos_token_id: Optional[int] = 50256
    eos_token_id: Any = 50256
    pad_token_id: Optional[int] = None
    dtype: str = "float32"
    remat: bool = False

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    # The names every family answers to (gmem.models.family).
    model_type = "gpt2"

    @property
    def hidden_size(self) -> int:
        return self.n_embd

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @property
    def num_attention_heads(self) -> int:
        return self.n_head

    @property
    def inner_size(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @classmethod
    def from_hf(cls, hf_config: Any, **overrides) -> "GPT2Config":
        """From a transformers GPT2Config or its config.json dict."""
        d = hf_dict(hf_config)
        where = "config.json"
        activation(d.get("activation_function", "gelu_new"), f"{where} activation_function")
        if d.get("add_cross_attention"):
            raise GmemError(f"{where}: add_cross_attention=True is not supported by gmem's GPT-2")
        kwargs = dict(
            vocab_size=require(d, "vocab_size", where),
            n_positions=d.get("n_positions", 1024),
            n_embd=require(d, "n_embd", where),
            n_layer=require(d, "n_layer", where),
            n_head=require(d, "n_head", where),
            n_inner=d.get("n_inner"),
            activation_function=d.get("activation_function", "gelu_new"),
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
            scale_attn_weights=bool(d.get("scale_attn_weights", True)),
            scale_attn_by_inverse_layer_idx=bool(d.get("scale_attn_by_inverse_layer_idx", False)),
            resid_pdrop=float(d.get("resid_pdrop", 0.1)),
            embd_pdrop=float(d.get("embd_pdrop", 0.1)),
            attn_pdrop=float(d.get("attn_pdrop", 0.1)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self) -> dict:
        """A config.json dict that transformers' AutoConfig reads."""
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": self.vocab_size, "n_positions": self.n_positions,
            "n_embd": self.n_embd, "n_layer": self.n_layer, "n_head": self.n_head,
            "n_inner": self.n_inner, "activation_function": self.activation_function,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "scale_attn_weights": self.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx": self.scale_attn_by_inverse_layer_idx,
            "reorder_and_upcast_attn": False, "resid_pdrop": self.resid_pdrop,
            "embd_pdrop": self.embd_pdrop, "attn_pdrop": self.attn_pdrop,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id, "torch_dtype": "float32",
        }


class GPT2Attention(nn.Module):
    config: GPT2Config
    layer_idx: int = 0

    @nn.compact
    def __call__(self, x_BLD, mask_B1LS, kv_cache=None, cache_index=None):
        c = self.config
        dt = to_dtype(c.dtype)
        b, l, d = x_BLD.shape
        h, hd = c.n_head, c.head_size
        # Fused q|k|v as in HF, so adapters targeting "c_attn" see the same module.
        qkv = Projection(3 * d, axes=("embed", "heads"), use_bias=True, dtype=dt, name="c_attn")(x_BLD)
        q, k, v = (t.reshape(b, l, h, hd) for t in jnp.split(qkv, 3, axis=-1))
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        new_cache = None
        if kv_cache is not None:
            k, v = update_layer_cache(kv_cache[0], kv_cache[1], k, v, cache_index)
            new_cache = (k, v)
        scale = hd ** -0.5 if c.scale_attn_weights else 1.0
        if c.scale_attn_by_inverse_layer_idx:
            scale /= float(self.layer_idx + 1)
        out = dot_product_attention(q, k, v, mask_B1LS, scale=scale, dropout_rate=c.attn_pdrop,
                                    dropout_rng=dropout_rng(self, c.attn_pdrop)).reshape(b, l, d)
        out = Projection(d, axes=("heads", "embed"), use_bias=True, dtype=dt, name="c_proj")(out)
        return dropout(self, out, c.resid_pdrop), new_cache


class GPT2MLP(nn.Module):
    config: GPT2Config

    @nn.compact
    def __call__(self, x_BLD):
        c = self.config
        dt = to_dtype(c.dtype)
        h = Projection(c.inner_size, axes=("embed", "mlp"), use_bias=True, dtype=dt, name="c_fc")(x_BLD)
        h = constrain(activation(c.activation_function)(h), ("batch", "length", "mlp"))
        h = Projection(c.n_embd, axes=("mlp", "embed"), use_bias=True, dtype=dt, name="c_proj")(h)
        return dropout(self, h, c.resid_pdrop)


class GPT2Block(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)). `hooks` (gmem.models.hooks)
    run before the block ("pre") or between attention and the MLP ("post_attn")."""

    config: GPT2Config
    layer_idx: int = 0
    hooks: tuple = ()

    @nn.compact
    def __call__(self, x_BLD, mask_B1LS, kv_cache=None, cache_index=None, hook_inputs=None):
        c = self.config
        dt = to_dtype(c.dtype)
        x_BLD = run_hooks(self.hooks, "pre", x_BLD, hook_inputs)
        h, new_cache = GPT2Attention(c, self.layer_idx, name="attn")(
            LayerNorm(c.layer_norm_epsilon, dtype=dt, name="ln_1")(x_BLD), mask_B1LS, kv_cache, cache_index)
        x_BLD = run_hooks(self.hooks, "post_attn", x_BLD + h, hook_inputs)
        h = GPT2MLP(c, name="mlp")(LayerNorm(c.layer_norm_epsilon, dtype=dt, name="ln_2")(x_BLD))
        return constrain(x_BLD + h, ("batch", "length", "embed")), new_cache


class GPT2Model(nn.Module):
    config: GPT2Config
    hooks: tuple = ()

    def setup(self):
        c = self.config
        dt = to_dtype(c.dtype)
        self.wte = Embed(c.vocab_size, c.n_embd, dtype=dt)
        # Position table rows are positions, not a shardable vocabulary.
        self.wpe = Embed(c.n_positions, c.n_embd, axes=(None, "embed"), dtype=dt, embedding_init=nn.initializers.normal(0.01))
        block = nn.remat(GPT2Block, static_argnums=()) if c.remat else GPT2Block
        check_hooks(self.hooks, c.n_layer)
        self.h = [block(c, i, layer_hooks(self.hooks, i)) for i in range(c.n_layer)]
        self.ln_f = LayerNorm(c.layer_norm_epsilon, dtype=dt)

    def __call__(self, input_ids_BL=None, attention_mask_BL=None, position_ids_BL=None,
                 cache: KVCache | None = None, inputs_embeds_BLD=None, hook_inputs=None):
        """Returns (hidden_BLD after ln_f, new cache or None)."""
        check_token_inputs(input_ids_BL, inputs_embeds_BLD, attention_mask_BL, position_ids_BL, cache=cache)
        x = self.wte(input_ids_BL) if inputs_embeds_BLD is None else inputs_embeds_BLD.astype(to_dtype(self.config.dtype))
        b, l = x.shape[:2]
        if attention_mask_BL is None:
            attention_mask_BL = jnp.ones((b, l), jnp.int32)
        if position_ids_BL is None:
            position_ids_BL = default_positions(attention_mask_BL, cache)
        x = constrain(x + self.wpe(position_ids_BL), ("batch", "length", "embed"))
        x = dropout(self, x, self.config.embd_pdrop)
        mask, index, valid = decoder_mask(attention_mask_BL, cache)
        layer_kvs = []
        for i, block in enumerate(self.h):
            kv = None if cache is None else cache.layer(i)
            x, new_kv = block(x, mask, kv, index, hook_inputs)
            layer_kvs.append(new_kv)
        new_cache = written_cache(cache, layer_kvs, valid, l)
        return self.ln_f(x), new_cache


class GPT2LMHeadModel(nn.Module):
    """Causal LM: __call__(input_ids [B, L], ...) -> (logits [B, L, V] fp32, cache)."""

    config: GPT2Config
    hooks: tuple = ()

    def setup(self):
        c = self.config
        self.transformer = GPT2Model(c, hooks=tuple(self.hooks))
        if not c.tie_word_embeddings:
            self.lm_head = Projection(c.vocab_size, axes=("embed", "vocab"), dtype=to_dtype(c.dtype))

    def __call__(self, input_ids_BL=None, attention_mask_BL=None, position_ids_BL=None,
                 cache: KVCache | None = None, inputs_embeds_BLD=None, hook_inputs=None,
                 return_hidden: bool = False, logits_to_keep: int = 0):
        """logits_to_keep > 0 (HF's argument): logits (and hidden) of the last n positions only."""
        h, cache = self.transformer(input_ids_BL, attention_mask_BL, position_ids_BL, cache=cache,
                                    inputs_embeds_BLD=inputs_embeds_BLD, hook_inputs=hook_inputs)
        if logits_to_keep:
            h = h[:, h.shape[1] - logits_to_keep:]
        logits = self.transformer.wte.attend(h) if self.config.tie_word_embeddings else self.lm_head(h)
        logits = constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))
        if return_hidden:
            return logits, cache, h
        return logits, cache

    def embed(self, input_ids_BL):
        """Token embeddings only (positions are added inside the model), [B, L] -> [B, L, D]."""
        return self.transformer.wte(input_ids_BL)

    def init_cache(self, batch: int, slots: int) -> KVCache:
        c = self.config
        return KVCache.zeros(c.n_layer, batch, slots, c.n_head, c.head_size, to_dtype(c.dtype))
