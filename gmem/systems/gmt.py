"""GMT (Graph-as-Memory Tuning), assembled for gmem.train (specs/gofa-gmt.md part B).

Options live in `system.params` (see PARAMS). Stages:
  stage 1  SGM pretraining: DistMult scores of entity encodings, `num_negatives` head/tail
           corruptions per positive (optionally filtered), trainable context layers.
  stage 2  instruction tuning (Alpaca template) of the memory tokenizer, projection, memory
           gates/norms and LoRA on the memory cross-attention; base LLM (and SGM, unless
           train_graph_module) frozen. Loss on the response only unless train_on_inputs.
Modes (stage 2): gmt (graph memory), lora (baseline: same data and steps, LoRA on the
self-attention of the memory layers, no graph), base (zero-shot base model, nothing trained).
Evaluation (gmt_eval): triple classification by generation, link prediction by scoring every
candidate entity, and GMT's generated ranked lists.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from gmem.adapters import adapter_collection, init_adapters
from gmem.errors import GmemError
from gmem.graph.kg import NeighbourIndex
from gmem.graph.layers import GraphMemoryConfig
from gmem.memory.cross_attention import (BLOCK_NAME, init_from_self_attention, memory_block, memory_block_specs,
                                          top_layers, with_memory_params)
from gmem.models.llama import LlamaForCausalLM
from gmem.systems import gmt_data as D
from gmem.systems import gmt_graph as G
from gmem.systems.lm import LMSystem, json_safe
from gmem.systems.shared_prefix import SharedPrefix

PARAMS = dict(
    stage=2, mode="gmt", kg="umls", add_inverse=False, mask_query=True,
    train_json="", valid_json="", test_json="", max_train=0, neg_seed=0,
    rel_semantics="bert", graph_dim=256, sgm_layers=2, sgm_heads=4, top_k=8, graph_dropout=0.1,
    num_memory_tokens=16, memory_heads=4, memory_layers=[], memory_top=8, gate="scalar",
    train_on_inputs=False, add_eos=False, sgm_ckpt="", train_graph_module=False,
    num_negatives=64, filtered_negatives=False, trainable_rel_semantics=False,
    eval_split="test", max_eval=0, eval_batch=16, max_new_tokens=4, memory_ablation="",
    lp_queries=0, lp_batch=64, lp_generate_queries=0, lp_candidates=20, import_ckpt="",
    pad_to_multiple_of=0, memory_norm=False)


class GMTSystem(SharedPrefix, LMSystem):
    name = "gmt"

    def __init__(self, cfg, load_data: bool = True):
        p = dict(PARAMS)
        unknown = sorted(set(cfg.system.params) - set(p))
        if unknown:
            raise GmemError(f"system.params: unknown GMT option(s) {unknown}; known: {sorted(p)}")
        p.update(cfg.system.params)
        self.p = p
        if p["stage"] not in (1, 2) or p["mode"] not in ("gmt", "lora", "base"):
            raise GmemError(f"system.params: stage must be 1 or 2 (got {p['stage']}), mode gmt|lora|base "
                            f"(got {p['mode']!r})")
        if not isinstance(p["pad_to_multiple_of"], int) or p["pad_to_multiple_of"] < 0:
            raise GmemError(f"system.params.pad_to_multiple_of: a whole number >= 0 (0 = every batch "
                            f"padded to data.seq_len), got {p['pad_to_multiple_of']!r}")
        if not isinstance(p["memory_norm"], bool):
            raise GmemError(f"system.params.memory_norm: true or false, got {p['memory_norm']!r}")
        if p["memory_ablation"] not in ("", "zero", "shuffle"):
            raise GmemError(f"system.params.memory_ablation: '' | zero | shuffle, got {p['memory_ablation']!r}")
        self.kg, self.splits = D.load_kg(p["kg"], p["add_inverse"])
        self.index = NeighbourIndex.build(self.kg)
        self.known = np.concatenate([s for s in self.splits.values()], 0)
        self._padded = self.index.padded()
        self.hist = self.index.relation_histogram(np.arange(self.kg.num_entities))
        if p["stage"] == 1:
            self.cfg, self.specs, self.tokenizer = cfg, [], None
            self.gcfg = self._graph_config(llm_dim=1)
            self._data = None
            return
        super().__init__(cfg, load_data=False)
        c = self.model_config
        self.memory_layers = tuple(p["memory_layers"]) or top_layers(c.num_hidden_layers, p["memory_top"])
        self.use_graph = p["mode"] == "gmt"
        if self.use_graph:
            self.module = LlamaForCausalLM(c, memory_block=memory_block(c, p["gate"]),
                                           memory_layers=self.memory_layers)
        self.specs = [] if p["mode"] == "base" else self.specs
        self.gcfg = self._graph_config(llm_dim=c.hidden_size)
        if self.use_graph and p["sgm_ckpt"]:
            self._load_stage1(None)     # now, not inside a trace (abstract_base runs load_base under eval_shape)
        self.pad_id = 0
        self.prefix_ids, self.train_prefix = [], 0
        self._data = None
        if load_data:
            self.data()

    def _graph_config(self, llm_dim):
        p = self.p
        return GraphMemoryConfig(num_edge_relations=self.kg.num_edge_relations, rel_dim=self._rel_table().shape[1],
                                 graph_dim=p["graph_dim"], sgm_layers=p["sgm_layers"], sgm_heads=p["sgm_heads"],
                                 top_k=p["top_k"], dropout=p["graph_dropout"],
                                 num_memory_tokens=p["num_memory_tokens"], memory_heads=p["memory_heads"],
                                 llm_dim=llm_dim, memory_norm=bool(p["memory_norm"]))

    def _rel_table(self):
        if getattr(self, "_table", None) is None:
            from gmem.graph.relations import relation_semantics
            src = self.p["rel_semantics"]
            self._table = relation_semantics([D.entity_text(n) for n in self.kg.relations], src,
                                             add_inverse=self.kg.add_inverse, dim=self.p["graph_dim"])
        return self._table

    @property
    def structure(self) -> dict:
        p = self.p
        s = {"system": "gmt", "stage": p["stage"], "mode": p["mode"], "kg": p["kg"],
             "graph": json_safe({k: v for k, v in dataclasses.asdict(self.gcfg).items()
                                 if k != "memory_norm"})}   # no parameters: not structure
        if p["stage"] == 2:
            s.update(super().structure)
            s["system"] = "gmt"
            s["memory_layers"] = list(self.memory_layers) if self.use_graph else []
        return s

    # ---- parameters ---------------------------------------------------------------------------
    def _llm_params(self):
        params = LMSystem.load_base(self)
        return init_from_self_attention(params, self.memory_layers) if self.use_graph else params

    def _sgm_params(self, key):
        enc = G.init_encoder(self.gcfg, key, self.kg.num_entities)
        sgm = dict(enc["sgm"], rel_semantic=jnp.asarray(self._rel_table()))
        if self.p["stage"] == 2 and self.p["sgm_ckpt"]:
            sgm = self._load_stage1(sgm)
        return enc, sgm

    def _load_stage1(self, sgm):
        """The SGM trained by stage 1 (a run folder or its checkpoints/), read once."""
        if getattr(self, "_stage1", None) is None:
            self._stage1 = self._read_stage1()
        return self._stage1

    def _read_stage1(self):
        from gmem.train.infer import restore_run
        _, sys1, _, state, frozen, _ = restore_run(self.p["sgm_ckpt"])
        if sys1.gcfg.graph_dim != self.gcfg.graph_dim or sys1.gcfg.rel_dim != self.gcfg.rel_dim:
            raise GmemError(f"system.params.sgm_ckpt: stage-1 graph dims {sys1.gcfg} differ from {self.gcfg}")
        t = jax.device_get(state.trainable)
        return jax.tree_util.tree_map(np.asarray, dict(t, rel_semantic=t.get("rel_semantic", frozen.get("rel_semantic"))))

    def load_base(self):
        key = jax.random.PRNGKey(self.cfg.model.seed + 1)
        if self.p["stage"] == 1:
            _, sgm = self._sgm_params(key)
            out = {"kg": self._stage1_consts()}
            if not self.p["trainable_rel_semantics"]:
                out["rel_semantic"] = sgm["rel_semantic"]
            return out
        out = {"llm": self._llm_params()}
        if self.use_graph:
            _, sgm = self._sgm_params(key)
            out["hist"] = jnp.asarray(self.hist)
            if self.p["train_graph_module"]:
                out["rel_semantic"] = sgm["rel_semantic"]
            else:
                out["sgm"] = sgm
                out["table"] = G.edge_table(self.gcfg, sgm, out["hist"])
            if self.p["import_ckpt"]:
                # GMT's own output folder (graph_encoder.pth, memory_attn.pth, gmt_config.json).
                from gmem.hf.gmt_checkpoint import apply_to_system, load_gmt_checkpoint
                fresh = self.init_trainable(out, jax.random.PRNGKey(0), imported=False)
                self._imported, out = apply_to_system(load_gmt_checkpoint(self.p["import_ckpt"]), self, fresh, out)
        return out

    def _stage1_consts(self):
        return {k: jnp.asarray(v) for k, v in dict(G.stage1_constants(self.index), hist=self.hist).items()}

    def abstract_base(self):
        if self.p["stage"] == 2 and not self.use_graph:
            abs_, specs = LMSystem.abstract_base(self)
            return {"llm": abs_}, {"llm": specs}
        abs_ = jax.eval_shape(self.load_base)
        specs = jax.tree_util.tree_map(lambda a: P(*([None] * a.ndim)), abs_)
        if self.p["stage"] == 2:
            _, llm_specs = LMSystem.abstract_base(self)
            specs["llm"] = memory_block_specs(llm_specs, abs_["llm"])
        return abs_, specs

    def init_trainable(self, base, rng, imported=True):
        if imported and getattr(self, "_imported", None) is not None:
            return self._imported
        k1, k2 = jax.random.split(rng)
        if self.p["stage"] == 1:
            _, sgm = self._sgm_params(jax.random.PRNGKey(self.cfg.model.seed + 1))
            return _without(sgm, () if self.p["trainable_rel_semantics"] else ("rel_semantic",))
        llm = base["llm"]
        out = {"lora": init_adapters(self.specs, llm, k1) if self.specs else {}}
        if self.use_graph:
            enc, sgm = self._sgm_params(jax.random.PRNGKey(self.cfg.model.seed + 1))
            out["mem"] = {f"layers_{i}": {k: v for k, v in llm["model"][f"layers_{i}"][BLOCK_NAME].items()
                                          if k in ("memory_gate", "memory_layernorm")}
                          for i in self.memory_layers}
            out["enc"] = {"tokenizer": enc["tokenizer"], "proj": enc["proj"]}
            if self.p["train_graph_module"]:
                out["enc"]["sgm"] = _without(sgm, ("rel_semantic",))
        return jax.tree_util.tree_map(jnp.asarray, out)

    def abstract_trainable(self, abstract_base):
        return jax.eval_shape(lambda b: self.init_trainable(b, jax.random.PRNGKey(0)), abstract_base)

    def trainable_specs(self, abstract_trainable, base_specs):
        from gmem.train.sharding import adapter_logical_specs
        specs = jax.tree_util.tree_map(lambda a: P(*([None] * a.ndim)), abstract_trainable)
        if self.p["stage"] == 2 and abstract_trainable.get("lora"):
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
        if self.p["train_graph_module"]:
            enc = dict(enc, sgm=dict(enc["sgm"], rel_semantic=frozen["rel_semantic"]))
            mem = G.graph_memory(self.gcfg, enc, batch, frozen["hist"], None, deterministic, rng)
        else:
            mem = G.graph_memory(self.gcfg, enc, batch, table=frozen["table"])
        # Diagnostics (infer.py): does the model read its memory? "zero": no memory content;
        # "shuffle": each row gets the next row's memory (another triple's subgraph).
        if self.p["memory_ablation"] == "zero":
            mem = jnp.zeros_like(mem)
        elif self.p["memory_ablation"] == "shuffle":
            mem = jnp.roll(mem, 1, axis=0)
        return mem

    # ---- loss ---------------------------------------------------------------------------------
    def loss(self, trainable, frozen, batch: dict, rng):
        if self.p["stage"] == 1:
            sgm = dict(trainable)
            if "rel_semantic" not in sgm:
                sgm["rel_semantic"] = frozen["rel_semantic"]
            loss = G.stage1_loss(self.gcfg, sgm, frozen["kg"]["hist"], frozen["kg"], batch["pos"],
                                 batch["neg"], deterministic=rng is None, rng=rng)
            return loss, {"triples": jnp.asarray(batch["pos"].shape[0], jnp.float32)}
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
        k = window or (ids.shape[1] - 1 if self.p["train_on_inputs"] else self.resp_window)
        mem = self.memory(trainable, frozen, batch, deterministic=not train, rng=graph_rng)
        drop = train and any(s.dropout > 0 for s in self.specs)
        variables = self.variables(trainable, frozen)
        module = self.module_for(self.train_prefix if prefix is None else prefix, variables["params"])
        logits = module.apply(variables, ids, att, mem, k,
                              method=_window_logits, rngs={"dropout": rng} if drop else {})
        tgt = ids[:, -k:]
        return -optax.softmax_cross_entropy_with_integer_labels(logits, tgt)

    # ---- data -----------------------------------------------------------------------------------
    def records(self, split: str) -> list[dict]:
        p = self.p
        path = p.get(f"{split}_json")
        if path:
            recs = D.load_records(path)
            D.check_ids(recs, self.kg.num_entities, self.kg.num_relations, path)
            return recs
        if split not in self.splits:
            raise GmemError(f"system.params.kg: {p['kg']} has no {split} split")
        seed = p["neg_seed"] + {"train": 0, "valid": 1, "test": 2}[split]
        trip, lab = D.classification_set(self.splits[split], self.kg.num_entities, self.known, seed,
                                         self.kg.num_relations, shuffle=split == "train")
        return D.classification_records(self.kg, trip, lab)

    def encode(self, records, train_on_inputs=None):
        """Tokenised, left-padded arrays (+ graph edges) for records."""
        toi = self.p["train_on_inputs"] if train_on_inputs is None else train_on_inputs
        enc = D.encode_records(self.tokenizer, records, self.p["add_eos"],
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
        rel, nbr, m = G.query_edges(self.index, triples, self.p["mask_query"], self.num_edges, self._padded)
        return {"edge_rel": rel, "edge_nbr": nbr, "edge_mask": m.astype(np.int32)}

    def data(self):
        if self._data is None:
            p, d = self.p, self.cfg.data
            if p["stage"] == 1:
                self._data = {"train": self.splits["train"].astype(np.int64)}
                return self._data
            train = self.records("train")
            if p["max_train"]:
                train = train[: p["max_train"]]
            trip = np.asarray([r["embedding_ids"] for r in train] + [[0, 0, 0]], np.int64)
            for s in ("valid", "test"):
                if p.get(f"{s}_json") or s in self.splits:
                    trip = np.concatenate([trip, np.asarray([r["embedding_ids"] for r in self.records(s)])])
            self.num_edges = -(-G.max_query_edges(self.index, trip) // 16) * 16
            enc = D.encode_records(self.tokenizer, train, p["add_eos"], getattr(self.tokenizer, "eos_token_id", None))
            self.resp_window = max(len(f) - n for f, n in enc) + 1
            self.prefix_ids = [] if p["train_on_inputs"] else list(enc[0][0][:D.common_prefix(enc)])
            if not p["train_on_inputs"] and self.resp_window > d.seq_len - 1:
                raise GmemError(f"data.seq_len={d.seq_len} is shorter than the longest response")
            self._data = {"train": self.encode(train)}
            self.train_prefix = self.shared_len(self._data["train"])
        return self._data

    def batch_shapes(self) -> dict:
        d, p = self.cfg.data, self.p
        b = d.batch_size
        if p["stage"] == 1:
            return {"pos": jax.ShapeDtypeStruct((b, 3), jnp.int32),
                    "neg": jax.ShapeDtypeStruct((b, p["num_negatives"], 3), jnp.int32)}
        self.data()
        s = {k: jax.ShapeDtypeStruct((b, d.seq_len), jnp.float32 if k == "loss_mask" else jnp.int32)
             for k in ("input_ids", "attention_mask", "loss_mask")}
        s.update({k: jax.ShapeDtypeStruct((b, self.num_edges), jnp.int32)
                  for k in ("edge_rel", "edge_nbr", "edge_mask")})
        return s

    def batch(self, index: int, host: slice = slice(None)) -> dict:
        """Rows of global batch `index`: epoch-wise seeded permutations, no example dropped."""
        data = self.data()["train"]
        n = len(data) if self.p["stage"] == 1 else len(data["input_ids"])
        b = self.cfg.data.batch_size
        pos = index * b + np.arange(b)
        epoch, within = pos // n, pos % n
        rows = np.asarray([np.random.default_rng([self.cfg.data.seed, int(e)]).permutation(n)[w]
                           for e, w in zip(epoch, within)])
        if self.p["stage"] == 1:
            pos3 = data[rows[host]]
            rng = np.random.default_rng([self.cfg.data.seed, 1, int(index)])
            neg = D.corrupt(pos3, self.kg.num_entities, rng, self.p["num_negatives"],
                            self.known if self.p["filtered_negatives"] else None, self.kg.num_relations)
            return {"pos": pos3.astype(np.int32), "neg": neg.astype(np.int32)}
        out = {k: v[rows] for k, v in data.items()}
        if self.p["pad_to_multiple_of"]:
            # Width from the whole global batch, so that every host cuts the same columns.
            out = D.trim_width(out, self.p["pad_to_multiple_of"], self.train_prefix)
        return {k: v[host] for k, v in out.items()}

    # ---- evaluation (gmt_eval) ------------------------------------------------------------------
    def evaluate(self, trainable, frozen, eval_fn=None) -> dict:
        from gmem.systems.gmt_eval import evaluate
        return evaluate(self, trainable, frozen)

    def predict(self, trainable, frozen, prompts=None):
        from gmem.systems.gmt_eval import predict
        return predict(self, trainable, frozen)


def _window_logits(m, ids, att, memory, k):
    """Logits [B, k, V] predicting the last k tokens (the LM head runs on k positions only)."""
    h, _ = m.model(ids, att, None, None, None, memory, k + 1)     # last layer: k + 1 positions
    h = h[:, :-1]
    logits = m.lm_head(h) if not m.config.tie_word_embeddings else m.model.embed_tokens.attend(h)
    return logits.astype(jnp.float32)


def _without(tree: dict, keys) -> dict:
    return {k: v for k, v in tree.items() if k not in keys}


def build(cfg, load_data: bool = True) -> GMTSystem:
    return GMTSystem(cfg, load_data=load_data)
