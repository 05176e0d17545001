"""What gofa_compressor and gofa share: the base LLM (from model.source, as every system loads it),
its tokenizer, the extended id space, the memory table, the adapter sets by name, the per-pass
variables, and reading another run's saved arrays."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from gmem.adapters import adapter_collection, init_adapters
from gmem.adapters.sharding import adapter_logical_specs
from gmem.config import CheckpointConfig
from gmem.errors import GmemError
from gmem.models.common import to_dtype
from gmem.systems.gofa.layout import SpecialIds
from gmem.systems.gofa.options import ENCODER_ADAPTER
from gmem.systems.lm import LMSystem
from gmem.train.checkpoint import open_checkpoint
from gmem.tree import flatten


class GOFABase(LMSystem):
    """An LMSystem (model loading, abstract/frozen LLM tree) with GOFA's ids and adapter sets.
    Subclasses set `self.opts` before calling _init_gofa."""

    def _init_gofa(self, cfg):
        o = cfg.system
        if o.num_memory_tokens < 1:
            raise GmemError(f"system.num_memory_tokens: must be >= 1, got {o.num_memory_tokens}")
        if max(o.text_len_buckets) < o.max_text_len:
            raise GmemError(f"system.text_len_buckets: the largest ({max(o.text_len_buckets)}) must hold "
                            f"system.max_text_len={o.max_text_len}")
        self.p = o
        super().__init__(cfg, load_data=False)     # LMSystem: LLM, tokenizer, decoder_hooks()
        c = self.model_config
        if c.model_type not in ("llama", "mistral"):
            raise GmemError(f"model: GOFA runs on a LLaMA-family decoder, not {c.model_type!r}")
        self.special = SpecialIds(c.vocab_size, o.num_memory_tokens)
        self.dtype = to_dtype(c.dtype)
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id)
        by_name = {s.name: s for s in self.specs}
        if ENCODER_ADAPTER not in by_name:
            raise GmemError(f"adapters: GOFA needs a LoRA set named {ENCODER_ADAPTER!r} (the compressor's); "
                            f"have {sorted(by_name)}")
        self.enc_spec = by_name[ENCODER_ADAPTER]

    # ---- trees ---------------------------------------------------------------------------
    def llm_specs(self):
        return LMSystem.abstract_base(self)[1]

    def init_table(self, llm, key) -> jax.Array:
        """A fresh memory table [K + 3, D]: normal with the spread of the token embeddings, so
        the slots start at the scale of the inputs the decoder was trained on."""
        emb = llm["model"]["embed_tokens"]["embedding"]
        std = jnp.std(emb.astype(jnp.float32))
        return std * jax.random.normal(key, (self.special.table_rows, emb.shape[1]), jnp.float32)

    def init_encoder(self, llm, key) -> dict:
        """{"encadapt": fresh LoRA (B = 0: the base), "memory_table": fresh table}."""
        k1, k2 = jax.random.split(key)
        lora = init_adapters([self.enc_spec], llm, k1)[ENCODER_ADAPTER]
        return {ENCODER_ADAPTER: lora, "memory_table": self.init_table(llm, k2)}

    def encoder_specs(self, abstract: dict, llm_specs) -> dict:
        out = {ENCODER_ADAPTER: adapter_logical_specs({ENCODER_ADAPTER: abstract[ENCODER_ADAPTER]},
                                                      llm_specs)[ENCODER_ADAPTER]}
        out["memory_table"] = P(None, None)
        return out

    def variables(self, params, spec=None, tree=None) -> dict:
        """{"params": params} plus the adapter set `spec` (tree: its LoRA tree) when given."""
        v = {"params": params}
        if spec is not None:
            v["adapter"] = adapter_collection([spec], {spec.name: tree})
        return v

    def rngs(self, rng, *specs):
        """The dropout rng for an apply, only when one of the specs has dropout."""
        return {"dropout": rng} if rng is not None and any(s is not None and s.dropout > 0 for s in specs) else {}


def read_run(path: str, where: str) -> tuple[int, dict, dict]:
    """(step, saved trainable tree as host arrays, meta) of another run's latest checkpoint."""
    ck = open_checkpoint(path, CheckpointConfig())
    try:
        step, state, meta = ck.restore_arrays()
    finally:
        ck.close()
    if "trainable" not in state:
        raise GmemError(f"{where}: {path} step {step} holds no trainable state")
    return step, jax.tree_util.tree_map(np.asarray, state["trainable"]), meta


def check_shapes(got: dict, want: dict, where: str) -> None:
    """GmemError listing every missing, unexpected or mis-shaped leaf of got against want."""
    g, w = flatten(got), flatten(want)
    errs = [f"missing {k}" for k in sorted(set(w) - set(g))]
    errs += [f"unexpected {k}" for k in sorted(set(g) - set(w))]
    errs += [f"{k}: shape {tuple(np.shape(g[k]))} there, {tuple(w[k].shape)} here"
             for k in sorted(set(g) & set(w)) if tuple(np.shape(g[k])) != tuple(w[k].shape)]
    if errs:
        raise GmemError(f"{where}: does not fit this model: " + "; ".join(errs))
