"""GIFT's sequence-classification use as a gmem.train system (`system.name: gift`).

A BERT-family encoder (default: the embedded all-MiniLM-L6-v2) with a trainable classifier and
the adapters of the `adapters:` section (GIFT, the paper's use: `{kind: gift, name: gift,
targets: [query, value], rank: 16}`; LoRA; or both). With none it is a linear probe: only the
classifier trains, on the frozen encoder's pooled features. The embedded data set is the 10,033
Wikipedia lead summaries with their topic (12 topics, "Uncategorized" included); any
.json/.jsonl file with text and label fields works too. Rows split train/val/test by a seeded
hash of their title (or text), eval_fraction each for val and test (0.1: 80/10/10), so a row's
split never depends on the other rows. The causal-LM use needs no system of its own:
`system.name: lm` with `adapters: [{kind: gift, targets: [q_proj, v_proj]}]`.
Trainable tree: {adapter name: tree, ..., "head": {"classifier": ...}}.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from dataclasses import dataclass
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

import gmem.assets
from gmem.adapters import adapter_collection, count_params, init_adapters, specs_from_config
from gmem.config import SystemOptions, register_system
from gmem.data.text import ByteTokenizer
from gmem.errors import GmemError
from gmem.hf.sources import load_source, resolve_source
from gmem.models.bert import BertConfig, BertForSequenceClassification
from gmem.models.family import tiny_config
from gmem.systems.lm import json_safe


@dataclass
class GiftOptions(SystemOptions):
    """dataset: 'wiki-topics' (embedded) or a .json/.jsonl file of rows with text_field and
    label_field (title_field, when present, decides the split); max_examples: use at most this
    many rows (None: all); eval_fraction: held out for val and again for test, in (0, 0.5)."""

    name: str = "gift"
    dataset: str = "wiki-topics"
    text_field: str = "text"
    label_field: str = "label"
    title_field: str = "title"
    max_examples: Optional[int] = None
    eval_fraction: float = 0.1


HEAD = ("classifier",)


def load_examples(dataset: str, text_field: str = "text", label_field: str = "label",
                  max_examples: int | None = None, seed: int = 0, title_field: str = "title"
                  ) -> tuple[list[str], list[int], tuple, list[str]]:
    """(texts, label ids, label names, keys), shuffled with `seed`; keys (titles, or the texts)
    decide the split (split_of)."""
    if dataset == "wiki-topics":
        rows = json.loads(pathlib.Path(gmem.assets.path("wiki-summaries-en")).read_text()).values()
        rows = [r for r in rows if r.get("topic")]
        text_field, label_field = "extract", "topic"
    else:
        p = pathlib.Path(dataset)
        if not p.is_file():
            raise GmemError(f"system.dataset: {dataset!r} is not 'wiki-topics' or a .json/.jsonl file")
        text = p.read_text()
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if p.suffix == ".jsonl" else json.loads(text)
        bad = [i for i, r in enumerate(rows) if text_field not in r or label_field not in r]
        if bad:
            raise GmemError(f"{p}: row {bad[0]} lacks {text_field!r} or {label_field!r}")
    triples = [(str(r[text_field]), str(r[label_field]), str(r.get(title_field, r[text_field]))) for r in rows]
    names = tuple(sorted({lab for _, lab, _ in triples}))
    order = np.random.default_rng(seed).permutation(len(triples))[:max_examples]
    return ([triples[i][0] for i in order], [names.index(triples[i][1]) for i in order], names,
            [triples[i][2] for i in order])


def split_of(key: str, seed: int, eval_fraction: float) -> str:
    """'test' / 'val' / 'train' from a seeded hash of the key: u < f test, u < 2f val."""
    u = int.from_bytes(hashlib.sha256(f"{seed}/{key}".encode()).digest()[:8], "big") / 2.0 ** 64
    return "test" if u < eval_fraction else "val" if u < 2 * eval_fraction else "train"


@register_system("gift")
class GiftSeqClsSystem:
    Options = GiftOptions

    def __init__(self, cfg, load_data: bool = True):
        self.cfg, self.opts = cfg, cfg.system
        o = self.opts
        self.specs = specs_from_config(cfg.adapters)
        if any(s.name == "head" for s in self.specs):
            raise GmemError("adapters: the name 'head' is taken by the classifier; rename the adapter")
        if not 0.0 < o.eval_fraction < 0.5:
            raise GmemError(f"system.eval_fraction={o.eval_fraction}: the gift system holds out that "
                            "fraction for val and again for test, so it must be in (0, 0.5)")
        self.texts, self.labels, self.label_names, keys = load_examples(
            o.dataset, o.text_field, o.label_field, o.max_examples, cfg.data.seed, o.title_field)
        self.split = np.asarray([split_of(k, cfg.data.seed, o.eval_fraction) for k in keys])
        m = cfg.model
        self.kind, self.path = resolve_source(m.source)
        self._encoder = None
        if self.kind == "random":
            self.tokenizer = ByteTokenizer()
            base = tiny_config(m.family or "bert", vocab_size=m.vocab_size, hidden_size=m.hidden_size,
                               intermediate_size=m.intermediate_size, num_hidden_layers=m.num_hidden_layers,
                               num_attention_heads=m.num_attention_heads,
                               max_position_embeddings=max(cfg.data.seq_len + 2, 64),
                               pad_token_id=ByteTokenizer.pad_token_id)
        else:
            base, enc, self.tokenizer = load_source(self.kind, self.path)
            self._encoder = enc.get("bert", enc.get("roberta", enc))
        if not isinstance(base, BertConfig):
            raise GmemError(f"model.source: {m.source} is a {type(base).__name__}; the gift system needs "
                            "BERT/RoBERTa (model.family: bert for a random one)")
        self.model_config = dataclasses.replace(
            base, num_labels=len(self.label_names), labels=self.label_names, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            architecture="BertForSequenceClassification", add_pooling_layer=True, dtype=m.dtype, remat=m.remat)
        self.module = BertForSequenceClassification(self.model_config)
        ids, mask = self._tokenize(self.texts)
        labels = np.asarray(self.labels, np.int32)
        self.rows = {name: (ids[self.split == name], mask[self.split == name], labels[self.split == name])
                     for name in ("train", "val", "test")}
        self.train_rows, self.eval_rows = self.rows["train"], self.rows["val"]
        empty = [n for n, r in self.rows.items() if len(r[0]) == 0]
        if empty:
            raise GmemError(f"system.max_examples: the {empty} split(s) got no examples; use more")
        if len(self.train_rows[0]) < cfg.data.batch_size:
            raise GmemError(f"data.batch_size={cfg.data.batch_size} exceeds the {len(self.train_rows[0])} training examples")

    def _tokenize(self, texts):
        L = self.cfg.data.seq_len
        pad = self.model_config.pad_token_id if self.model_config.pad_token_id is not None else 0
        ids = np.full((len(texts), L), pad, np.int32)
        mask = np.zeros((len(texts), L), np.int32)
        for i, t in enumerate(texts):
            out = self.tokenizer.encode(t, add_special_tokens=True)
            row = list(getattr(out, "ids", out))[:L]
            ids[i, :len(row)], mask[i, :len(row)] = row, 1
        return ids, mask

    @property
    def structure(self) -> dict:
        c = self.model_config
        return {"system": self.name, "family": c.model_type, "labels": list(self.label_names),
                "model": {"hidden_size": c.hidden_size, "num_hidden_layers": c.num_hidden_layers,
                          "vocab_size": c.vocab_size},
                "adapters": [json_safe(dataclasses.asdict(s)) for s in self.specs],
                "memory_layers": []}

    # ---- weights ------------------------------------------------------------------------
    def _dummy(self):
        return jnp.zeros((1, 8), jnp.int32)

    def abstract_base(self):
        boxed = jax.eval_shape(lambda: self.module.init(jax.random.PRNGKey(0), self._dummy()))["params"]
        return nn.unbox(boxed), nn.get_partition_spec(boxed)

    def load_base(self):
        params = nn.unbox(jax.jit(lambda k: self.module.init(k, self._dummy()))(
            jax.random.PRNGKey(self.cfg.model.seed))["params"])
        if self._encoder is not None:
            params = dict(params, bert=self._encoder)
        return params

    def init_trainable(self, base, rng):
        """{adapter name: fresh tree, ..., "head": a copy of the base classifier}."""
        out = dict(init_adapters(self.specs, base, rng)) if self.specs else {}
        out["head"] = {h: jax.tree_util.tree_map(jnp.asarray, base[h]) for h in HEAD}
        return out

    def abstract_trainable(self, abstract_base):
        return jax.eval_shape(lambda b: self.init_trainable(b, jax.random.PRNGKey(0)), abstract_base)

    def num_trainable(self, trainable) -> dict:
        """Parameter counts: adapters (the papers' count) and the classifier head."""
        return {"params/adapters": sum(count_params(v) for k, v in trainable.items() if k != "head"),
                "params/head": count_params(trainable["head"])}

    def trainable_specs(self, abstract_trainable, base_specs):
        return jax.tree_util.tree_map(lambda x: P(*([None] * len(x.shape))), abstract_trainable)

    # ---- loss, data, eval ---------------------------------------------------------------
    def logits(self, trainable, frozen, batch):
        params = dict(frozen, **trainable["head"])
        variables = {"params": params}
        if self.specs:
            # Adapters sit on the frozen encoder (the head is no adapter target).
            variables["adapter"] = adapter_collection(self.specs, {s.name: trainable[s.name] for s in self.specs},
                                                      frozen)
        return self.module.apply(variables, batch["input_ids"], batch["attention_mask"])

    def loss(self, trainable, frozen, batch, rng):
        logits = self.logits(trainable, frozen, batch)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
        return ce, {"accuracy": (logits.argmax(-1) == batch["labels"]).mean(),
                    "tokens": batch["attention_mask"].sum().astype(jnp.float32)}

    def batch_shapes(self) -> dict:
        b, L = self.cfg.data.batch_size, self.cfg.data.seq_len
        return {"input_ids": jax.ShapeDtypeStruct((b, L), jnp.int32),
                "attention_mask": jax.ShapeDtypeStruct((b, L), jnp.int32),
                "labels": jax.ShapeDtypeStruct((b,), jnp.int32)}

    def batch(self, index: int, host: slice = slice(None)) -> dict:
        n, b = len(self.train_rows[0]), self.cfg.data.batch_size
        epoch, j = divmod(int(index), n // b)
        order = np.random.default_rng([self.cfg.data.seed, epoch]).permutation(n)[j * b:(j + 1) * b][host]
        ids, mask, labels = self.train_rows
        return {"input_ids": ids[order], "attention_mask": mask[order], "labels": labels[order]}

    def evaluate(self, trainable, frozen, eval_fn=None) -> dict:
        """Accuracy and loss over every validation example (eval/accuracy, eval/loss: the
        checkpoint-selection metric) and every test example (eval/test_*), plus parameter counts."""
        fn = jax.jit(lambda t, f, x: self.logits(t, f, x))
        out = {}
        for split, prefix in (("val", "eval/"), ("test", "eval/test_")):
            ids, mask, labels = self.rows[split]
            b = self.cfg.data.batch_size
            correct, ce = 0, 0.0
            for s in range(0, len(ids), b):
                x = {"input_ids": jnp.asarray(_pad(ids[s:s + b], b)), "attention_mask": jnp.asarray(_pad(mask[s:s + b], b))}
                lg = np.asarray(fn(trainable, frozen, x))[: len(ids[s:s + b])]
                y = labels[s:s + b]
                correct += int((lg.argmax(-1) == y).sum())
                ce += float(optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(lg), jnp.asarray(y)).sum())
            out.update({prefix + "accuracy": correct / len(ids), prefix + "loss": ce / len(ids)})
        out.update({k: float(v) for k, v in self.num_trainable(trainable).items()})
        return out

    def predict(self, trainable, frozen, prompts=None):
        texts = list(prompts) if prompts else [t for t, sp in zip(self.texts, self.split) if sp == "test"][:32]
        ids, mask = self._tokenize(texts)
        lg = np.asarray(self.logits(trainable, frozen, {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask)}))
        # infer.py prints prompt -> generation: the text and its predicted topic.
        return [{"prompt": t[:200], "generation": self.label_names[int(k)]} for t, k in zip(texts, lg.argmax(-1))], {}


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    return a if len(a) == n else np.concatenate([a, np.repeat(a[-1:], n - len(a), 0)])
