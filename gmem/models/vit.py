"""Vision Transformer as HF ViTModel / ViTForImageClassification (transformers v5 module names).

Parameter paths follow HF v5 module names: embeddings/cls_token [1, 1, D],
embeddings/position_embeddings [1, N + 1, D], embeddings/patch_embeddings/projection,
layers_{i}/layernorm_before, layers_{i}/attention/{q,k,v,o}_proj, layers_{i}/layernorm_after,
layers_{i}/mlp/{fc1,fc2}, layernorm, pooler/dense (ViTModel); the classifier nests the encoder
under vit/ and adds classifier/ on the CLS token. Files written by transformers use the older
names (encoder.layer.{i}.attention.attention.query, ...): the key map reads and writes those.

Input pixel_values are NCHW [B, C, H, W] as in HF (the image processors' output), H and W equal
to config.image_size unless __call__ gets interpolate_pos_encoding=True (HF's argument): then
H and W are any multiples of the patch size, the CLS position is kept and the trained patch
grid of position embeddings is resized to (H / ph, W / pw) with torch's bicubic
(align_corners=False, gmem.nn.resize), as HF's ViTEmbeddings.interpolate_pos_encoding; an
unchanged grid is left as is (HF returns the embeddings unchanged for a same-size square image).

The patch embedding is HF's Conv2d with kernel = stride = patch: computed exactly as a matmul
of the flattened, non-overlapping patches with the conv kernel. Its kernel keeps the conv's 4-D
shape, stored as numpy's full transpose of HF's [D, C, ph, pw], i.e. [pw, ph, C, D], so the
key map's self-inverse "T" transform serves import and export. Because it is not a 2-D
Projection kernel, adapters do not hook the patch embedding (GIFT and LoRA target the
attention and MLP projections, which are Projections).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import chex
import flax.linen as nn
import jax.numpy as jnp

from gmem.errors import GmemError
from gmem.models.common import activation, dropout, dropout_rng, hf_dict, require, to_dtype
from gmem.nn.attention import constrain, dot_product_attention
from gmem.nn.norms import LayerNorm
from gmem.nn.projection import Projection
from gmem.nn.resize import resize_bicubic_hw


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of a ViT (HF field names).

    Args:
      image_size, patch_size: (height, width) pairs; HF's ints become squares.
      architecture: the HF class written to config.json by to_hf.
      hidden_dropout_prob, attention_probs_dropout_prob: dropout rates, used only when apply()
        gets a "dropout" rng (training).
      add_pooling_layer: ViTModel's pooler (dense + pooler_act on CLS); the classifier has none.
      labels: class names (HF id2label order); num_labels = len(labels) when given.
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-12
    image_size: tuple = (224, 224)
    patch_size: tuple = (16, 16)
    num_channels: int = 3
    qkv_bias: bool = True
    pooler_output_size: Optional[int] = None
    pooler_act: str = "tanh"
    num_labels: int = 2
    labels: tuple = ()
    problem_type: Optional[str] = None
    add_pooling_layer: bool = True
    architecture: str = "ViTForImageClassification"
    dtype: str = "float32"
    remat: bool = False

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1]

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @classmethod
    def from_hf(cls, hf_config: Any, **overrides) -> "ViTConfig":
        """From a transformers ViTConfig or its config.json dict."""
        d = hf_dict(hf_config)
        where = "config.json"
        activation(d.get("hidden_act", "gelu"), f"{where} hidden_act")
        activation(d.get("pooler_act", "tanh"), f"{where} pooler_act")
        id2label = d.get("id2label") or {}
        labels = tuple(str(id2label[k]) for k in sorted(id2label, key=int)) if id2label else ()
        archs = d.get("architectures") or []
        kwargs = dict(
            hidden_size=require(d, "hidden_size", where),
            num_hidden_layers=require(d, "num_hidden_layers", where),
            num_attention_heads=require(d, "num_attention_heads", where),
            intermediate_size=require(d, "intermediate_size", where),
            hidden_act=d.get("hidden_act", "gelu"),
            hidden_dropout_prob=float(d.get("hidden_dropout_prob", 0.0)),
            attention_probs_dropout_prob=float(d.get("attention_probs_dropout_prob", 0.0)),
            layer_norm_eps=d.get("layer_norm_eps", 1e-12),
            image_size=_pair(d.get("image_size", 224)),
            patch_size=_pair(d.get("patch_size", 16)),
            num_channels=d.get("num_channels", 3),
            qkv_bias=bool(d.get("qkv_bias", True)),
            pooler_output_size=d.get("pooler_output_size"),
            pooler_act=d.get("pooler_act", "tanh"),
            num_labels=len(labels) if labels else d.get("num_labels", 2),
            labels=labels,
            problem_type=d.get("problem_type"),
            architecture=next((a for a in archs if a in ("ViTModel", "ViTForImageClassification")),
                              "ViTForImageClassification"),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self) -> dict:
        """A config.json dict that transformers' AutoConfig reads."""
        labels = self.labels or tuple(f"LABEL_{i}" for i in range(self.num_labels))
        return {
            "architectures": [self.architecture], "model_type": "vit",
            "hidden_size": self.hidden_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size, "hidden_act": self.hidden_act,
            "hidden_dropout_prob": self.hidden_dropout_prob,
            "attention_probs_dropout_prob": self.attention_probs_dropout_prob,
            "layer_norm_eps": self.layer_norm_eps,
            "image_size": list(self.image_size) if self.image_size[0] != self.image_size[1] else self.image_size[0],
            "patch_size": list(self.patch_size) if self.patch_size[0] != self.patch_size[1] else self.patch_size[0],
            "num_channels": self.num_channels, "qkv_bias": self.qkv_bias,
            "pooler_output_size": self.pooler_output_size,  # None: HF uses hidden_size
            "pooler_act": self.pooler_act,
            "id2label": {str(i): n for i, n in enumerate(labels)},
            "label2id": {n: i for i, n in enumerate(labels)},
            "problem_type": self.problem_type, "torch_dtype": "float32",
        }


