"""BERT and RoBERTa encoders as HF BertModel / RobertaModel and their ForSequenceClassification.

Parameter paths follow HF module names: embeddings/{word,position,token_type}_embeddings,
embeddings/LayerNorm, encoder/layer_{i}/attention/self/{query,key,value},
encoder/layer_{i}/attention/output/{dense,LayerNorm}, encoder/layer_{i}/intermediate/dense,
encoder/layer_{i}/output/{dense,LayerNorm}, pooler/dense. The classification models nest the
encoder under bert/ or roberta/ as HF does, with classifier/ (BERT: one linear on the pooled
output; RoBERTa: classifier/dense + tanh + classifier/out_proj on the first token).

The two families differ only in positions: BERT counts 0..L-1 (whatever the padding, as HF);
RoBERTa counts real tokens from pad_token_id + 1 and gives pads pad_token_id, read from
input_ids != pad_token_id exactly as HF's create_position_ids_from_input_ids.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmem.errors import GmemError
from gmem.models.common import activation, dropout, dropout_rng, hf_dict, require, to_dtype
from gmem.nn.attention import constrain, dot_product_attention, make_mask
from gmem.nn.checks import check_token_inputs
from gmem.nn.embeddings import Embed
from gmem.nn.norms import LayerNorm
from gmem.nn.projection import Projection

_ARCHS = ("BertModel", "BertForSequenceClassification", "RobertaModel", "RobertaForSequenceClassification")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT or RoBERTa encoder (HF field names).

    Args:
      model_type: "bert" or "roberta" (decides the position ids and the classification head).
      architecture: the HF class written to config.json by to_hf (None: the base model).
      hidden_dropout_prob, attention_probs_dropout_prob, classifier_dropout: rates used only
        when apply() gets a "dropout" rng (training).
      add_pooling_layer: BertModel/RobertaModel pooler (dense + tanh on the first token).
      labels: class names (HF id2label order); num_labels = len(labels) when given.
      dtype: compute dtype name; parameters stay float32.
      remat: rematerialise each layer in the backward pass.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    num_labels: int = 2
    labels: tuple = ()
    classifier_dropout: Optional[float] = None
    problem_type: Optional[str] = None
    add_pooling_layer: bool = True
    model_type: str = "bert"
    architecture: Optional[str] = None
    dtype: str = "float32"
    remat: bool = False

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, hf_config: Any, **overrides) -> "BertConfig":
        """From a transformers BertConfig/RobertaConfig or its config.json dict."""
        d = hf_dict(hf_config)
        where = "config.json"
        model_type = d.get("model_type", "bert")
        if model_type not in ("bert", "roberta"):
            raise GmemError(f"{where}: model_type={model_type!r}; gmem's BERT family serves 'bert' and 'roberta'")
        if d.get("is_decoder") or d.get("add_cross_attention"):
            raise GmemError(f"{where}: is_decoder/add_cross_attention are not supported by gmem's BERT")
        activation(d.get("hidden_act", "gelu"), f"{where} hidden_act")
        id2label = d.get("id2label") or {}
        labels = tuple(str(id2label[k]) for k in sorted(id2label, key=int)) if id2label else ()
        archs = d.get("architectures") or []
        default_arch = "RobertaModel" if model_type == "roberta" else "BertModel"
        kwargs = dict(
            vocab_size=require(d, "vocab_size", where),
            hidden_size=require(d, "hidden_size", where),
            num_hidden_layers=require(d, "num_hidden_layers", where),
            num_attention_heads=require(d, "num_attention_heads", where),
            intermediate_size=require(d, "intermediate_size", where),
            hidden_act=d.get("hidden_act", "gelu"),
            hidden_dropout_prob=float(d.get("hidden_dropout_prob", 0.1)),
            attention_probs_dropout_prob=float(d.get("attention_probs_dropout_prob", 0.1)),
            max_position_embeddings=d.get("max_position_embeddings", 512),
            type_vocab_size=d.get("type_vocab_size", 2),
            layer_norm_eps=d.get("layer_norm_eps", 1e-12),
            pad_token_id=d.get("pad_token_id", 1 if model_type == "roberta" else 0),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            num_labels=len(labels) if labels else d.get("num_labels", 2),
            labels=labels,
            classifier_dropout=d.get("classifier_dropout"),
            problem_type=d.get("problem_type"),
            model_type=model_type,
            architecture=next((a for a in archs if a in _ARCHS), default_arch),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self) -> dict:
        """A config.json dict that transformers' AutoConfig reads."""
        labels = self.labels or tuple(f"LABEL_{i}" for i in range(self.num_labels))
        return {
            "architectures": [self.architecture or ("RobertaModel" if self.model_type == "roberta" else "BertModel")],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size, "hidden_act": self.hidden_act,
            "hidden_dropout_prob": self.hidden_dropout_prob,
            "attention_probs_dropout_prob": self.attention_probs_dropout_prob,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size, "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id, "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "id2label": {str(i): n for i, n in enumerate(labels)},
            "label2id": {n: i for i, n in enumerate(labels)},
            "classifier_dropout": self.classifier_dropout, "problem_type": self.problem_type,
            "torch_dtype": "float32",
        }


