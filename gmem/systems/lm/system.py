"""The plain causal-LM system (`system.name: lm`): a decoder (LLaMA family or GPT-2) with
adapters, trained on a text corpus; evaluation is held-out loss / perplexity, inference is
generation from prompts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import List, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gmem.adapters import adapter_collection, init_adapters, specs_from_config
from gmem.adapters.sharding import adapter_logical_specs
from gmem.config import SystemOptions, register_system
from gmem.data.text import BatchStream, ByteTokenizer, chunk_tokens, line_rows, load_texts, split_rows
from gmem.hf.sources import load_source, resolve_source
from gmem.models.common import to_dtype
from gmem.models.family import causal_lm, sizes, tiny_config
from gmem.models.generate import generate_text


@dataclass
class LMOptions(SystemOptions):
    """corpus: 'shakespeare' (embedded), a .txt file, a folder of .txt files (matching `glob`),
    or a .json/.jsonl file with `text_field`; max_chars: read at most this much; eval_fraction of
    the rows is held out. line_split: every line is its own row, padded (the original VardaGPT's
    loader; gmem.data.text.line_rows), instead of the documents concatenated and cut. prompts / max_new_tokens / temperature / top_k: infer.py's generation
    (temperature 0 = greedy)."""

    name: str = "lm"
    corpus: str = "shakespeare"
    glob: str = "*.txt"
    text_field: str = "text"
    eval_fraction: float = 0.02
    max_chars: Optional[int] = None
    line_split: bool = False
    prompts: List[str] = field(default_factory=lambda: ["ROMEO:"])
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0


def random_config(m, family: str = "llama", **overrides):
    """A tiny random decoder of `family` from the model section's sizes, with the byte
    tokenizer's special ids."""
    tok = ByteTokenizer
    return tiny_config(family, vocab_size=m.vocab_size, hidden_size=m.hidden_size,
                       intermediate_size=m.intermediate_size, num_hidden_layers=m.num_hidden_layers,
                       num_attention_heads=m.num_attention_heads, num_key_value_heads=m.num_key_value_heads,
                       head_dim=m.head_dim, max_position_embeddings=m.max_position_embeddings,
                       tie_word_embeddings=m.tie_word_embeddings, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **overrides)


