"""The plain causal-LM system: a LLaMA-family model with adapters, trained on a text corpus.

It hands gmem.train what the loop needs (see gmem.train.loop.System): the frozen base weights
and their logical axes, a fresh adapter tree, a loss over (trainable, frozen, batch, rng),
batches by index, an evaluation (eval loss / perplexity) and generation for infer.py.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gmem.adapters import AdapterSpec, adapter_collection, init_adapters
from gmem.data.text import BatchStream, ByteTokenizer, chunk_tokens, load_texts, split_rows
from gmem.errors import GmemError
from gmem.models.common import to_dtype
from gmem.models.llama import LlamaConfig, LlamaForCausalLM

EMBEDDED_MODELS = {"smollm2": "smollm2-135m-instruct", "smollm2-135m-instruct": "smollm2-135m-instruct"}


def adapter_specs(cfg) -> list[AdapterSpec]:
    """AdapterSpecs from the `adapters:` section (every AdapterConfig field is an AdapterSpec field)."""
    return [AdapterSpec(kind=a.kind, name=a.name, targets=tuple(a.targets), rank=a.rank,
                        alpha=a.alpha, dropout=a.dropout, use_rslora=a.use_rslora,
                        layers_to_transform=(None if a.layers_to_transform is None
                                             else tuple(a.layers_to_transform)),
                        share_projections=a.share_projections, gift_act=a.gift_act,
                        in_projection_bias=a.in_projection_bias,
                        out_projection_bias=a.out_projection_bias) for a in cfg.adapters]


def random_config(m) -> LlamaConfig:
    return LlamaConfig(vocab_size=m.vocab_size, hidden_size=m.hidden_size,
                       intermediate_size=m.intermediate_size, num_hidden_layers=m.num_hidden_layers,
                       num_attention_heads=m.num_attention_heads,
                       num_key_value_heads=m.num_key_value_heads, head_dim=m.head_dim,
                       max_position_embeddings=m.max_position_embeddings,
                       tie_word_embeddings=m.tie_word_embeddings,
                       bos_token_id=ByteTokenizer.bos_token_id, eos_token_id=ByteTokenizer.eos_token_id,
                       pad_token_id=ByteTokenizer.pad_token_id)


def resolve_source(source: str) -> tuple[str, pathlib.Path | None]:
    """('random'|'gguf'|'hf', path) for a model.source value."""
    if source == "random":
        return "random", None
    if source in EMBEDDED_MODELS:
        import gmem.assets
        return "gguf", pathlib.Path(gmem.assets.path(EMBEDDED_MODELS[source]))
    p = pathlib.Path(source).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return "gguf", p
    if p.is_dir() and (p / "config.json").is_file():
        return "hf", p
    raise GmemError(f"model.source: {source!r} is not 'random', an embedded model "
                    f"({sorted(EMBEDDED_MODELS)}), a .gguf file or an HF folder with config.json")


def _unbox(tree):
    return jax.tree_util.tree_map(lambda x: x.unbox() if isinstance(x, nn.meta.AxisMetadata) else x,
                                  tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


class LMSystem:
    """Causal LM + adapters on a text corpus. `cfg` is a gmem.config.Config."""

    name = "lm"

    def __init__(self, cfg, load_data: bool = True):
        self.cfg = cfg
        m = cfg.model
        self.kind, self.path = resolve_source(m.source)
        self._real = None
        if self.kind == "random":
            base_cfg = random_config(m)
            self.tokenizer = ByteTokenizer()
        else:
            base_cfg, self._real, self.tokenizer = self._load_real()
        self.model_config = dataclasses.replace(base_cfg, dtype=m.dtype, remat=m.remat)
        self.module = LlamaForCausalLM(self.model_config)
        self.specs = adapter_specs(cfg)
        self._data = None
        if load_data:
            self.data()

    # ---- model -------------------------------------------------------------------------
    def _load_real(self):
        """(LlamaConfig, params, tokenizer) from a GGUF file or an HF folder (helper B's loaders)."""
        config, params, tokenizer = load_source(self.kind, self.path)
        if not isinstance(config, LlamaConfig):
            raise GmemError(f"model.source: {self.path} is a {type(config).__name__}; the lm system "
                            "trains LLaMA-family models")
        return config, params, tokenizer

    @property
    def structure(self) -> dict:
        """Structural choices checked when a checkpoint is restored."""
        c = self.model_config
        return {"system": self.name, "family": c.model_type,
                "model": {"vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
                          "num_hidden_layers": c.num_hidden_layers,
                          "num_attention_heads": c.num_attention_heads,
                          "num_key_value_heads": c.num_key_value_heads,
                          "intermediate_size": c.intermediate_size},
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
            _unbox(boxed))
        return abstract, nn.get_partition_spec(boxed)

    def load_base(self):
        """The frozen base weights (host arrays), tree as in abstract_base."""
        dt = to_dtype(self.cfg.model.frozen_dtype)
        cast = lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x
        if self._real is not None:
            return jax.tree_util.tree_map(cast, self._real)
        params = jax.jit(lambda k: self.module.init(k, self._dummy_ids()))(
            jax.random.PRNGKey(self.cfg.model.seed))["params"]
        return jax.tree_util.tree_map(cast, _unbox(params))

    def init_trainable(self, base, rng):
        return init_adapters(self.specs, base, rng)

    def abstract_trainable(self, abstract_base):
        return jax.eval_shape(lambda b: init_adapters(self.specs, b, jax.random.PRNGKey(0)), abstract_base)

    def trainable_specs(self, abstract_trainable, base_specs):
        """Logical axes of adapter leaves: LoRA A [D_in, r] takes the kernel's input axis, B [r, D_out]
        its output axis (so LoRA is sharded like the projection it sits on); others replicated."""
        from gmem.train.sharding import adapter_logical_specs
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
            d = self.cfg.data
            texts = load_texts(d.corpus, d.glob, d.text_field, d.max_chars)
            encode = lambda t: self.tokenizer.encode(t, add_special_tokens=False)
            eos = getattr(self.tokenizer, "eos_token_id", None)
            rows = chunk_tokens(texts, _ids(encode), d.seq_len, eos)
            train, ev = split_rows(rows, d.eval_fraction)
            self._data = (BatchStream(train, d.batch_size, d.seed), ev)
        return self._data

    def batch_shapes(self) -> dict:
        d = self.cfg.data
        return {"input_ids": jax.ShapeDtypeStruct((d.batch_size, d.seq_len + 1), jnp.int32)}

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
            losses.append(float(fn(trainable, frozen, {"input_ids": jnp.asarray(rows[i * b:(i + 1) * b])})))
        if not losses:
            return {}
        loss = float(np.mean(losses))
        return {"eval/loss": loss, "eval/ppl": float(math.exp(min(loss, 50.0)))}

    # ---- inference ----------------------------------------------------------------------
    def predict(self, trainable, frozen, prompts=None) -> tuple[list[dict], dict]:
        """Generate from eval.prompts; returns (prediction rows, metrics)."""
        from gmem.models.generate import generate_text
        e = self.cfg.eval
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


def load_source(kind: str, path) -> tuple:
    """(config, params, tokenizer) from a GGUF file (kind "gguf") or an HF folder."""
    if kind == "gguf":
        from gmem.hf import gguf
        loaded = gguf.load_gguf(path)
    else:
        from gmem.hf import convert
        loaded = convert.load_pretrained(path)
    return _split_loaded(loaded, path)


def _split_loaded(loaded: Any, where) -> tuple:
    """Accept helper B's loader results: a (config, params[, tokenizer]) tuple or an object with
    .config/.params/.tokenizer."""
    if isinstance(loaded, tuple) and isinstance(loaded[0], nn.Module):  # (module, config, params)
        config, params, tok = loaded[1], loaded[2], None
    elif isinstance(loaded, tuple):
        config, params = loaded[0], loaded[1]
        tok = loaded[2] if len(loaded) > 2 else None
    else:
        config, params = loaded.config, loaded.params
        tok = getattr(loaded, "tokenizer", None)
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    if tok is None:
        tok = load_tokenizer(where)
    return config, _unbox(params), tok


def load_tokenizer(where):
    """The tokenizer of a GGUF file or HF folder (helper B's gmem.hf.tokenizer when present,
    else transformers' AutoTokenizer on a local folder)."""
    try:
        from gmem.hf import tokenizer as hf_tok
    except ImportError:
        hf_tok = None
    if hf_tok is not None and hasattr(hf_tok, "load_tokenizer"):
        return hf_tok.load_tokenizer(where)
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(where), local_files_only=True)


def json_safe(x):
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def build(cfg, load_data: bool = True) -> LMSystem:
    return LMSystem(cfg, load_data=load_data)