def position_ids(config: BertConfig, input_ids_BL, batch: int, length: int) -> jax.Array:
    """Default position ids [B, L] (HF semantics; see the module docstring)."""
    if config.model_type != "roberta":
        return jnp.broadcast_to(jnp.arange(length), (batch, length))
    pad = config.pad_token_id
    if input_ids_BL is None:  # from embeddings HF cannot tell pads apart: sequential
        return jnp.broadcast_to(jnp.arange(length) + pad + 1, (batch, length))
    real = (input_ids_BL != pad).astype(jnp.int32)
    return jnp.cumsum(real, axis=-1) * real + pad


class BertEmbeddings(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids_BL, token_type_ids_BL, position_ids_BL, inputs_embeds_BLD=None):
        c = self.config
        dt = to_dtype(c.dtype)
        if inputs_embeds_BLD is None:
            x = Embed(c.vocab_size, c.hidden_size, dtype=dt, name="word_embeddings")(input_ids_BL)
        else:
            x = inputs_embeds_BLD.astype(dt)
        # Position and type tables are small and indexed by position/segment: not sharded.
        x = x + Embed(c.type_vocab_size, c.hidden_size, axes=(None, "embed"), dtype=dt,
                      name="token_type_embeddings")(token_type_ids_BL)
        x = x + Embed(c.max_position_embeddings, c.hidden_size, axes=(None, "embed"), dtype=dt,
                      name="position_embeddings")(position_ids_BL)
        x = LayerNorm(c.layer_norm_eps, dtype=dt, name="LayerNorm")(x)
        return dropout(self, x, c.hidden_dropout_prob)


class BertSelfAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x_BLD, mask_B1LS):
        c = self.config
        dt = to_dtype(c.dtype)
        b, l, _ = x_BLD.shape
        h, hd = c.num_attention_heads, c.head_size
        proj = lambda n: Projection(h * hd, axes=("embed", "heads"), use_bias=True, dtype=dt, name=n)
        q = constrain(proj("query")(x_BLD).reshape(b, l, h, hd), ("batch", "length", "heads", "head_dim"))
        k = proj("key")(x_BLD).reshape(b, l, h, hd)
        v = proj("value")(x_BLD).reshape(b, l, h, hd)
        rate = c.attention_probs_dropout_prob
        out = dot_product_attention(q, k, v, mask_B1LS, dropout_rate=rate, dropout_rng=dropout_rng(self, rate))
        return out.reshape(b, l, h * hd)


class BertAddNorm(nn.Module):
    """HF BertSelfOutput / BertOutput: LayerNorm(dense(h) + residual)."""

    config: BertConfig
    in_axis: str = "heads"

    @nn.compact
    def __call__(self, h, residual_BLD):
        c = self.config
        dt = to_dtype(c.dtype)
        h = Projection(c.hidden_size, axes=(self.in_axis, "embed"), use_bias=True, dtype=dt, name="dense")(h)
        h = dropout(self, h, c.hidden_dropout_prob)
        return LayerNorm(c.layer_norm_eps, dtype=dt, name="LayerNorm")(h + residual_BLD)


class BertAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x_BLD, mask_B1LS):
        h = BertSelfAttention(self.config, name="self")(x_BLD, mask_B1LS)
        return BertAddNorm(self.config, "heads", name="output")(h, x_BLD)


class BertLayer(nn.Module):
    """Post-norm block: attention + add&norm, then intermediate (dense + act) + add&norm."""

    config: BertConfig

    @nn.compact
    def __call__(self, x_BLD, mask_B1LS):
        c = self.config
        x_BLD = BertAttention(c, name="attention")(x_BLD, mask_B1LS)
        h = _Intermediate(c, name="intermediate")(x_BLD)
        x_BLD = BertAddNorm(c, "mlp", name="output")(h, x_BLD)
        return constrain(x_BLD, ("batch", "length", "embed"))


class _Intermediate(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x_BLD):
        c = self.config
        h = Projection(c.intermediate_size, axes=("embed", "mlp"), use_bias=True,
                       dtype=to_dtype(c.dtype), name="dense")(x_BLD)
        return constrain(activation(c.hidden_act)(h), ("batch", "length", "mlp"))


