"""VardaGPT as a gmem.train system (`system.name: varda`): the frozen backbone (+ optional
LoRA) of the lm system, the memory layers of gmem.systems.varda.model, and generation with the
memory. What VardaGPT is, and where it departs from the original: gmem.systems.varda.model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gmem.adapters.sharding import adapter_logical_specs
from gmem.config import register_system
from gmem.errors import GmemError
from gmem.models.generate import encode_text
from gmem.systems.lm import LMOptions, LMSystem
from gmem.systems.varda.generate import generate_with_memory
from gmem.systems.varda.model import VardaConfig, VardaModel


@dataclass
class VardaOptions(LMOptions):
    """The lm system's corpus and generation options, plus the memory's (VardaConfig: size,
    search, segmenting, gates, fusion) and the tokenizer: auto (the source's own, bytes for a
    random model) | gpt2 (the embedded GPT-2 BPE). report: infer.py also computes the
    perplexity table (backbone alone, memory wiped, memory carried) and the long-context probe."""

    name: str = "varda"
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
    tokenizer: str = "auto"
    report: bool = True         # infer.py: the perplexity table and the fact probe as well


@register_system("varda")
class VardaSystem(LMSystem):
    """VardaGPT for gmem.train: frozen backbone (+ optional LoRA) and trainable memory layers.

    Trainable tree: {"adapters": LoRA sets (may be empty), "varda": memory layers}.
    """

    Options = VardaOptions

    def __init__(self, cfg, load_data: bool = True):
        self.varda_cfg = VardaConfig.from_options(cfg.system)
        super().__init__(cfg, load_data=False)
        if self.varda_cfg.tokenizer == "gpt2":
            from gmem.hf.tokenizer import load_tokenizer
            self.tokenizer = load_tokenizer("gpt2-bpe")
        self.model = VardaModel(self.varda_cfg, self.module, self.model_config.hidden_size)
        if cfg.data.seq_len % min(self.varda_cfg.segment_len, cfg.data.seq_len):
            raise GmemError(f"data.seq_len={cfg.data.seq_len} must be a multiple of "
                            f"system.segment_len={self.varda_cfg.segment_len}")
        if load_data:
            self.data()

    @property
    def structure(self) -> dict:
        s = dict(super().structure)
        s["varda"] = dataclasses.asdict(self.varda_cfg)
        return s

    def init_trainable(self, base, rng):
        return {"adapters": super().init_trainable(base, rng),
                "varda": self.model.init_heads(jax.random.fold_in(rng, 1))}

    def abstract_trainable(self, abstract_base):
        return jax.eval_shape(lambda b: self.init_trainable(b, jax.random.PRNGKey(0)), abstract_base)

    def trainable_specs(self, abstract_trainable, base_specs):
        d, k = self.model.hidden, self.varda_cfg.num_search_results
        z = jnp.zeros((1, 1, d))
        boxed = jax.eval_shape(lambda: self.model.heads.init(jax.random.PRNGKey(0), z, jnp.zeros((1, 1, k, d)), z))
        return {"adapters": adapter_logical_specs(abstract_trainable["adapters"], base_specs),
                "varda": nn.get_partition_spec(boxed)["params"]}

    def forward(self, trainable, frozen, state, ids_BT, rng=None):
        backbone_vars = self.variables(trainable["adapters"], frozen)
        return self.model(trainable["varda"], backbone_vars, state, ids_BT, rng)

    def loss(self, trainable, frozen, batch: dict, rng):
        """Next-token CE over rows [B, L+1], memory fresh per row; aux: tokens, memory stats."""
        ids = batch["input_ids"]
        inputs, targets = ids[:, :-1], ids[:, 1:]
        mask = batch.get("mask")
        mask = jnp.ones(targets.shape, jnp.float32) if mask is None else mask[:, 1:].astype(jnp.float32)
        state = self.model.init_memory(ids.shape[0])
        logits, _, stats = self.forward(trainable, frozen, state, inputs, rng)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        n = jnp.maximum(mask.sum(), 1.0)
        return (ce * mask).sum() / n, {"tokens": mask.sum(), **stats}

    def predict(self, trainable, frozen, prompts=None) -> tuple[list[dict], dict]:
        """Generate from system.prompts (greedy, or sampled with system.temperature / top_k),
        reading and writing a fresh memory per prompt as in training."""
        e = self.opts
        prompts = list(prompts or e.prompts)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        new = generate_with_memory(self, trainable, frozen, [encode_text(self.tokenizer, p) for p in prompts],
                                   e.max_new_tokens, e.temperature, e.top_k, eos, jax.random.PRNGKey(self.cfg.train.seed))
        texts = [self.tokenizer.decode(t, skip_special_tokens=True) for t in new]
        rows = [{"prompt": p, "generation": t} for p, t in zip(prompts, texts)]
        if not e.report:
            return rows, {}
        from gmem.systems.varda.eval import fact_probe, perplexity_table
        table = perplexity_table(self, trainable, frozen, self.cfg.eval.batches)
        metrics = {"ppl/rows": table.pop("rows")}
        for k, (loss, ppl) in table.items():
            metrics.update({f"ppl/{k}/loss": loss, f"ppl/{k}/ppl": ppl})
        metrics.update({f"probe/{k}": v for k, v in fact_probe(self, trainable, frozen).items()})
        return rows, metrics
