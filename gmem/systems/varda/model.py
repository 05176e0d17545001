"""VardaGPT: a decoder whose every input token searches an associative memory (§2 of
specs/gift-varda-regrad.md), built as the original describes and working.

Per segment of `segment_len` tokens (the backbone's context window; memory carries across):
  x = embed(ids)                                     [B, L, D]
  r = memory.search(x, k) vectors                    [B, L, k, D]   (per batch row; pre-write state)
  z = fc([x, r_1 .. r_k])                            [B, L, D]      the fusion layer
  h = decoder(inputs_embeds=z); logits = lm_head(h)
  s = fc_storable_vector(h); p = sigmoid(fc_store_decision(h)); q = sigmoid(fc_delete_decision(h))
  delete retrieved entry j where q_j > delete_threshold; store s where p > store_threshold.
The memory state (gmem.memory.MemoryState with a leading batch axis) is an input and an output,
so it threads through the segments of one call and across calls (batches of a stream).

Deviations from the original, each because the original cannot work as written:
- Gradients reach the decision layers. Writes are scatters and reads are gathers, so a vector
  stored in segment t and read in t+1 is differentiable. gate="straight_through" (default)
  writes s * (hard + p - stop_gradient(p)): forward value s where the gate is open, gradient
  through the sigmoid; gate="soft" writes every token as p * s. Deletion multiplies a retrieved
  entry by (1 - hard_q) with the same estimator before invalidating it. The original's hard
  threshold on a raw logit passes no gradient, and its write path was detached.
- Closed gates skip the write (the original wrote all-zero vectors); a full memory replaces its
  oldest entry (the original crashed); delete removes slot ids (the original removed row numbers).
- The store test is sigmoid(logit) > threshold (the original compared the raw logit with 0.5).
- Fusion is gated (fusion="gated", default): z = x + tanh(g) * fc([x, r_1 .. r_k]) with a
  per-channel gate g = gate_init (0) at init and each retrieved vector rescaled to the RMS of x.
  With g = 0 neither fc nor g gets a useful gradient at first (fc's is scaled by tanh(g) = 0,
  g's by a random fc): gate_init > 0 gives a read the model can use from step 0. Step 0
  equals the backbone alone, and the update size stays small next to a frozen model's input
  embeddings (the original's z = fc([x, r]), fusion="original", diverged within a few steps on
  SmolLM2: final hidden states, hence stored vectors, are far larger than the embeddings).
- Training scores the next token (the original's loss was unshifted) and memory is fresh per
  training row (one row = one document of seq_len tokens, several segments).

That is `read: input` (the default, the original's read). `read: next_token` is a second read,
not the original's: keys from each token's context, values its next token, mixed into the
output distribution (gmem/systems/varda/next_token.py); it is the one that carries a fact
past the window (configs/varda_recall.yaml).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmem.errors import GmemError
from gmem.memory import AssociativeMemory, MemoryState
from gmem.nn.projection import Projection
from gmem.systems.varda.next_token import NextTokenRead, key_dim, next_token_segment

_GATES = ("straight_through", "soft")


@dataclasses.dataclass
class VardaConfig:
    """Memory and fusion options: the memory fields of the `system:` section (VardaOptions
    inherits them) and what VardaModel reads.

    memory_dim must equal the backbone's hidden size (queries are input embeddings); None = it.
    read=next_token stores [key | next-token id] vectors instead (key_dim + 1 wide), metric ip.
    """

    memory_size: int = 1024
    memory_dim: Optional[int] = None
    num_search_results: int = 5
    metric: str = "l2"
    nlist: int = 0
    nprobe: int = 1
    segment_len: int = 64
    gate: str = "straight_through"
    store_threshold: float = 0.5
    delete: bool = True
    delete_threshold: float = 0.5
    forgetfulness: float = 0.0
    use_memory: bool = True
    fusion: str = "gated"
    gate_init: float = 0.0  # initial fusion gate g (tanh(g) scales the read); 0: step 0 = the backbone
    weighting: str = "none"  # none (the original: results concatenated as they are) | softmax
    tokenizer: str = "auto"  # auto (the source's own / bytes for random) | gpt2 (embedded BPE)
    read: str = "input"      # input (the original: fused into the input) | next_token (varda/next_token.py)
    key_proj: bool = False   # read=next_token: a learned map (identity at init) before the keys
    key_ngram: int = 0       # read=next_token: keys also hold the sum of the last n input embeddings

    @classmethod
    def from_options(cls, opts) -> "VardaConfig":
        """The memory fields of a VardaOptions."""
        return cls(**{f.name: getattr(opts, f.name) for f in dataclasses.fields(cls)})

    def check(self, hidden: int) -> AssociativeMemory:
        """Validate against the backbone; returns the memory. One GmemError lists every problem."""
        errors = []
        dim = self.memory_dim or hidden
        if self.read not in ("input", "next_token"):
            errors.append(f"read={self.read!r} must be 'input' or 'next_token'")
        if self.key_ngram < 0:
            errors.append(f"key_ngram={self.key_ngram} must be >= 0")
        if self.read == "next_token" and self.metric != "ip":
            errors.append(f"read=next_token scores unit keys by their inner product: metric={self.metric!r} "
                          "must be 'ip'")
        if dim != hidden:
            errors.append(f"memory_dim={dim} must equal the backbone hidden size {hidden} "
                          "(every token's input embedding is the query)")
        if not 1 <= self.num_search_results <= self.memory_size:
            errors.append(f"num_search_results={self.num_search_results} must be in [1, "
                          f"memory_size={self.memory_size}]")
        if self.gate not in _GATES:
            errors.append(f"gate={self.gate!r} must be one of {_GATES}")
        if self.weighting not in ("none", "softmax"):
            errors.append(f"weighting={self.weighting!r} must be 'none' or 'softmax'")
        if self.fusion not in ("gated", "original"):
            errors.append(f"fusion={self.fusion!r} must be 'gated' or 'original'")
        if self.segment_len <= 0:
            errors.append(f"segment_len={self.segment_len} must be positive")
        if errors:
            raise GmemError("system: " + "; ".join(errors))
        if self.read == "next_token":
            dim = key_dim(hidden, self.key_ngram) + 1  # [key | next-token id] (varda/next_token.py)
        try:
            return AssociativeMemory(self.memory_size, dim, self.metric, self.nlist, self.nprobe)
        except GmemError as e:
            raise GmemError(f"system: {e}") from None


class VardaHeads(nn.Module):
    """The memory layers: fusion (fc) and the decisions read from the final hidden states."""

    hidden: int
    k: int
    fusion: str = "gated"
    gate_init: float = 0.0
    weighting: str = "none"

    def setup(self):
        d = self.hidden
        self.fc = Projection(d, axes=("memory", "embed"), use_bias=True, kernel_init=nn.initializers.lecun_normal())
        if self.fusion == "gated":
            init = nn.initializers.constant(self.gate_init)
            self.gate = self.param("gate", nn.with_logical_partitioning(init, ("embed",)), (d,))
        self.fc_storable_vector = Projection(d, axes=("embed", "memory"), use_bias=True)
        self.fc_store_decision = Projection(1, axes=("embed", None), use_bias=True)
        # Bias -2: deletions start closed (sigmoid(-2) = 0.12 < 0.5) and open only if learned.
        self.fc_delete_decision = Projection(self.k, axes=("embed", None), use_bias=False)
        self.delete_bias = self.param("delete_bias", nn.initializers.constant(-2.0), (self.k,))
        if self.weighting == "softmax":
            self.beta = self.param("beta", nn.initializers.ones_init(), ())

    def weigh(self, x_BLD, r_BLKD):
        """weighting="softmax": result j scaled by k * softmax_j(-beta d_j / mean_j d_j), d_j its
        squared distance to the query (empty results 0). A differentiable ranking, so the search
        (which vectors are near which queries) gets a gradient; the original has none."""
        valid = jnp.any(r_BLKD != 0, -1)
        d = jnp.mean(jnp.square(x_BLD[:, :, None].astype(jnp.float32) - r_BLKD), -1)
        n = jnp.maximum(valid.sum(-1, keepdims=True), 1)
        scale = jnp.sum(jnp.where(valid, d, 0.0), -1, keepdims=True) / n + 1e-9
        a = jax.nn.softmax(jnp.where(valid, -self.beta * d / scale, -1e9), -1) * n
        return r_BLKD * jnp.where(valid, a, 0.0)[..., None]

    def fuse(self, x_BLD, r_BLKD):
        b, l, k, d = r_BLKD.shape
        if self.fusion == "original":
            return self.fc(jnp.concatenate([x_BLD, r_BLKD.reshape(b, l, k * d).astype(x_BLD.dtype)], -1))
        rms = lambda v: jnp.sqrt(jnp.mean(jnp.square(v), -1, keepdims=True) + 1e-6)
        r = r_BLKD / rms(r_BLKD) * rms(x_BLD)[:, :, None]  # empty results stay zero
        if self.weighting == "softmax":
            r = self.weigh(x_BLD, r_BLKD) / rms(r_BLKD) * rms(x_BLD)[:, :, None]
        y = self.fc(jnp.concatenate([x_BLD, r.reshape(b, l, k * d).astype(x_BLD.dtype)], -1))
        return x_BLD + jnp.tanh(self.gate) * y

    def decide(self, h_BLD):
        """-> storable vectors [B, L, D], store logits [B, L], delete logits [B, L, k]."""
        h = h_BLD.astype(jnp.float32)
        return (self.fc_storable_vector(h), self.fc_store_decision(h)[..., 0],
                self.fc_delete_decision(h) + self.delete_bias)

    def __call__(self, x_BLD, r_BLKD, h_BLD):  # for init: touches every layer
        return self.fuse(x_BLD, r_BLKD), self.decide(h_BLD)


def _ste(hard, soft):
    """Forward value `hard`, gradient of `soft` (straight-through estimator)."""
    return hard.astype(soft.dtype) + soft - jax.lax.stop_gradient(soft)


class VardaModel:
    """backbone (a gmem decoder with embed() and inputs_embeds_BLD) + memory layers + memory."""

    def __init__(self, cfg: VardaConfig, backbone: nn.Module, hidden: int):
        self.cfg = cfg
        self.memory = cfg.check(hidden)
        self.backbone = backbone
        self.hidden = hidden
        if cfg.read == "next_token":
            self.heads = NextTokenRead(hidden, cfg.key_proj, cfg.key_ngram)
        else:
            self.heads = VardaHeads(hidden, cfg.num_search_results, cfg.fusion, cfg.gate_init, cfg.weighting)

    def head_init_args(self) -> tuple:
        """Dummy inputs for heads.init (one token; the shapes the heads' __call__ takes)."""
        k, d = self.cfg.num_search_results, self.hidden
        z = jnp.zeros((1, 1, d))
        if self.cfg.read == "next_token":
            return z, jnp.zeros((1, 1, 2)), jnp.zeros((1, 1, k)), jnp.zeros((1, 1, k), jnp.int32)
        return z, jnp.zeros((1, 1, k, d)), z

    def init_heads(self, rng) -> dict:
        return nn.unbox(self.heads.init(rng, *self.head_init_args())["params"])

    def init_memory(self, batch: int) -> MemoryState:
        return self.memory.init(batch)

    def __call__(self, heads_params, backbone_vars, state: MemoryState, ids_BT, rng=None):
        """ids [B, T] (T a multiple of segment_len) -> (logits [B, T, V] fp32, new state, stats)."""
        c = self.cfg
        b, t = ids_BT.shape
        seg = min(c.segment_len, t)
        if t % seg:
            raise GmemError(f"varda: sequence length {t} is not a multiple of segment_len={seg}")
        if state.vectors_MD.shape[0] != b:
            raise GmemError(f"varda: memory state has batch {state.vectors_MD.shape[0]}, ids have {b}")
        hp = {"params": heads_params}
        n = t // seg
        split = lambda a: a.reshape(b, n, seg).swapaxes(0, 1)
        # What each token stores under read=next_token: its next token, where the input has one.
        nxt = jnp.concatenate([ids_BT[:, 1:], jnp.zeros((b, 1), ids_BT.dtype)], 1)
        has_next = jnp.broadcast_to(jnp.arange(t) < t - 1, (b, t))

        # One segment; scanned so the decoder is traced once however many segments a row has.
        def segment(state, xs):
            i, seg_ids, seg_next, seg_has_next = xs
            if c.read == "next_token":
                state, out, st = next_token_segment(self, hp, backbone_vars, state, seg_ids, seg_next, seg_has_next)
                return state, (out, st)
            x = self.backbone.apply(backbone_vars, seg_ids, method="embed")
            if c.use_memory:
                idx, r = self.read(state, x)
                x = self.heads.apply(hp, x, r, method="fuse")
            out, _, h = self.backbone.apply(backbone_vars, inputs_embeds_BLD=x, return_hidden=True)
            st = {}
            if c.use_memory:
                key = None if rng is None else jax.random.fold_in(rng, i)
                state, st = self._update(hp, state, h, idx, key)
            return state, (out, st)

        xs = (jnp.arange(n), split(ids_BT), split(nxt), split(has_next))
        state, (logits, stats) = jax.lax.scan(segment, state, xs)
        logits = logits.swapaxes(0, 1).reshape(b, t, -1)
        return logits, state, {k: v.mean() for k, v in stats.items()}

    def without_memory(self) -> "VardaModel":
        """The same backbone and heads with the memory path off (the backbone alone)."""
        return VardaModel(dataclasses.replace(self.cfg, use_memory=False), self.backbone, self.hidden)

    def read(self, state: MemoryState, x_BLD):
        """Each row's k nearest stored vectors to its tokens' embeddings: (slots [B, L, k],
        vectors [B, L, k, D], zeros where the slot is -1)."""
        idx, _, r = jax.vmap(self.memory.search, (0, 0, None))(state, x_BLD, self.cfg.num_search_results)
        return idx, r

    def write(self, state: MemoryState, s_BLD, mask_BL) -> MemoryState:
        """Row b stores its tokens' vectors s[b, t] where mask[b, t], in time order."""
        return jax.vmap(self.memory.add)(state, s_BLD, mask_BL)

    def _update(self, hp, state, h_BLD, idx_BLK, rng):
        c, mem = self.cfg, self.memory
        b = h_BLD.shape[0]
        s, g, dl = self.heads.apply(hp, h_BLD, method="decide")
        p = jax.nn.sigmoid(g)
        if c.gate == "soft":
            mask, w = jnp.ones_like(p, bool), p
        else:
            mask = p > c.store_threshold
            w = _ste(mask, p)
        deleted = jnp.zeros(())
        if c.delete:
            q = jax.nn.sigmoid(dl)
            hard = (q > c.delete_threshold) & (idx_BLK >= 0)
            keep = _ste(~hard, 1.0 - q).reshape(b, -1)
            ids = idx_BLK.reshape(b, -1)
            # Per-slot factor 1 + sum_j (keep_j - 1): a slot several tokens retrieved gets every
            # token's gradient (scatter-add differentiates; scatter-multiply does not).
            def scale(v_MD, i, f):
                delta = jnp.zeros(v_MD.shape[0]).at[jnp.where(i >= 0, i, v_MD.shape[0])].add(f - 1.0, mode="drop")
                return v_MD * jnp.maximum(1.0 + delta, 0.0)[:, None]
            state = state.replace(vectors_MD=jax.vmap(scale)(state.vectors_MD, ids, keep))
            state = jax.vmap(mem.remove)(state, jnp.where(hard.reshape(b, -1), ids, -1))
            deleted = hard.mean(dtype=jnp.float32)
        state = self.write(state, s * w[..., None], mask)
        if c.forgetfulness > 0 and rng is not None:
            state = jax.vmap(mem.forget, (0, None, 0))(state, c.forgetfulness, jax.random.split(rng, b))
        return state, {"memory/store_rate": mask.mean(dtype=jnp.float32), "memory/delete_rate": deleted,
                       "memory/count": state.count.mean(dtype=jnp.float32)}