class BertEncoder(nn.Module):
    config: BertConfig

    def setup(self):
        c = self.config
        layer = nn.remat(BertLayer, static_argnums=()) if c.remat else BertLayer
        self.layer = [layer(c) for _ in range(c.num_hidden_layers)]

    def __call__(self, x_BLD, mask_B1LS):
        for layer in self.layer:
            x_BLD = layer(x_BLD, mask_B1LS)
        return x_BLD


class BertPooler(nn.Module):
    """tanh(dense(first token)): [B, L, D] -> [B, D]."""

    config: BertConfig

    @nn.compact
    def __call__(self, x_BLD):
        c = self.config
        h = Projection(c.hidden_size, axes=("embed", "mlp"), use_bias=True, dtype=to_dtype(c.dtype),
                       name="dense")(x_BLD[:, 0])
        return jnp.tanh(h)


class BertModel(nn.Module):
    """Encoder: __call__(input_ids [B, L], attention_mask [B, L], token_type_ids [B, L],
    position_ids [B, L]) -> (last hidden [B, L, D], pooled [B, D] or None), compute dtype.
    attention_mask marks real tokens (1) and pads (0); pads are hidden as keys only."""

    config: BertConfig
    add_pooling_layer: Optional[bool] = None

    @nn.compact
    def __call__(self, input_ids_BL=None, attention_mask_BL=None, token_type_ids_BL=None,
                 position_ids_BL=None, inputs_embeds_BLD=None):
        check_token_inputs(input_ids_BL, inputs_embeds_BLD, attention_mask_BL, token_type_ids_BL, position_ids_BL)
        c = self.config
        b, l = (input_ids_BL if inputs_embeds_BLD is None else inputs_embeds_BLD).shape[:2]
        if attention_mask_BL is None:
            attention_mask_BL = jnp.ones((b, l), jnp.int32)
        if token_type_ids_BL is None:
            token_type_ids_BL = jnp.zeros((b, l), jnp.int32)
        if position_ids_BL is None:
            position_ids_BL = position_ids(c, input_ids_BL, b, l)
        x = BertEmbeddings(c, name="embeddings")(input_ids_BL, token_type_ids_BL, position_ids_BL,
                                                 inputs_embeds_BLD)
        x = constrain(x, ("batch", "length", "embed"))
        mask = make_mask(jnp.arange(l), attention_mask_BL, causal=False)
        x = BertEncoder(c, name="encoder")(x, mask)
        pool = c.add_pooling_layer if self.add_pooling_layer is None else self.add_pooling_layer
        pooled = BertPooler(c, name="pooler")(x) if pool else None
        return x, pooled


RobertaModel = BertModel  # same modules; config.model_type == "roberta" selects the positions


class BertForSequenceClassification(nn.Module):
    """BERT + dropout + linear on the pooled output: -> logits [B, num_labels] fp32."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids_BL=None, attention_mask_BL=None, token_type_ids_BL=None,
                 position_ids_BL=None, inputs_embeds_BLD=None):
        c = self.config
        _, pooled = BertModel(c, add_pooling_layer=True, name="bert")(
            input_ids_BL, attention_mask_BL, token_type_ids_BL, position_ids_BL, inputs_embeds_BLD)
        rate = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
        pooled = dropout(self, pooled, rate)
        logits = Projection(c.num_labels, axes=("embed", None), use_bias=True, dtype=to_dtype(c.dtype),
                            name="classifier")(pooled)
        return logits.astype(jnp.float32)


class RobertaClassificationHead(nn.Module):
    """HF's head: out_proj(tanh(dense(dropout(x[:, 0])))) with dropout before out_proj."""

    config: BertConfig

    @nn.compact
    def __call__(self, x_BLD):
        c = self.config
        dt = to_dtype(c.dtype)
        rate = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
        h = dropout(self, x_BLD[:, 0], rate)
        h = jnp.tanh(Projection(c.hidden_size, axes=("embed", "mlp"), use_bias=True, dtype=dt, name="dense")(h))
        h = dropout(self, h, rate)
        return Projection(c.num_labels, axes=("mlp", None), use_bias=True, dtype=dt, name="out_proj")(h)


class RobertaForSequenceClassification(nn.Module):
    """RoBERTa (no pooler) + classification head on <s>: -> logits [B, num_labels] fp32."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids_BL=None, attention_mask_BL=None, token_type_ids_BL=None,
                 position_ids_BL=None, inputs_embeds_BLD=None):
        c = self.config
        x, _ = BertModel(c, add_pooling_layer=False, name="roberta")(
            input_ids_BL, attention_mask_BL, token_type_ids_BL, position_ids_BL, inputs_embeds_BLD)
        return RobertaClassificationHead(c, name="classifier")(x).astype(jnp.float32)
