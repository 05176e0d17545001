"""GMT stage 2 (`system.name: gmt`): instruction tuning with the graph as memory
(specs/gofa-gmt.md part B).

The Alpaca-template prompt of a triple goes through a frozen LLM whose top layers read, by
zero-gated memory cross-attention (gmem.memory.cross_attention, a decoder hook), 16 memory
tokens made from the triple's KG neighbourhood by the semantic graph module (frozen, from a
gmt_stage1 run or fresh, unless train_graph_module), the memory tokenizer and the projection.
Trained: the memory tokenizer, projection, gates and norms, and LoRA on the memory
cross-attention. Loss on the response only unless train_on_inputs.
Modes: gmt (graph memory), lora (baseline: same data and steps, LoRA on the self-attention of
the memory layers, no graph), base (zero-shot base model, nothing trained). Evaluation
(gmem.systems.gmt.eval): triple classification by generation, link prediction by scoring
every candidate entity, and GMT's generated ranked lists.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from gmem.adapters import adapter_collection, init_adapters
from gmem.adapters.sharding import adapter_logical_specs
from gmem.config import CheckpointConfig, register_system
from gmem.errors import GmemError
from gmem.memory.cross_attention import (
    BLOCK_NAME,
    init_from_self_attention,
    memory_block_specs,
    memory_hook,
    top_layers,
    with_memory_params,
)
from gmem.systems.gmt import checkpoint as C
from gmem.systems.gmt import data as D
from gmem.systems.gmt import graph as G
from gmem.systems.gmt.checkpoint import apply_to_system
from gmem.systems.gmt.eval import evaluate, predict
from gmem.systems.gmt.kg_base import KGSystemBase
from gmem.systems.gmt.options import GMTOptions, Mode
from gmem.systems.gmt.original import apply_settings
from gmem.systems.gmt.shared_prefix import SharedPrefix
from gmem.systems.lm import LMSystem
from gmem.train.checkpoint import open_checkpoint


@register_system("gmt")
class GMTSystem(KGSystemBase, SharedPrefix, LMSystem):
    Options = GMTOptions
    stage = 2

    def __init__(self, cfg, load_data: bool = True):
        p = cfg.system
        if p.pad_to_multiple_of < 0:
            raise GmemError(f"system.pad_to_multiple_of: a whole number >= 0 (0 = every batch "
                            f"padded to data.seq_len), got {p.pad_to_multiple_of}")
        self._read_originals(cfg)       # before anything is built from the options it may set
        self._init_kg(p)
        self.use_graph = p.mode == Mode.gmt
        super().__init__(cfg, load_data=False)   # LMSystem: the LLM, with decoder_hooks()
        c = self.model_config
        self.specs = [] if p.mode == Mode.base else self.specs
        self.gcfg = self._graph_config(llm_dim=c.hidden_size, num_memory_tokens=p.num_memory_tokens,
                                       memory_heads=p.memory_heads, memory_norm=p.memory_norm)
        if self.use_graph and p.sgm_ckpt:
            self._load_stage1(None)     # now, not inside a trace (abstract_base runs load_base under eval_shape)
        self.pad_id = 0
        self.prefix_ids, self.train_prefix = [], 0
        self._data = None
        if load_data:
            self.data()
        if self.use_graph and not (p.sgm_ckpt or p.import_ckpt or p.train_graph_module):
            # Legal (a quick demo, or an ablation), but not GMT as the reference runs it. Last, so
            # a bad option or file above is still the only line a user sees.
            warnings.warn("system.sgm_ckpt is empty and train_graph_module is off: the graph module "
                          "stays at its random init; run stage 1 first (configs/gmt_stage1.yaml) and "
                          "pass system.sgm_ckpt=RUN", stacklevel=2)

    def decoder_hooks(self) -> tuple:
        """The memory cross-attention in memory_layers (default: the top memory_top layers)."""
        if not self.use_graph:
            return ()
        n = self.model_config.num_hidden_layers
        self.memory_layers = tuple(self.p.memory_layers) or top_layers(n, self.p.memory_top)
        return (memory_hook(self.model_config, self.memory_layers, self.p.gate.value),)

    @property
    def structure(self) -> dict:
        s = dict(self._graph_structure(), mode=self.p.mode.value)
        s.update(LMSystem.structure.fget(self))
        s["system"] = self.name
        s["memory_layers"] = list(self.memory_layers) if self.use_graph else []
        return s

    # ---- parameters ---------------------------------------------------------------------------
    def _llm_params(self):
        params = LMSystem.load_base(self)
        return init_from_self_attention(params, self.memory_layers) if self.use_graph else params

    def _sgm_params(self, key):
        enc = G.init_encoder(self.gcfg, key, self.kg.num_entities, self.p.init.value)
        sgm = dict(enc["sgm"], rel_semantic=jnp.asarray(self._rel_table()))
        if self.p.sgm_ckpt:
            got = self._load_stage1(sgm)
            want = jax.tree_util.tree_map(np.shape, sgm)
            if jax.tree_util.tree_map(np.shape, got) != want:
                raise GmemError(f"system.sgm_ckpt={self.p.sgm_ckpt!r}: the stage-1 SGM's shapes "
                                f"{jax.tree_util.tree_map(np.shape, got)} do not fit this run's {want}")
            sgm = got
        return enc, sgm

    def _read_originals(self, cfg) -> None:
        """Original GMT outputs named by import_ckpt (stage 2) and sgm_ckpt (an original stage-1
        folder): read once; their settings applied to cfg (gmem.systems.gmt.original); their
        relation table becomes this run's."""
        p = cfg.system
        self._original = self._stage1 = None
        if p.mode == Mode.gmt and p.sgm_ckpt and C.is_original_stage1(p.sgm_ckpt):
            st = C.load_stage1_checkpoint(p.sgm_ckpt)
            apply_settings(cfg, st["config"], f"system.sgm_ckpt={p.sgm_ckpt!r}", stage=1)
            self._stage1, self._table = st["sgm"], st["sgm"]["rel_semantic"]
        if p.mode == Mode.gmt and p.import_ckpt:
            ck = C.load_gmt_checkpoint(p.import_ckpt)
            apply_settings(cfg, ck["config"], f"system.import_ckpt={p.import_ckpt!r}", lora_rank=C.lora_rank(ck))
            self._original, self._table = ck, ck["encoder"]["sgm"]["rel_semantic"]

    def _load_stage1(self, sgm):
        """The SGM trained by stage 1 (a run folder or its checkpoints/), read once."""
        if getattr(self, "_stage1", None) is None:
            self._stage1 = self._read_stage1()
        return self._stage1

    def _read_stage1(self):
        """{SGM params} from a gmt_stage1 run's latest checkpoint: its trainable tree, and the
        relation table (trained there, or re-made here from the same KG and rel_semantics)."""
        where = f"system.sgm_ckpt={self.p.sgm_ckpt!r}"
        ck = open_checkpoint(self.p.sgm_ckpt, CheckpointConfig())
        try:
            step, state, meta = ck.restore_arrays()
        finally:
            ck.close()
        st, saved = meta.get("structure", {}), meta.get("config", {}).get("system", {})
        if st.get("stage") != 1:
            raise GmemError(f"{where}: step {step} is not a gmt_stage1 checkpoint")
        g = st.get("graph", {})
        diff = [f"{k}: {g.get(k)} there, {getattr(self.gcfg, k)} here" for k in ("graph_dim", "rel_dim",
                "sgm_layers", "sgm_heads", "num_edge_relations") if g.get(k) != getattr(self.gcfg, k)]
        if st.get("kg") != self.p.kg:
            diff.append(f"kg: {st.get('kg')} there, {self.p.kg} here")
        t = dict(state["trainable"])
        if "rel_semantic" not in t:
            for k, d in (("rel_semantics", None), ("rel_text", "readable"), ("rel_definitions", "")):
                there, here = saved.get(k, d), getattr(getattr(self.p, k), "value", getattr(self.p, k))
                if there != here:
                    diff.append(f"{k}: {there} there, {here} here")
        if diff:
            raise GmemError(f"{where}: the stage-1 SGM does not fit this run: " + "; ".join(diff))
        t.setdefault("rel_semantic", np.asarray(self._rel_table()))
        return t

    def load_base(self):
        key = jax.random.PRNGKey(self.cfg.model.seed + 1)
        out = {"llm": self._llm_params()}
        if self.use_graph:
            _, sgm = self._sgm_params(key)
            out["hist"] = jnp.asarray(self.hist)
            if self.p.train_graph_module:
                out["rel_semantic"] = sgm["rel_semantic"]
            else:
                out["sgm"] = sgm
                out["table"] = G.edge_table(self.gcfg, sgm, out["hist"])
            if self._original is not None:
                # GMT's own output folder (graph_encoder.pth, memory_attn.pth, gmt_config.json).
                fresh = self.init_trainable(out, jax.random.PRNGKey(0), imported=False)
                self._imported, out = apply_to_system(self._original, self, fresh, out)
        return out

    def abstract_base(self):
        if not self.use_graph:
            abs_, specs = LMSystem.abstract_base(self)
            return {"llm": abs_}, {"llm": specs}
        abs_ = jax.eval_shape(self.load_base)
        specs = jax.tree_util.tree_map(lambda a: P(*([None] * a.ndim)), abs_)
        _, llm_specs = LMSystem.abstract_base(self)
        specs["llm"] = memory_block_specs(llm_specs, abs_["llm"])
        return abs_, specs

    def init_trainable(self, base, rng, imported=True):
        if imported and getattr(self, "_imported", None) is not None:
            return self._imported
        k1, k2 = jax.random.split(rng)
        llm = base["llm"]
        out = {"lora": init_adapters(self.specs, llm, k1) if self.specs else {}}
        if self.use_graph:
            enc, sgm = self._sgm_params(jax.random.PRNGKey(self.cfg.model.seed + 1))
            out["mem"] = {f"layers_{i}": {k: v for k, v in llm["model"][f"layers_{i}"][BLOCK_NAME].items()
                                          if k in ("memory_gate", "memory_layernorm")}
                          for i in self.memory_layers}
            out["enc"] = {"tokenizer": enc["tokenizer"], "proj": enc["proj"]}
            if self.p.train_graph_module:
                out["enc"]["sgm"] = _without(sgm, ("rel_semantic",))
        return jax.tree_util.tree_map(jnp.asarray, out)

    def abstract_trainable(self, abstract_base):
        return jax.eval_shape(lambda b: self.init_trainable(b, jax.random.PRNGKey(0)), abstract_base)

    def trainable_specs(self, abstract_trainable, base_specs):
        specs = jax.tree_util.tree_map(lambda a: P(*([None] * a.ndim)), abstract_trainable)
        if abstract_trainable.get("lora"):
            specs["lora"] = adapter_logical_specs(abstract_trainable["lora"], base_specs["llm"])
        return specs

    def variables(self, trainable, frozen) -> dict:
        llm = frozen["llm"]
        if self.use_graph:
            llm = with_memory_params(llm, trainable["mem"])
        v = {"params": llm}
        if self.specs:
            v["adapter"] = adapter_collection(self.specs, trainable["lora"], llm)
        return v

    def memory(self, trainable, frozen, batch, deterministic=True, rng=None):
        """Graph memory [B, M, D_llm] for a batch holding edge_rel/edge_nbr/edge_mask, or None."""
        if not self.use_graph:
            return None
        enc = trainable["enc"]
        if self.p.train_graph_module:
            enc = dict(enc, sgm=dict(enc["sgm"], rel_semantic=frozen["rel_semantic"]))
            mem = G.graph_memory(self.gcfg, enc, batch, frozen["hist"], None, deterministic, rng)
        else:
            mem = G.graph_memory(self.gcfg, enc, batch, table=frozen["table"])
        # Diagnostics (infer.py): does the model read its memory? (options.Ablation)
        if self.p.memory_ablation == "zero":
            mem = jnp.zeros_like(mem)
        elif self.p.memory_ablation == "shuffle":
            mem = jnp.roll(mem, 1, axis=0)
        return mem

    # ---- loss ---------------------------------------------------------------------------------
    def loss(self, trainable, frozen, batch: dict, rng):
        """Mean NLL of the response tokens (all tokens with train_on_inputs); aux: tokens in the
        batch, target tokens. rng None: evaluation (no dropout)."""
        r1, r2 = jax.random.split(rng) if rng is not None else (None, None)   # None: evaluation
        lp = self.token_logprobs(trainable, frozen, batch, rng=r1, train=rng is not None, graph_rng=r2)
        mask = batch["loss_mask"][:, -lp.shape[1]:]
        n = jnp.maximum(mask.sum(), 1.0)
        return -(lp * mask).sum() / n, {"tokens": batch["attention_mask"].sum().astype(jnp.float32),
                                        "target_tokens": mask.sum()}

    def token_logprobs(self, trainable, frozen, batch, rng=None, train=False, graph_rng=None,
                       window=None, prefix: int | None = None):
        """log p(token j | tokens < j) for the last K positions [B, K] (K = the response window,
        or L-1 with train_on_inputs): the LM head runs only where a loss can be.
        prefix: the shared prefix the rows were packed with (`shared_len`; None = training data's)."""
        ids, att = batch["input_ids"], batch["attention_mask"]
        k = window or (ids.shape[1] - 1 if self.p.train_on_inputs else self.resp_window)
        mem = self.memory(trainable, frozen, batch, deterministic=not train, rng=graph_rng)
        drop = train and any(s.dropout > 0 for s in self.specs)
        variables = self.variables(trainable, frozen)
        module = self.module_for(self.train_prefix if prefix is None else prefix, variables["params"])
        logits = module.apply(variables, ids, att, memory=mem, k=k, method=_window_logits, rngs={"dropout": rng} if drop else {})
        tgt = ids[:, -k:]
        return -optax.softmax_cross_entropy_with_integer_labels(logits, tgt)

    # ---- data -----------------------------------------------------------------------------------
    def records(self, split: str) -> list[dict]:
        p = self.p
        path = getattr(p, f"{split}_json", "")
        if path:
            recs = D.load_records(path)
            D.check_ids(recs, self.kg.num_entities, self.kg.num_relations, path)
            return recs
        if split not in self.splits:
            raise GmemError(f"system.kg: {p.kg} has no {split} split")
        seed = p.neg_seed + {"train": 0, "valid": 1, "test": 2}[split]
        trip, lab = D.classification_set(self.splits[split], self.kg.num_entities, self.known, seed,
                                         self.kg.num_relations, shuffle=split == "train")
        return D.classification_records(self.kg, trip, lab)

    def encode(self, records, train_on_inputs=None):
        """Tokenised, left-padded arrays (+ graph edges) for records."""
        toi = self.p.train_on_inputs if train_on_inputs is None else train_on_inputs
        enc = D.encode_records(self.tokenizer, records, self.p.add_eos,
                               getattr(self.tokenizer, "eos_token_id", None))
        pre = self.prefix_ids
        shared = bool(len(pre)) and not toi and all(      # (a truncated row loses its prefix)
            plen > len(pre) and len(full) <= self.cfg.data.seq_len and full[:len(pre)] == pre
            for full, plen in enc)
        ids, att, lm = D.pack(enc, self.cfg.data.seq_len, self.pad_id, toi, len(pre) if shared else 0)
        out = {"input_ids": ids, "attention_mask": att, "loss_mask": lm}
        out.update(self.edges(np.asarray([r["embedding_ids"] for r in records], np.int64)))
        return out

    def trained_layers(self) -> list[int]:
        """Layers with a memory block (SharedPrefix adds the adapters' layers)."""
        return list(self.memory_layers) if self.use_graph else []

    def edges(self, triples):
        e = G.query_edges(self.index, triples, self.p.mask_query, self.num_edges, self._padded)
        return dict(e, edge_mask=e["edge_mask"].astype(np.int32))

    def data(self):
        if self._data is None:
            p, d = self.p, self.cfg.data
            train = self.records("train")
            if p.max_train:
                train = train[: p.max_train]
            trip = np.asarray([r["embedding_ids"] for r in train] + [[0, 0, 0]], np.int64)
            for s in ("valid", "test"):
                if getattr(p, f"{s}_json") or s in self.splits:
                    trip = np.concatenate([trip, np.asarray([r["embedding_ids"] for r in self.records(s)])])
            self.num_edges = -(-G.max_query_edges(self.index, trip) // 16) * 16
            enc = D.encode_records(self.tokenizer, train, p.add_eos, getattr(self.tokenizer, "eos_token_id", None))
            self.resp_window = max(len(f) - n for f, n in enc) + 1
            self.prefix_ids = [] if p.train_on_inputs else list(enc[0][0][:D.common_prefix(enc)])
            if not p.train_on_inputs and self.resp_window > d.seq_len - 1:
                raise GmemError(f"data.seq_len={d.seq_len} is shorter than the longest response")
            self._data = {"train": self.encode(train)}
            self.train_prefix = self.shared_len(self._data["train"])
        return self._data

    def batch_shapes(self) -> dict:
        d = self.cfg.data
        b = d.batch_size
        self.data()
        s = {k: jax.ShapeDtypeStruct((b, d.seq_len), jnp.float32 if k == "loss_mask" else jnp.int32)
             for k in ("input_ids", "attention_mask", "loss_mask")}
        s.update({k: jax.ShapeDtypeStruct((b, self.num_edges), jnp.int32)
                  for k in ("edge_rel", "edge_nbr", "edge_mask")})
        return s

    def batch(self, index: int, host: slice = slice(None)) -> dict:
        """Rows of global batch `index`: epoch-wise seeded permutations, no example dropped."""
        data = self.data()["train"]
        rows = D.epoch_rows(len(data["input_ids"]), self.cfg.data.batch_size, index, self.cfg.data.seed)
        out = {k: v[rows] for k, v in data.items()}
        if self.p.pad_to_multiple_of:
            # Width from the whole global batch, so that every host cuts the same columns.
            out = D.trim_width(out, self.p.pad_to_multiple_of, self.train_prefix)
        return {k: v[host] for k, v in out.items()}

    # ---- evaluation (gmt.eval) -------------------------------------------------------------------
    def evaluate(self, trainable, frozen, eval_fn=None) -> dict:
        return evaluate(self, trainable, frozen)

    def predict(self, trainable, frozen, prompts=None):
        return predict(self, trainable, frozen)


def _window_logits(m, ids, att, memory, k):
    """Logits [B, k, V] predicting the last k tokens (the LM head runs on k positions only)."""
    hook_inputs = None if memory is None else {"memory": memory}
    h, _ = m.model(ids, att, hook_inputs=hook_inputs, keep=k + 1)     # last layer: k + 1 positions
    h = h[:, :-1]
    logits = m.lm_head(h) if not m.config.tie_word_embeddings else m.model.embed_tokens.attend(h)
    return logits.astype(jnp.float32)


def _without(tree: dict, keys) -> dict:
    return {k: v for k, v in tree.items() if k not in keys}
