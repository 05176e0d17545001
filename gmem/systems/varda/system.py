"""VardaGPT as a gmem.train system (`system.name: varda`): the frozen backbone (+ optional
LoRA) of the lm system, the memory layers of gmem.systems.varda.model, and generation with the
memory. What VardaGPT is, and where it departs from the original: gmem.systems.varda.model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gmem.adapters.sharding import adapter_logical_specs
from gmem.config import register_system
from gmem.errors import GmemError
from gmem.hf.tokenizer import load_tokenizer
from gmem.models.generate import encode_text
from gmem.systems.lm import LMOptions, LMSystem
from gmem.systems.varda.eval import fact_probe, perplexity_table
from gmem.systems.varda.generate import generate_with_memory
from gmem.systems.varda.model import VardaConfig, VardaModel
from gmem.systems.varda.recall import recall_batch


@dataclass
class VardaOptions(LMOptions, VardaConfig):
    """The lm system's corpus and generation options, plus the memory's (inherited from
    VardaConfig: size, search, segmenting, gates, fusion) and the tokenizer: auto (the source's own, bytes for a
    random model) | gpt2 (the embedded GPT-2 BPE). report: infer.py also computes the
    perplexity table (backbone alone, memory wiped, memory carried) and the long-context probe.
    train_backbone: the backbone is trained too, every weight (the frozen tree is then empty).
    recall_fraction / recall_weight: the recall curriculum (gmem.systems.varda.recall).
    probe_trials / probe_gap: the long-context probe infer.py runs (gmem.systems.varda.eval)."""

    name: str = "varda"
    report: bool = True         # infer.py: the perplexity table and the fact probe as well
    train_backbone: bool = False  # every backbone weight trainable (the original's full fine-tuning)
    recall_fraction: float = 0.0  # share of training rows turned into recall rows (varda/recall.py)
    recall_weight: float = 1.0    # loss weight of a recall row's answer tokens
    probe_trials: int = 10        # infer.py's long-context probe: trials (one name each, in turn)
    probe_gap: int = 2            # segments of held-out text between the fact and the question


@register_system("varda")
class VardaSystem(LMSystem):
    """VardaGPT for gmem.train: frozen backbone (+ optional LoRA) and trainable memory layers.

    Trainable tree: {"adapters": LoRA sets (may be empty), "varda": memory layers}, plus
    "backbone": every backbone weight (float32) with system.train_backbone, when the frozen
    tree is empty.
    """

    Options = VardaOptions

    def __init__(self, cfg, load_data: bool = True):
        self.varda_cfg = VardaConfig.from_options(cfg.system)
        super().__init__(cfg, load_data=False)
        if self.varda_cfg.tokenizer == "gpt2":
            self.tokenizer = load_tokenizer("gpt2-bpe")
        self.model = VardaModel(self.varda_cfg, self.module, self.model_config.hidden_size)
        if cfg.data.seq_len % min(self.varda_cfg.segment_len, cfg.data.seq_len):
            raise GmemError(f"data.seq_len={cfg.data.seq_len} must be a multiple of "
                            f"system.segment_len={self.varda_cfg.segment_len}")
        o = cfg.system
        if not 0.0 <= o.recall_fraction <= 1.0:
            raise GmemError(f"system.recall_fraction={o.recall_fraction} must be in [0, 1]")
        if o.probe_trials < 1 or o.probe_gap < 0:
            raise GmemError(f"system.probe_trials={o.probe_trials} must be >= 1 and system.probe_gap="
                            f"{o.probe_gap} >= 0")
        if o.recall_fraction > 0 and o.line_split:
            raise GmemError("system.recall_fraction needs whole corpus rows; it cannot be used with system.line_split")
        if load_data:
            self.data()

    @property
    def structure(self) -> dict:
        s = dict(super().structure)
        v = dataclasses.asdict(self.varda_cfg)
        if v["read"] == "input":  # the original read: checkpoints saved before `read` existed still match
            for k in ("read", "key_proj", "key_ngram"):
                v.pop(k)
        s["varda"] = v | {"train_backbone": self.opts.train_backbone}
        return s

    # ---- the partition: frozen backbone (+ LoRA), or every backbone weight trainable ----------
    def abstract_base(self):
        return ({}, {}) if self.opts.train_backbone else super().abstract_base()

    def load_base(self):
        return {} if self.opts.train_backbone else super().load_base()

    def init_trainable(self, base, rng):
        out = {}
        if self.opts.train_backbone:
            base = out["backbone"] = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), super().load_base())
        out.update(adapters=super().init_trainable(base, rng), varda=self.model.init_heads(jax.random.fold_in(rng, 1)))
        return out

    def abstract_trainable(self, abstract_base):
        if not self.opts.train_backbone:
            return jax.eval_shape(lambda b: self.init_trainable(b, jax.random.PRNGKey(0)), abstract_base)
        f32 = lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32 if jnp.issubdtype(a.dtype, jnp.floating) else a.dtype)
        bb = jax.tree_util.tree_map(f32, super().abstract_base()[0])
        rest = jax.eval_shape(lambda b: {"adapters": super(VardaSystem, self).init_trainable(b, jax.random.PRNGKey(0)),
                                         "varda": self.model.init_heads(jax.random.PRNGKey(1))}, bb)
        return {"backbone": bb, **rest}

    def trainable_specs(self, abstract_trainable, base_specs):
        boxed = jax.eval_shape(lambda: self.model.heads.init(jax.random.PRNGKey(0), *self.model.head_init_args()))
        out = {}
        if self.opts.train_backbone:
            base_specs = out["backbone"] = super().abstract_base()[1]
        out.update(adapters=adapter_logical_specs(abstract_trainable["adapters"], base_specs),
                   varda=nn.get_partition_spec(boxed)["params"])
        return out

    def backbone_variables(self, trainable, frozen) -> dict:
        """The backbone's variables: its weights (frozen, or trainable["backbone"]) and LoRA."""
        base = trainable["backbone"] if self.opts.train_backbone else frozen
        return self.variables(trainable["adapters"], base)

    def forward(self, trainable, frozen, state, ids_BT, rng=None):
        return self.model(trainable["varda"], self.backbone_variables(trainable, frozen), state, ids_BT, rng)

    # ---- data: corpus rows, with recall rows mixed in ------------------------------------------
    def batch_shapes(self) -> dict:
        s = super().batch_shapes()
        if self.opts.recall_fraction > 0 and "mask" not in s:
            s["mask"] = jax.ShapeDtypeStruct(s["input_ids"].shape, jnp.float32)
        return s

    def batch(self, index: int, host: slice = slice(None)) -> dict:
        o = self.opts
        if o.recall_fraction <= 0:
            return super().batch(index, host)
        stream = self.data()[0]
        encode = lambda t: encode_text(self.tokenizer, t, add_special_tokens=False)
        ids, w = recall_batch(stream.rows[stream.indices(index)], encode, self.varda_cfg.segment_len,
                              o.recall_fraction, o.recall_weight, self.cfg.data.seed, index)
        return {"input_ids": ids[host], "mask": w[host]}

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
        table = perplexity_table(self, trainable, frozen, self.cfg.eval.batches)
        metrics = {"ppl/rows": table.pop("rows")}
        for k, (loss, ppl) in table.items():
            metrics.update({f"ppl/{k}/loss": loss, f"ppl/{k}/ppl": ppl})
        if self.varda_cfg.read == "next_token":  # what training made of the read's trust
            v = trainable["varda"]
            metrics.update({"read/tau": float(jnp.exp(v["log_tau"])), "read/gate_slope": float(v["gate_slope"]),
                            "read/gate_bias": float(v["gate_bias"])})
        probe = fact_probe(self, trainable, frozen, trials=e.probe_trials, gap=e.probe_gap)
        metrics.update({f"probe/{k}": v for k, v in probe.items()})
        return rows, metrics