class ViTPatchProjection(nn.Module):
    """Conv2d(kernel = stride = patch) as a matmul over patches: [B, C, H, W] -> [B, N, D]."""

    config: ViTConfig

    @nn.compact
    def __call__(self, pixels_BCHW):
        c = self.config
        dt = to_dtype(c.dtype)
        (ph, pw), ch = c.patch_size, c.num_channels
        gh, gw = pixels_BCHW.shape[2] // ph, pixels_BCHW.shape[3] // pw  # callers check divisibility
        kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(
            in_axis=(0, 1, 2), out_axis=3), (None, None, None, "embed")), (pw, ph, ch, c.hidden_size))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
                          (c.hidden_size,))
        b = pixels_BCHW.shape[0]
        x = pixels_BCHW.astype(dt).reshape(b, ch, gh, ph, gw, pw)
        # Order each patch's values as (pw, ph, C) to match the stored kernel layout.
        x = x.transpose(0, 2, 4, 5, 3, 1).reshape(b, gh * gw, pw * ph * ch)
        y = jnp.dot(x, kernel.astype(dt).reshape(pw * ph * ch, c.hidden_size))
        return y + bias.astype(dt)


class ViTEmbeddings(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, pixels_BCHW, interpolate_pos_encoding: bool = False):
        c = self.config
        dt = to_dtype(c.dtype)
        b, ch, hgt, wid = pixels_BCHW.shape
        (ph, pw) = c.patch_size
        if ch != c.num_channels:
            raise GmemError(f"pixel_values: shape {pixels_BCHW.shape} does not match the config "
                            f"(num_channels={c.num_channels}); inputs are NCHW")
        if not interpolate_pos_encoding and (hgt, wid) != tuple(c.image_size):
            raise GmemError(f"pixel_values: image size {hgt}x{wid} does not match the config's "
                            f"image_size={tuple(c.image_size)} (inputs are NCHW); pass "
                            "interpolate_pos_encoding=True to resize the position embeddings")
        if hgt % ph or wid % pw:
            raise GmemError(f"pixel_values: image size {hgt}x{wid} is not a multiple of the "
                            f"patch size {ph}x{pw}")
        patches = _PatchEmbeddings(c, name="patch_embeddings")(pixels_BCHW)
        init = nn.initializers.truncated_normal(0.02)
        cls = self.param("cls_token", nn.with_logical_partitioning(init, (None, None, "embed")),
                         (1, 1, c.hidden_size))
        pos = self.param("position_embeddings", nn.with_logical_partitioning(init, (None, None, "embed")),
                         (1, c.num_patches + 1, c.hidden_size))
        pos = pos.astype(dt)
        grid = (hgt // ph, wid // pw)
        if interpolate_pos_encoding and grid != tuple(c.grid):
            patch_pos = pos[0, 1:].reshape(*c.grid, c.hidden_size)
            patch_pos = resize_bicubic_hw(patch_pos, grid).reshape(1, grid[0] * grid[1], c.hidden_size)
            pos = jnp.concatenate([pos[:, :1], patch_pos], axis=1)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(dt), (b, 1, c.hidden_size)), patches], axis=1)
        return dropout(self, x + pos, c.hidden_dropout_prob)


class _PatchEmbeddings(nn.Module):
    """HF ViTPatchEmbeddings: holds `projection` (the conv)."""

    config: ViTConfig

    @nn.compact
    def __call__(self, pixels_BCHW):
        return ViTPatchProjection(self.config, name="projection")(pixels_BCHW)