@register_system("lm")
class LMSystem:
    """Causal LM + adapters on a text corpus. `cfg` is a gmem.config.Config whose `system` is
    an LMOptions (or a subclass: VardaGPT builds on this class)."""

    Options = LMOptions

    def __init__(self, cfg, load_data: bool = True):
        self.cfg, self.opts = cfg, cfg.system
        m = cfg.model
        self.kind, self.path = resolve_source(m.source)
        self._real = None
        if self.kind == "random":
            base_cfg = random_config(m, m.family or "llama")
            self.tokenizer = ByteTokenizer()
        else:
            base_cfg, self._real, self.tokenizer = load_source(self.kind, self.path)
        self.model_config = dataclasses.replace(base_cfg, dtype=m.dtype, remat=m.remat)
        self.module = causal_lm(self.model_config, self.decoder_hooks())
        self.specs = specs_from_config(cfg.adapters)
        self._data = None
        self.eval_mask = None  # [N_eval, L+1] with system.line_split: 0 on pads
        if load_data:
            self.data()

    # ---- model -------------------------------------------------------------------------
    def decoder_hooks(self) -> tuple:
        """Blocks placed inside the decoder's layers (gmem.models.hooks); none for a plain LM."""
        return ()

    @property
    def structure(self) -> dict:
        """Structural choices checked when a checkpoint is restored."""
        c = self.model_config
        return {"system": self.name, "family": c.model_type, "model": sizes(c),
                "adapters": [json_safe(dataclasses.asdict(s)) for s in self.specs],
                "memory_layers": []}

    def _dummy_ids(self):
        return jnp.zeros((1, 8), jnp.int32)

    def abstract_base(self):
        """(abstract frozen tree of ShapeDtypeStructs, logical PartitionSpec tree); no memory."""
        boxed = jax.eval_shape(lambda: self.module.init(jax.random.PRNGKey(0), self._dummy_ids()))["params"]
        dt = to_dtype(self.cfg.model.frozen_dtype)
        abstract = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, dt if jnp.issubdtype(a.dtype, jnp.floating) else a.dtype),
            nn.unbox(boxed))
        return abstract, nn.get_partition_spec(boxed)

    def load_base(self):
        """The frozen base weights (host arrays), tree as in abstract_base."""
        dt = to_dtype(self.cfg.model.frozen_dtype)
        cast = lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x
        if self._real is not None:
            return jax.tree_util.tree_map(cast, self._real)
        params = jax.jit(lambda k: self.module.init(k, self._dummy_ids()))(
            jax.random.PRNGKey(self.cfg.model.seed))["params"]
        return jax.tree_util.tree_map(cast, nn.unbox(params))

    def init_trainable(self, base, rng):
        return init_adapters(self.specs, base, rng)

    def abstract_trainable(self, abstract_base):
        return jax.eval_shape(lambda b: init_adapters(self.specs, b, jax.random.PRNGKey(0)), abstract_base)

    def trainable_specs(self, abstract_trainable, base_specs):
        """Logical axes of adapter leaves: LoRA A [D_in, r] takes the kernel's input axis, B [r, D_out]
        its output axis (so LoRA is sharded like the projection it sits on); others replicated."""
        return adapter_logical_specs(abstract_trainable, base_specs)

    def variables(self, trainable, frozen) -> dict:
        return {"params": frozen, "adapter": adapter_collection(self.specs, trainable, frozen)}

    # ---- loss ---------------------------------------------------------------------------
    def loss(self, trainable, frozen, batch: dict, rng):
        """Mean next-token cross-entropy over rows [B, L+1]; aux: token count. rng None: no dropout."""
        ids = batch["input_ids"]
        inputs, targets = ids[:, :-1], ids[:, 1:]
        mask = batch.get("mask")
        mask = jnp.ones(targets.shape, jnp.float32) if mask is None else mask[:, 1:].astype(jnp.float32)
        rngs = {"dropout": rng} if rng is not None and any(s.dropout > 0 for s in self.specs) else {}
        logits, _ = self.module.apply(self.variables(trainable, frozen), inputs, rngs=rngs)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        n = jnp.maximum(mask.sum(), 1.0)
        return (ce * mask).sum() / n, {"tokens": mask.sum()}

    # ---- data ---------------------------------------------------------------------------
    def data(self):
        if self._data is None:
            d, o = self.cfg.data, self.opts
            texts = load_texts(o.corpus, o.glob, o.text_field, o.max_chars)
            encode = lambda t: self.tokenizer.encode(t, add_special_tokens=False)
            eos = getattr(self.tokenizer, "eos_token_id", None)
            if o.line_split:
                pad = getattr(self.tokenizer, "pad_token_id", None)
                rows, mask = line_rows(texts, _ids(encode), d.seq_len, pad if pad is not None else (eos or 0))
                (train, ev), (train_mask, self.eval_mask) = split_rows(rows, o.eval_fraction), split_rows(mask, o.eval_fraction)
                self._data = (BatchStream(train, d.batch_size, d.seed, mask=train_mask), ev)
                return self._data
            rows = chunk_tokens(texts, _ids(encode), d.seq_len, eos)
            train, ev = split_rows(rows, o.eval_fraction)
            self._data = (BatchStream(train, d.batch_size, d.seed), ev)
        return self._data

    def batch_shapes(self) -> dict:
        d = self.cfg.data
        shape = (d.batch_size, d.seq_len + 1)
        out = {"input_ids": jax.ShapeDtypeStruct(shape, jnp.int32)}
        if self.opts.line_split:
            out["mask"] = jax.ShapeDtypeStruct(shape, jnp.float32)
        return out

    def batch(self, index: int, host: slice = slice(None)) -> dict:
        """Host-local rows of global batch `index` (numpy)."""
        return self.data()[0].host_batch(index, host)

    def evaluate(self, trainable, frozen, eval_fn=None) -> dict:
        """Mean loss over up to eval.batches batches of held-out rows, and perplexity."""
        _, rows = self.data()
        if len(rows) == 0:
            return {}
        b = min(self.cfg.data.batch_size, len(rows))
        fn = eval_fn or jax.jit(lambda t, f, x: self.loss(t, f, x, None)[0])
        losses = []
        for i in range(min(self.cfg.eval.batches, len(rows) // b)):
            batch = {"input_ids": jnp.asarray(rows[i * b:(i + 1) * b])}
            if self.eval_mask is not None:
                batch["mask"] = jnp.asarray(self.eval_mask[i * b:(i + 1) * b])
            losses.append(float(fn(trainable, frozen, batch)))
        if not losses:
            return {}
        loss = float(np.mean(losses))
        return {"eval/loss": loss, "eval/ppl": float(math.exp(min(loss, 50.0)))}

    # ---- inference ----------------------------------------------------------------------
    def predict(self, trainable, frozen, prompts=None) -> tuple[list[dict], dict]:
        """Generate from system.prompts; returns (prediction rows, metrics)."""
        e = self.opts
        prompts = list(prompts or e.prompts)
        sampling = {"temperature": e.temperature, "top_k": e.top_k}
        texts = generate_text(self.module, self.variables(trainable, frozen), self.tokenizer, prompts,
                              max_new_tokens=e.max_new_tokens, **sampling)
        return [{"prompt": p, "generation": t} for p, t in zip(prompts, texts)], {}


def _ids(encode):
    def f(t):
        out = encode(t)
        return list(getattr(out, "ids", out))
    return f


def json_safe(x):
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x
