"""GMT stage 1 (`system.name: gmt_stage1`): pretraining the semantic graph module on the KG.

DistMult scores of entity encodings; `num_negatives` head/tail corruptions per positive
(optionally filtered), the relation table frozen unless trainable_rel_semantics. Evaluation:
filtered tail ranking over all entities (MRR, Hits@k) on the valid split; infer.py: on test.
Stage 2 takes the trained SGM with `system.sgm_ckpt: RUN_DIR` (gmem.systems.gmt.stage2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from gmem.config import register_system
from gmem.systems.gmt import data as D
from gmem.systems.gmt import graph as G
from gmem.systems.gmt.eval import stage1_ranking
from gmem.systems.gmt.kg_base import KGSystemBase
from gmem.systems.gmt.options import GMTStage1Options


@register_system("gmt_stage1")
class GMTStage1System(KGSystemBase):
    Options = GMTStage1Options
    stage = 1
    throughput_unit = "triples"   # what a step's rate counts (train.py's progress bar)

    def __init__(self, cfg, load_data: bool = True):
        self.cfg, self.specs, self.tokenizer = cfg, [], None
        self._init_kg(cfg.system)
        self.gcfg = self._graph_config(llm_dim=1)
        self._data = None

    @property
    def structure(self) -> dict:
        return dict(self._graph_structure(), system=self.name)

    def _sgm_params(self):
        enc = G.init_encoder(self.gcfg, jax.random.PRNGKey(self.cfg.model.seed + 1), self.kg.num_entities,
                              self.p.init.value)
        return dict(enc["sgm"], rel_semantic=jnp.asarray(self._rel_table()))

    def load_base(self):
        """{"kg": the KG's constant arrays (neighbour lists, relation histogram)} and the
        relation table unless it is trained."""
        out = {"kg": {k: jnp.asarray(v) for k, v in dict(G.stage1_constants(self.index), hist=self.hist).items()}}
        if not self.p.trainable_rel_semantics:
            out["rel_semantic"] = self._sgm_params()["rel_semantic"]
        return out

    def abstract_base(self):
        abs_ = jax.eval_shape(self.load_base)
        return abs_, jax.tree_util.tree_map(lambda a: P(*([None] * a.ndim)), abs_)

    def init_trainable(self, base, rng):
        """The SGM (seeded by model.seed, as stage 2 re-creates it), without the relation table
        unless trainable_rel_semantics."""
        sgm = self._sgm_params()
        if not self.p.trainable_rel_semantics:
            sgm.pop("rel_semantic")
        return jax.tree_util.tree_map(jnp.asarray, sgm)

    def abstract_trainable(self, abstract_base):
        return jax.eval_shape(lambda b: self.init_trainable(b, jax.random.PRNGKey(0)), abstract_base)

    def trainable_specs(self, abstract_trainable, base_specs):
        return jax.tree_util.tree_map(lambda a: P(*([None] * a.ndim)), abstract_trainable)

    def loss(self, trainable, frozen, batch: dict, rng):
        """Link-prediction loss of positives [B, 3] against negatives [B, N, 3]; aux: triples."""
        sgm = dict(trainable)
        if "rel_semantic" not in sgm:
            sgm["rel_semantic"] = frozen["rel_semantic"]
        loss = G.stage1_loss(self.gcfg, sgm, frozen["kg"]["hist"], frozen["kg"], batch["pos"],
                             batch["neg"], deterministic=rng is None, rng=rng)
        return loss, {"triples": jnp.asarray(batch["pos"].shape[0], jnp.float32)}

    def data(self):
        if self._data is None:
            self._data = {"train": self.splits["train"].astype(np.int64)}
        return self._data

    def batch_shapes(self) -> dict:
        b = self.cfg.data.batch_size
        return {"pos": jax.ShapeDtypeStruct((b, 3), jnp.int32),
                "neg": jax.ShapeDtypeStruct((b, self.p.num_negatives, 3), jnp.int32)}

    def batch(self, index: int, host: slice = slice(None)) -> dict:
        """Training triples of global batch `index` (epoch-wise seeded permutations, none
        dropped) with their negatives, drawn from (data.seed, index)."""
        data = self.data()["train"]
        rows = D.epoch_rows(len(data), self.cfg.data.batch_size, index, self.cfg.data.seed)
        pos3 = data[rows[host]]
        rng = np.random.default_rng([self.cfg.data.seed, 1, int(index)])
        neg = D.corrupt(pos3, self.kg.num_entities, rng, self.p.num_negatives,
                        self.known if self.p.filtered_negatives else None, self.kg.num_relations)
        return {"pos": pos3.astype(np.int32), "neg": neg.astype(np.int32)}

    def evaluate(self, trainable, frozen, eval_fn=None) -> dict:
        return stage1_ranking(self, trainable, frozen, "valid")

    def predict(self, trainable, frozen, prompts=None):
        m = stage1_ranking(self, trainable, frozen, "test")
        return [], {k.replace("eval/", "test/"): v for k, v in m.items()}