class ViTAttention(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, x_BLD):
        c = self.config
        dt = to_dtype(c.dtype)
        b, l, _ = x_BLD.shape
        h, hd = c.num_attention_heads, c.head_size
        proj = lambda n: Projection(h * hd, axes=("embed", "heads"), use_bias=c.qkv_bias, dtype=dt, name=n)
        q = constrain(proj("q_proj")(x_BLD).reshape(b, l, h, hd), ("batch", "length", "heads", "head_dim"))
        k = proj("k_proj")(x_BLD).reshape(b, l, h, hd)
        v = proj("v_proj")(x_BLD).reshape(b, l, h, hd)
        rate = c.attention_probs_dropout_prob
        out = dot_product_attention(q, k, v, None, dropout_rate=rate, dropout_rng=dropout_rng(self, rate))
        out = out.reshape(b, l, h * hd)
        return Projection(c.hidden_size, axes=("heads", "embed"), use_bias=True, dtype=dt, name="o_proj")(out)


class ViTMLP(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, x_BLD):
        c = self.config
        dt = to_dtype(c.dtype)
        h = Projection(c.intermediate_size, axes=("embed", "mlp"), use_bias=True, dtype=dt, name="fc1")(x_BLD)
        h = constrain(activation(c.hidden_act)(h), ("batch", "length", "mlp"))
        return Projection(c.hidden_size, axes=("mlp", "embed"), use_bias=True, dtype=dt, name="fc2")(h)


class ViTLayer(nn.Module):
    """Pre-norm block: x + attn(layernorm_before(x)), then x + mlp(layernorm_after(x))."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x_BLD):
        c = self.config
        dt = to_dtype(c.dtype)
        h = ViTAttention(c, name="attention")(LayerNorm(c.layer_norm_eps, dtype=dt, name="layernorm_before")(x_BLD))
        x_BLD = x_BLD + dropout(self, h, c.hidden_dropout_prob)
        h = ViTMLP(c, name="mlp")(LayerNorm(c.layer_norm_eps, dtype=dt, name="layernorm_after")(x_BLD))
        return constrain(x_BLD + dropout(self, h, c.hidden_dropout_prob), ("batch", "length", "embed"))


class ViTPooler(nn.Module):
    """pooler_act(dense(CLS)): [B, L, D] -> [B, P]."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x_BLD):
        c = self.config
        h = Projection(c.pooler_output_size or c.hidden_size, axes=("embed", "mlp"), use_bias=True,
                       dtype=to_dtype(c.dtype), name="dense")(x_BLD[:, 0])
        return activation(c.pooler_act)(h)


class ViTModel(nn.Module):
    """__call__(pixel_values [B, C, H, W], interpolate_pos_encoding=False) -> (last hidden
    [B, N + 1, D] after the final layernorm, pooled [B, P] or None), compute dtype. Token 0 is
    CLS. interpolate_pos_encoding (a Python bool, static under jit) allows other image sizes."""

    config: ViTConfig
    add_pooling_layer: Optional[bool] = None

    def setup(self):
        c = self.config
        dt = to_dtype(c.dtype)
        self.embeddings = ViTEmbeddings(c)
        layer = nn.remat(ViTLayer, static_argnums=()) if c.remat else ViTLayer
        self.layers = [layer(c) for _ in range(c.num_hidden_layers)]
        self.layernorm = LayerNorm(c.layer_norm_eps, dtype=dt)
        pool = c.add_pooling_layer if self.add_pooling_layer is None else self.add_pooling_layer
        if pool:
            self.pooler = ViTPooler(c)

    def __call__(self, pixel_values_BCHW, interpolate_pos_encoding: bool = False):
        chex.assert_rank(pixel_values_BCHW, 4)  # NCHW; channels and size are checked with GmemErrors
        x = constrain(self.embeddings(pixel_values_BCHW, interpolate_pos_encoding), ("batch", "length", "embed"))
        for layer in self.layers:
            x = layer(x)
        x = self.layernorm(x)
        pooled = None
        if hasattr(self, "pooler"):
            pooled = self.pooler(x)
        return x, pooled


class ViTForImageClassification(nn.Module):
    """ViT (no pooler) + linear classifier on the CLS token: -> logits [B, num_labels] fp32."""

    config: ViTConfig

    @nn.compact
    def __call__(self, pixel_values_BCHW, interpolate_pos_encoding: bool = False):
        c = self.config
        x, _ = ViTModel(c, add_pooling_layer=False, name="vit")(pixel_values_BCHW, interpolate_pos_encoding)
        logits = Projection(c.num_labels, axes=("embed", None), use_bias=True, dtype=to_dtype(c.dtype),
                            name="classifier")(x[:, 0])
        return logits.astype(jnp.float32)


def example_inputs(config: ViTConfig) -> tuple:
    """Inputs of the right shape for module.init: one NCHW image of zeros."""
    return (jnp.zeros((1, config.num_channels, *config.image_size), jnp.float32),)
