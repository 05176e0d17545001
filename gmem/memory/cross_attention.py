"""GMT's memory cross-attention (MCA): the decoder reads M memory tokens between self-attention
and the MLP of chosen layers (specs/gofa-gmt.md B8).

    x2 = x1 + g * o_proj(Attn(q_proj(RMSNorm_mem(x1)), k_proj(mem), v_proj(mem)))

- q/k/v/o are Projections with the layer's self-attention shapes. `init_from_self_attention`
  copies that layer's self-attention weights into them; they stay frozen and are adapted only
  by LoRA (r 64, alpha 128, dropout 0.01: `memory_lora_spec`) through the adapter collection.
- g is a scalar initialised to 0, so at initialisation the model is exactly the base LLM. The
  reference uses g as is (no tanh): gate="scalar" is the default; gate="tanh" uses tanh(g), as
  Flamingo-style gates do (same start, bounded). RMSNorm_mem is fresh (scale 1) and trainable.
- No mask and no RoPE on the memory: memory tokens have no position. Keys and values of the
  memory are recomputed from the memory passed at every call (16 tokens, cheap), so decoding
  with a KV cache needs only the same memory at each step; nothing of it enters the cache.
- GQA works (k/v have kv_heads heads, as the layer's self-attention); the reference needed
  q/k/v/o all square (LLaMA-7B) and failed on GQA models.

Plug into a LLaMA-family model:

    hook = memory_hook(config, layers=(22, ..., 29))   # a gmem.models.hooks.DecoderHook
    model = LlamaForCausalLM(config, hooks=(hook,))
    params = init_from_self_attention(params, hook.layers)
    logits, cache = model.apply({"params": params, "adapter": lora}, ids,
                                hook_inputs={"memory": mem_BMD})
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from gmem.adapters import AdapterSpec
from gmem.errors import GmemError
from gmem.models.common import to_dtype
from gmem.models.hooks import DecoderHook
from gmem.nn.attention import constrain, dot_product_attention
from gmem.nn.norms import RMSNorm
from gmem.nn.projection import Projection

BLOCK_NAME = "memory_attn"   # the name the decoder layer gives the block (params path)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
GATES = ("scalar", "tanh")


class MemoryCrossAttention(nn.Module):
    """(h_BLD, memory_BMD) -> h_BLD. config: the decoder's config (LlamaConfig: hidden_size,
    num_attention_heads, num_key_value_heads, head_size, rms_norm_eps, attention_bias, dtype).

    Params: memory_layernorm/scale, q_proj, k_proj, v_proj, o_proj (kernels [in, out]),
    memory_gate [].
    """

    config: Any
    gate: str = "scalar"
    fold: bool = True   # False: always the direct path (tests compare the two)

    @nn.compact
    def __call__(self, x_BLD: jax.Array, memory_BMD: jax.Array) -> jax.Array:
        c = self.config
        if self.gate not in GATES:
            raise GmemError(f"memory gate: {self.gate!r} is not one of {GATES}")
        # Trace-time shape checks: both [B, *, D] with the decoder's width D and the same B.
        chex.assert_rank([x_BLD, memory_BMD], 3)
        chex.assert_axis_dimension(x_BLD, 2, c.hidden_size)
        chex.assert_axis_dimension(memory_BMD, 2, c.hidden_size)
        chex.assert_equal_shape_prefix([x_BLD, memory_BMD], 1)
        dt = to_dtype(c.dtype)
        b, l, _ = x_BLD.shape
        m = memory_BMD.shape[1]
        h, kvh, hd = c.num_attention_heads, c.num_key_value_heads, c.head_size
        bias = getattr(c, "attention_bias", False)
        proj = lambda n, f, axes: Projection(f, axes=axes, use_bias=bias, dtype=dt, name=n)
        mem = constrain(memory_BMD.astype(dt), ("batch", "memory", "embed"))
        xn = RMSNorm(c.rms_norm_eps, dtype=dt, name="memory_layernorm")(x_BLD)
        q_proj = proj("q_proj", h * hd, ("embed", "heads"))
        o_proj = proj("o_proj", c.hidden_size, ("heads", "embed"))
        k = proj("k_proj", kvh * hd, ("embed", "kv_heads"))(mem).reshape(b, m, kvh, hd)
        v = proj("v_proj", kvh * hd, ("embed", "kv_heads"))(mem).reshape(b, m, kvh, hd)
        if self._folds(l, m, bias, q_proj, o_proj):
            o = _folded_read(xn, k, v, q_proj, o_proj, h)
        else:
            q = constrain(q_proj(xn).reshape(b, l, h, hd), ("batch", "length", "heads", "head_dim"))
            o = o_proj(dot_product_attention(q, k, v, None).reshape(b, l, h * hd))
        g = self.param("memory_gate", nn.with_logical_partitioning(nn.initializers.zeros_init(), ()),
                       (), jnp.float32)
        g = jnp.tanh(g) if self.gate == "tanh" else g
        return constrain(x_BLD + g.astype(o.dtype) * o, ("batch", "length", "embed"))

    def _folds(self, l: int, m: int, bias: bool, q_proj: Projection, o_proj: Projection) -> bool:
        # Folding pays when the L queries outnumber the memory: it trades q_proj and o_proj
        # (L*D*D each) for M*D*D on the memory side plus L*D*H*M (H*M = 144 < D = 576 on
        # SmolLM2). Decoding (L = 1) and GMT's last layer (L = the response window) go direct.
        if not self.fold or bias or self.is_initializing() or l <= 2 * m:
            return False
        return all(not any(k.startswith("gift") for k in p.weights()[1]) for p in (q_proj, o_proj))


def _folded_read(xn_BLD, k_BMKE, v_BMKE, q_proj: Projection, o_proj: Projection, h: int) -> jax.Array:
    """o_proj(Attn(q_proj(xn), k, v)) [B, L, D] with both projections folded into the memory side.

    Attention is linear in q and o is linear in the attention output, so per head n (kv head
    n // G) and memory token j:
        score[l, n, j] = xn[l] . (Wq_n k_j) / sqrt(E)      + LoRA: (drop(xn) A_q)[l] . (B_q,n k_j)
        o[l]           = sum_{n,j} p[l, n, j] (v_j Wo_n)   + LoRA: scale * drop(out) A_o B_o
    The same sums as the direct path in another order (equal up to float rounding); the LoRA
    dropout draws are the projections' own, so the masks match the direct path's too.
    """
    b, m, kvh, e = k_BMKE.shape
    g = h // kvh
    dt = xn_BLD.dtype
    wq, aq = q_proj.weights()                                   # [D, H*E]
    wo, ao = o_proj.weights()                                   # [H*E, D]
    d = wq.shape[0]
    scale = e ** -0.5
    kq_BDN = jnp.einsum("dkge,bmke->bdkgm", wq.reshape(d, kvh, g, e), k_BMKE).reshape(b, d, h * m)
    scores = jnp.einsum("bld,bdn->bln", xn_BLD, kq_BDN)
    if "lora_A" in aq:
        bq = aq["lora_B"].astype(dt)
        bk_BRN = jnp.einsum("rkge,bmke->brkgm", bq.reshape(-1, kvh, g, e), k_BMKE).reshape(b, -1, h * m)
        scores = scores + jnp.einsum("blr,brn->bln", q_proj.lora_down(xn_BLD, aq), bk_BRN) * q_proj.lora_scale(aq)
    l = xn_BLD.shape[1]
    probs = jax.nn.softmax(scores.astype(jnp.float32).reshape(b, l, h, m) * scale, axis=-1)
    probs = probs.astype(dt).reshape(b, l, h * m)
    vo_BND = jnp.einsum("bmke,kged->bkgmd", v_BMKE, wo.reshape(kvh, g, e, -1)).reshape(b, h * m, -1)
    o = jnp.einsum("bln,bnd->bld", probs, vo_BND)
    if "lora_A" in ao:
        out = jnp.einsum("blkgm,bmke->blkge", probs.reshape(b, l, kvh, g, m), v_BMKE).reshape(b, l, h * e)
        o = o + o_proj.lora_delta(out, ao)
    return o


def memory_hook(config: Any, layers: Sequence[int], gate: str = "scalar") -> DecoderHook:
    """The decoder hook that puts the memory block after self-attention in `layers`, fed by
    hook_inputs["memory"] [B, M, D] (parameters at model/layers_i/memory_attn)."""
    if gate not in GATES:
        raise GmemError(f"memory gate: {gate!r} is not one of {GATES}")
    return DecoderHook(block=functools.partial(MemoryCrossAttention, config, gate=gate),
                       layers=tuple(layers), where="post_attn", input="memory", name=BLOCK_NAME)


def top_layers(num_hidden_layers: int, count: int = 8) -> tuple[int, ...]:
    """GMT's default memory layers: the top `count` decoder layers (0-based)."""
    if not 0 < count <= num_hidden_layers:
        raise GmemError(f"memory_layers: cannot take the top {count} of {num_hidden_layers} layers")
    return tuple(range(num_hidden_layers - count, num_hidden_layers))


def init_from_self_attention(params: dict, memory_layers: Sequence[int],
                             prefix: tuple = ("model",)) -> dict:
    """Copy each memory layer's self_attn q/k/v/o (kernels and biases) into its memory_attn.

    params: the model's params tree (plain or flax-boxed), e.g. variables["params"]. Returns a
    new tree; the input is not modified. Memory-block params missing from `params` (a base tree
    imported from HF) are created: gate 0, layernorm scale 1.
    """
    new = _copy_dicts(params)
    root = new
    for p in prefix:
        if p not in root:
            raise GmemError(f"params: no {'/'.join(prefix)} in the tree")
        root = root[p]
    for i in memory_layers:
        layer = root.get(f"layers_{i}")
        if layer is None or "self_attn" not in layer:
            raise GmemError(f"memory_layers: params have no {'/'.join(prefix)}/layers_{i}/self_attn")
        sa = layer["self_attn"]
        block = layer.setdefault(BLOCK_NAME, {})
        for n in PROJECTIONS:
            block[n] = dict(sa[n])
        kernel = sa["o_proj"]["kernel"]
        # Keep the tree's style: boxed (LogicallyPartitioned) leaves if the source has them.
        box = ((lambda v, names: nn.LogicallyPartitioned(v, names))
               if isinstance(kernel, nn.LogicallyPartitioned) else (lambda v, names: v))
        if "memory_gate" not in block:
            block["memory_gate"] = box(jnp.zeros((), jnp.float32), ())
        if "memory_layernorm" not in block:
            d = nn.unbox(kernel).shape[-1]
            block["memory_layernorm"] = {"scale": box(jnp.ones((d,), jnp.float32), ("embed",))}
    return new


def memory_lora_spec(rank: int = 64, alpha: float = 128.0, dropout: float = 0.01,
                     name: str = "memory"):
    """LoRA on the memory blocks' q/k/v/o only (GMT: r 64, alpha 128, dropout 0.01)."""
    return AdapterSpec(kind="lora", targets=tuple(f"{BLOCK_NAME}.{p}" for p in PROJECTIONS),
                       rank=rank, alpha=alpha, dropout=dropout, name=name)


def is_trainable_memory_param(path: Sequence[str]) -> bool:
    """GMT's stage-2 trainable LLM-side params besides LoRA: every memory_gate and
    memory_layernorm (the copied q/k/v/o stay frozen). path: the param's keys."""
    keys = [str(getattr(k, "key", k)) for k in path]
    return BLOCK_NAME in keys and ("memory_gate" in keys or "memory_layernorm" in keys)


def with_memory_params(llm: dict, mem: dict) -> dict:
    """The LLM tree with the trainable gates/norms put into each memory block."""
    model = dict(llm["model"])
    for name, leaves in mem.items():
        layer = dict(model[name])
        layer[BLOCK_NAME] = dict(layer[BLOCK_NAME], **leaves)
        model[name] = layer
    return dict(llm, model=model)


def memory_block_specs(llm_specs: dict, abs_llm: dict) -> dict:
    """Logical specs for memory blocks (copies of self_attn: same specs; gate/norm replicated)."""
    model = dict(llm_specs["model"])
    for name, layer in abs_llm["model"].items():
        if BLOCK_NAME in layer:
            sa = model[name]["self_attn"]
            blk = {k: sa[k] for k in ("q_proj", "k_proj", "v_proj", "o_proj")}
            blk["memory_gate"] = P()
            blk["memory_layernorm"] = {"scale": P(None)}
            model[name] = dict(model[name], **{BLOCK_NAME: blk})
    return dict(llm_specs, model=model)


def _copy_dicts(tree):
    # Fresh dict nodes (so the caller's tree is not mutated); leaves are shared.
    if isinstance(tree, dict) or hasattr(tree, "items") and not hasattr(tree, "shape"):
        return {k: _copy_dicts(v) for k, v in tree.items()}
    return tree
