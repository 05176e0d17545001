"""GOFA (`system.name: gofa`): graph pretraining and instruction tuning on the embedded
Wikipedia mention graph, zero-shot evaluation, answers about users' graphs (spec part A).

One system, two phases (options.Phase): `pretrain` samples GOFA's pretraining tasks (CS, SP, CN,
IR both ways) and `instruct` topic and yes/no link questions with a prompt node; `tasks`
overrides the mix. What trains is the same in both: the GNN layers (model.GraphMemoryBlock
before each of the last gnn_layers decoder layers) and, when the config lists an adapter named
`default`, the decoder LoRA (GOFA's dec_lora: off in pretraining, on in instruction tuning).
The compressor (encoder LoRA `encadapt` + memory table) is frozen: from a gofa_compressor run
(compressor_ckpt), an original ICAE file (import_icae), or fresh (then GOFA starts from the base
LLM reading an untrained memory). Instruction tuning starts from a pretraining run (init_ckpt).

Frozen tree {"llm", "encadapt", "memory_table"}; trainable {"gnn": {"layers_i": GOFAGNNConv
tree}, "default"?: LoRA tree}. A batch is B graphs packed by gofa.batch (its docstring lists
the arrays); the loss is the mean cross-entropy over every answer token of every target.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gmem.adapters import init_adapters
from gmem.adapters.sharding import adapter_logical_specs
from gmem.config import register_system
from gmem.errors import GmemError
from gmem.graph.tag import wiki_tag
from gmem.systems.gofa import model as M
from gmem.systems.gofa.base import GOFABase, check_shapes, read_run
from gmem.systems.gofa.batch import make_packer
from gmem.systems.gofa.checkpoint import load_gofa, load_icae
from gmem.systems.gofa.evaluation import evaluate, predict
from gmem.systems.gofa.options import DECODER_ADAPTER, ENCODER_ADAPTER, GOFAOptions, Phase
from gmem.systems.gofa.tasks import PRETRAIN_TASKS, TaskConfig, TaskSampler
from gmem.systems.lm import LMSystem
from gmem.train.sharding import own_gathers

INSTRUCT_TASKS = ("topic", "link")
ALL_TASKS = PRETRAIN_TASKS + INSTRUCT_TASKS


@register_system("gofa")
class GOFASystem(GOFABase):
    Options = GOFAOptions

    def __init__(self, cfg, load_data: bool = True):
        o = cfg.system
        if o.gnn_layers < 1:
            raise GmemError(f"system.gnn_layers: must be >= 1, got {o.gnn_layers}")
        self._init_gofa(cfg)
        self.tasks = tuple(o.tasks) or (PRETRAIN_TASKS if o.phase == Phase.pretrain else INSTRUCT_TASKS)
        bad = [t for t in self.tasks if t not in ALL_TASKS]
        if bad:
            raise GmemError(f"system.tasks: unknown task {bad[0]!r}; use some of {list(ALL_TASKS)}")
        self.dec_spec = next((s for s in self.specs if s.name == DECODER_ADAPTER), None)
        extra = [s.name for s in self.specs if s.name not in (ENCODER_ADAPTER, DECODER_ADAPTER)]
        if extra:
            raise GmemError(f"adapters: GOFA uses the sets {ENCODER_ADAPTER!r} (encoder) and "
                            f"{DECODER_ADAPTER!r} (decoder), not {extra}")
        self.packer = make_packer(self.tokenizer, o, self.special, self.pad_id)
        self._tag = self._sampler = None
        self._jit, self._eval_cache = {}, None
        if load_data:
            self.sampler()

    def decoder_hooks(self) -> tuple:
        c = self.model_config
        if self.p.gnn_layers > c.num_hidden_layers:
            raise GmemError(f"system.gnn_layers: {self.p.gnn_layers} > the model's {c.num_hidden_layers} layers")
        self.gnn_layers = M.gnn_layers(c.num_hidden_layers, self.p.gnn_layers)
        return M.gnn_hooks(self.gnn_layers, self.p.num_memory_tokens, c.rms_norm_eps)

    @property
    def structure(self) -> dict:
        s = dict(LMSystem.structure.fget(self))
        s.update(system=self.name, num_memory_tokens=self.p.num_memory_tokens, memory_layers=list(self.gnn_layers))
        return s

    # ---- parameters ------------------------------------------------------------------------
    def _encoder(self, llm) -> dict:
        """The frozen compressor {"encadapt", "memory_table"}: from compressor_ckpt, import_icae
        or fresh (seeded by model.seed)."""
        o = self.p
        fresh = self.init_encoder(llm, jax.random.PRNGKey(self.cfg.model.seed + 2))
        if o.compressor_ckpt and o.import_icae:
            raise GmemError("system.compressor_ckpt and system.import_icae: give one compressor, not both")
        if o.compressor_ckpt:
            where = f"system.compressor_ckpt={o.compressor_ckpt!r}"
            step, t, meta = read_run(o.compressor_ckpt, where)
            st = meta.get("structure", {})
            if st.get("system") != "gofa_compressor":
                raise GmemError(f"{where}: step {step} is a {st.get('system')!r} run, not gofa_compressor")
            if st.get("num_memory_tokens") != o.num_memory_tokens:
                raise GmemError(f"{where}: K = {st.get('num_memory_tokens')} there, system.num_memory_tokens = "
                                f"{o.num_memory_tokens} here")
            check_shapes(t, fresh, where)
            return jax.tree_util.tree_map(jnp.asarray, t)
        if o.import_icae:
            t = load_icae(o.import_icae, self)
            check_shapes(t, fresh, f"system.import_icae={o.import_icae!r}")
            return jax.tree_util.tree_map(jnp.asarray, t)
        return fresh

    def load_base(self):
        llm = LMSystem.load_base(self)
        return {"llm": llm, **self._encoder(llm)}

    def abstract_base(self):
        abs_llm, llm_specs = LMSystem.abstract_base(self)
        enc = jax.eval_shape(lambda b: self.init_encoder(b, jax.random.PRNGKey(0)), abs_llm)
        return {"llm": abs_llm, **enc}, {"llm": llm_specs, **self.encoder_specs(enc, llm_specs)}

    def _fresh_trainable(self, base, rng) -> dict:
        k1, k2 = jax.random.split(rng)
        d = base["llm"]["model"]["embed_tokens"]["embedding"].shape[1]
        gnn, _ = M.init_gnn(self.gnn_layers, d, self.p.num_memory_tokens, k1, self.model_config.rms_norm_eps)
        out = {"gnn": gnn}
        if self.dec_spec is not None:
            out[DECODER_ADAPTER] = init_adapters([self.dec_spec], base["llm"], k2)[DECODER_ADAPTER]
        return out

    def init_trainable(self, base, rng):
        out = self._fresh_trainable(base, rng)
        o = self.p
        if o.init_ckpt and o.import_gofa:
            raise GmemError("system.init_ckpt and system.import_gofa: start from one, not both")
        if o.init_ckpt:
            where = f"system.init_ckpt={o.init_ckpt!r}"
            step, t, meta = read_run(o.init_ckpt, where)
            if meta.get("structure", {}).get("system") != "gofa":
                raise GmemError(f"{where}: step {step} is not a gofa run")
            got = {"gnn": t.get("gnn", {})}
            if DECODER_ADAPTER in out and DECODER_ADAPTER in t:
                got[DECODER_ADAPTER] = t[DECODER_ADAPTER]
            check_shapes(got["gnn"], out["gnn"], where)
            out.update(jax.tree_util.tree_map(jnp.asarray, got))
        if o.import_gofa:
            got = load_gofa(o.import_gofa, self, out)
            out = jax.tree_util.tree_map(jnp.asarray, got)
        return out

    def abstract_trainable(self, abstract_base):
        return jax.eval_shape(lambda b: self._fresh_trainable(b, jax.random.PRNGKey(0)), abstract_base)

    def trainable_specs(self, abstract_trainable, base_specs):
        d = abstract_trainable["gnn"][f"layers_{self.gnn_layers[0]}"]["lin_qkv"]["kernel"].shape[0]
        out = {"gnn": M.gnn_specs(self.gnn_layers, d, self.p.num_memory_tokens)}
        if DECODER_ADAPTER in abstract_trainable:
            out[DECODER_ADAPTER] = adapter_logical_specs(
                {DECODER_ADAPTER: abstract_trainable[DECODER_ADAPTER]}, base_specs["llm"])[DECODER_ADAPTER]
        return out

    # ---- the three passes ------------------------------------------------------------------
    def node_memory(self, trainable, frozen, batch, rng=None):
        """Memory states [B*N, K, D] of every node row of a packed batch."""
        v = self.variables(M.with_gnn(frozen["llm"], trainable["gnn"]), self.enc_spec, frozen[ENCODER_ADAPTER])
        return M.graph_encode(self.module, v, frozen["memory_table"], batch, self.special, self.gnn_layers,
                              self.dtype, rngs=self.rngs(rng, self.enc_spec))

    def decoder_variables(self, trainable, frozen):
        if self.dec_spec is None:
            return self.variables(frozen["llm"])
        return self.variables(frozen["llm"], self.dec_spec, trainable[DECODER_ADAPTER])

    def loss(self, trainable, frozen, batch, rng):
        """Mean CE over answer tokens; aux: tokens (encoder texts + decoder rows), target tokens,
        teacher-forced token accuracy."""
        r1, r2 = jax.random.split(rng) if rng is not None else (None, None)
        mem = self.node_memory(trainable, frozen, batch, r1)
        f = M.flat_graph(batch)
        dec = {k: batch[k].reshape((-1,) + batch[k].shape[2:]) for k in ("dec_ids", "dec_mask", "dec_target")}
        # The decoder re-reads the base the encoder read: its own gathers, after the memory.
        dv, mem = own_gathers(self.decoder_variables(trainable, frozen), mem)
        ce, n, hit = M.decoder_loss(self.module, dv, frozen["memory_table"],
                                    mem[f["targets"]], dec, self.special, self.dtype,
                                    rngs=self.rngs(r2, self.dec_spec))
        n1 = jnp.maximum(n, 1.0)
        tokens = batch["node_text_len"].sum() + batch["edge_text_len"].sum() + batch["dec_mask"].sum()
        return ce / n1, {"tokens": tokens.astype(jnp.float32), "target_tokens": n, "accuracy": hit / n1}

    # ---- data ------------------------------------------------------------------------------
    def tag(self):
        """The embedded Wikipedia mention graph (gmem.graph.tag), split by tag_seed."""
        if self._tag is None:
            self._tag = wiki_tag(self.p.tag_seed)
        return self._tag

    def task_config(self) -> TaskConfig:
        o = self.p
        return TaskConfig(hops=o.hops, max_nodes_per_hop=o.max_nodes_per_hop, cs_additional=o.cs_additional,
                          num_sp=o.num_sp, num_cn=o.num_cn, ways=o.ways)

    def sampler(self) -> TaskSampler:
        if self._sampler is None:
            tag = self.tag()
            self._sampler = TaskSampler(tag, self.task_config(), self.cfg.data.seed)
            train = set(tag.nodes_in("train").tolist())
            self._train_links = sorted(tuple(sorted(e)) for e in self._sampler.edge_set
                                       if len(e) == 2 and e <= train)
        return self._sampler

    def _draw(self, rng):
        """One training record (or None when GOFA would drop the sample)."""
        s = self.sampler()
        task = self.tasks[int(rng.integers(len(self.tasks)))]
        train = self.tag().nodes_in("train")
        if task == "link":
            if rng.random() < 0.5 and self._train_links:
                a, b = self._train_links[int(rng.integers(len(self._train_links)))]
            else:
                a, b = (int(v) for v in rng.choice(train, 2, replace=False))
            return s.link(int(a), int(b))
        v = int(train[int(rng.integers(len(train)))])
        return s.topic(v) if task == "topic" else s.pretrain(task, v)

    def records(self, index: int) -> list:
        """The B records of global batch `index`: drawn by a generator seeded by (data.seed,
        index), skipping dropped samples and samples over the largest buckets."""
        b = self.cfg.data.batch_size
        s = self.sampler()
        s.rng = rng = np.random.default_rng([self.cfg.data.seed, index])
        out = []
        for _ in range(200 * b):
            rec = self._draw(rng)
            if rec is not None and self.packer.fits(rec):
                out.append(rec)
                if len(out) == b:
                    return out
        raise GmemError(f"system buckets: fewer than {b} of {200 * b} sampled graphs fit the largest buckets "
                        f"(nodes {max(self.p.nodes_buckets)}, edges {max(self.p.edges_buckets)}, texts "
                        f"{max(self.p.texts_buckets)}); raise them or sample smaller subgraphs")

    def batch_shapes(self) -> dict:
        """The largest bucket's shapes (a batch is padded to the buckets its graphs need)."""
        o, b = self.p, self.cfg.data.batch_size
        n, e, t, q = (max(x) for x in (o.nodes_buckets, o.edges_buckets, o.texts_buckets, o.targets_buckets))
        lt, ld = max(o.text_len_buckets), max(o.dec_len_buckets)
        i32 = jnp.int32
        s = {"node_text_ids": (t, lt), "node_text_len": (t,), "edge_text_ids": (t, lt), "edge_text_len": (t,),
             "node_map": (n,), "senders": (e,), "receivers": (e,), "edge_map": (e,), "targets": (q,),
             "dec_ids": (q, ld), "dec_mask": (q, ld)}
        out = {k: jax.ShapeDtypeStruct((b,) + v, i32) for k, v in s.items()}
        out.update({k: jax.ShapeDtypeStruct((b,) + v, jnp.bool_) for k, v in
                    (("node_mask", (n,)), ("edge_mask", (e,)), ("target_mask", (q,)))})
        out["dec_target"] = jax.ShapeDtypeStruct((b, q, ld), jnp.float32)
        return out

    def batch(self, index: int, host: slice = slice(None)) -> dict:
        out = self.packer.pack(self.records(index), f"batch {index}")
        return {k: v[host] for k, v in out.items()}

    # ---- evaluation and answers (gofa.evaluation) ------------------------------------------
    def evaluate(self, trainable, frozen, eval_fn=None) -> dict:
        return evaluate(self, trainable, frozen)

    def predict(self, trainable, frozen, prompts=None):
        return predict(self, trainable, frozen, prompts)

