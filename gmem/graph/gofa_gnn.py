"""GOFA's GNN layer (`GOFAGNNConv`, the form of the released checkpoints; spec A5).

Every node carries K memory-token states of width D (the LLM's hidden states at its memory
slots). One layer rewrites them from the node's in-neighbours (messages go sender -> receiver):

    R = X ; Xn = RMSNorm_x(X) ; XEn = RMSNorm_xe(XE)
    Q, K, V = split3(Xn W_qkv)            W_qkv [D, 3D], no bias
    EK, EV  = split2(XEn W_e)             W_e   [D, 2D], no bias
    per edge e = (j -> i), token t, channel c:
        s_e  = Q[i,t,c] * (K[j,t,c] + EK[e,t,c])        (head size 1, so no 1/sqrt scaling)
        a_e  = softmax of s over the in-edges of i, separately for every (t, c)
        A[i,t,c] = sum_e a_e (V[j,t,c] + EV[e,t,c])     (0 for a node with no in-edges)
    H  = R + tanh(attn_gate) * (A W_o)                  W_o [D, D], no bias
    X' = H + tanh(ff_gate) * MLP(RMSNorm_post(H))
    MLP = Linear(D, 2D, bias) -> RMSNorm(2D) -> ReLU -> Linear(2D, D, bias)   ("gp" MLP)

So token t of node i attends only to token t of its neighbours, and each of the D channels is its
own attention head of size 1 (GOFA sets heads = dim on purpose: the released weights need it).
No self-loops are added and there is no positional encoding. Both gates start at 0, so a fresh
layer is exactly the identity and GOFA starts as its compressor. Edge states are read, never
updated. GOFA's dropout is 0, so the layer has none.

Parameter names follow the PyTorch state dict (`lin_qkv`, `e_proj`, `o_proj`, `x_norm`,
`xe_norm`, `post_gnn_norm`, `ff.lins.{0,1}`, `ff.norms.0`, `attn_gate`, `ff_gate`; gates of shape
[1] as there), so a checkpoint imports as a table with kernels transposed. `layer_norm_ek` and
`layer_norm_ev` exist in the original but are never used; they are created here too so that the
original's keys map one to one, and they get no gradient.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmem.graph.layers import segment_softmax
from gmem.nn.attention import constrain
from gmem.nn.norms import RMSNorm
from gmem.nn.projection import Projection


class GPMLP(nn.Module):
    """GOFA's "gp" MLP: lins_0 (D -> ratio*D, bias) -> norms_0 (RMSNorm) -> ReLU -> lins_1."""

    ratio: int = 2
    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, h_NKD: jax.Array) -> jax.Array:
        d = h_NKD.shape[-1]
        kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                  kernel_init=self.kernel_init)
        f = Projection(self.ratio * d, axes=("embed", "mlp"), name="lins_0", **kw)(h_NKD)
        f = RMSNorm(self.eps, self.dtype, self.param_dtype, axis="mlp", name="norms_0")(f)
        f = nn.relu(f)
        return Projection(d, axes=("mlp", "embed"), name="lins_1", **kw)(f)


class GOFAGNNConv(nn.Module):
    """One GOFA GNN layer over the memory tokens of a (padded) graph; see the module docstring.

    Attributes:
      eps: RMSNorm epsilon (Mistral's 1e-6).
      mlp_ratio: hidden width of the MLP in multiples of D (GOFA: 2).
      dtype: compute dtype; params stay in param_dtype. GOFA keeps this layer in fp32 while
        the LLM runs in bf16, so the default is fp32 and the output is cast back to the input's
        dtype.
    """

    eps: float = 1e-6
    mlp_ratio: int = 2
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x_NKD: jax.Array, xe_EKD: jax.Array, senders_E: jax.Array,
                 receivers_E: jax.Array, node_mask_N: jax.Array | None = None,
                 edge_mask_E: jax.Array | None = None,
                 edge_map_E: jax.Array | None = None) -> jax.Array:
        """New node memory states [N, K, D] (same dtype as x_NKD).

        x_NKD: node memory states. xe_EKD: edge-text memory states, one row per edge; or, with
        edge_map_E, one row per unique edge text [U, K, D] and edge e uses row edge_map_E[e]
        (the edge projection then runs once per unique text). senders_E / receivers_E: int
        node indices in [0, N) (a message goes sender -> receiver). node_mask_N / edge_mask_E:
        True = real; an edge is used only if it and both its end nodes are real. Padding rows
        of the output are the input rows unchanged. Indices of padding edges must still be in
        range (point them at any node, e.g. a padding node).
        """
        n, _, d = x_NKD.shape
        in_dtype = x_NKD.dtype
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init)
        norm = lambda name: RMSNorm(self.eps, self.dtype, self.param_dtype, name=name)

        x = constrain(x_NKD.astype(self.dtype), ("nodes", "memory", "embed"))
        xe = xe_EKD.astype(self.dtype)
        if self.is_initializing():  # the original's unused norms, for one-to-one checkpoint keys
            norm("layer_norm_ek")(x[:1, :1])
            norm("layer_norm_ev")(x[:1, :1])

        qkv = Projection(3 * d, axes=("embed", "heads"), name="lin_qkv", **kw)(norm("x_norm")(x))
        q, k, v = jnp.split(qkv, 3, axis=-1)
        ekv = Projection(2 * d, axes=("embed", "heads"), name="e_proj", **kw)(norm("xe_norm")(xe))
        ek, ev = jnp.split(ekv, 2, axis=-1)
        if edge_map_E is not None:
            ek, ev = ek[edge_map_E], ev[edge_map_E]

        mask = jnp.ones(senders_E.shape, bool) if edge_mask_E is None else edge_mask_E.astype(bool)
        if node_mask_N is not None:
            node_mask_N = node_mask_N.astype(bool)
            mask = mask & node_mask_N[senders_E] & node_mask_N[receivers_E]

        edges = ("edges", "memory", "heads")
        key = constrain(k[senders_E] + ek, edges)
        val = constrain(v[senders_E] + ev, edges)
        # Scores [E, K, D] (the layer's memory peak): one softmax per receiver, token, channel.
        alpha = segment_softmax(q[receivers_E] * key, receivers_E, n, mask)
        agg = jax.ops.segment_sum(alpha * val, receivers_E, n)   # masked edges have alpha = 0
        out = Projection(d, axes=("heads", "embed"), name="o_proj", **kw)(agg)

        gate = lambda name: jnp.tanh(self.param(
            name, nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)), (1,),
            self.param_dtype)).astype(self.dtype)
        h = x + gate("attn_gate") * out
        f = GPMLP(self.mlp_ratio, self.eps, name="ff", **kw)(norm("post_gnn_norm")(h))
        y = h + gate("ff_gate") * f
        if node_mask_N is not None:
            y = jnp.where(node_mask_N[:, None, None], y, x)
        return constrain(y, ("nodes", "memory", "embed")).astype(in_dtype)
