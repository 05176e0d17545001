"""GIFT sequence classification as a gmem.train system (`system.name: gift`).

A BERT-family encoder (default: the embedded all-MiniLM-L6-v2) with GIFT on query/value and a
trainable classifier, on texts with labels. The embedded data set is the 10,033 Wikipedia
lead summaries with their topic (11 topics; "Uncategorized" is dropped); any .json/.jsonl
file with text and label fields works too. The causal-LM use needs no system of its own:
`system.name: lm` with `adapters: [{kind: gift, targets: [q_proj, v_proj]}]`.

system.params (all optional): use, rank, targets, share_projections, gift_act,
in_projection_bias, out_projection_bias (the AdapterSpec fields), dataset ("wiki-topics" or a
file), text_field, label_field, max_examples.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gmem.errors import GmemError
from gmem.models.bert import BertConfig, BertForSequenceClassification
from gmem.systems import gift

_SPEC_KEYS = ("rank", "targets", "share_projections", "gift_act", "in_projection_bias",
              "out_projection_bias")
_OWN_KEYS = _SPEC_KEYS + ("use", "dataset", "text_field", "label_field", "max_examples")


def load_examples(dataset: str, text_field: str = "text", label_field: str = "label",
                  max_examples: int | None = None, seed: int = 0) -> tuple[list[str], list[int], tuple]:
    """(texts, label ids, label names), shuffled with `seed` (one order for train/eval split)."""
    if dataset == "wiki-topics":
        import gmem.assets
        rows = json.loads(pathlib.Path(gmem.assets.path("wiki-summaries-en")).read_text()).values()
        pairs = [(r["extract"], r["topic"]) for r in rows if r.get("topic") not in (None, "Uncategorized")]
    else:
        p = pathlib.Path(dataset)
        if not p.is_file():
            raise GmemError(f"system.params.dataset: {dataset!r} is not 'wiki-topics' or a .json/.jsonl file")
        text = p.read_text()
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if p.suffix == ".jsonl" else json.loads(text)
        bad = [i for i, r in enumerate(rows) if text_field not in r or label_field not in r]
        if bad:
            raise GmemError(f"{p}: row {bad[0]} lacks {text_field!r} or {label_field!r}")
        pairs = [(str(r[text_field]), str(r[label_field])) for r in rows]
    names = tuple(sorted({lab for _, lab in pairs}))
    order = np.random.default_rng(seed).permutation(len(pairs))[:max_examples]
    return [pairs[i][0] for i in order], [names.index(pairs[i][1]) for i in order], names


class GiftSeqClsSystem:
    name = "gift"

    def __init__(self, cfg, load_data: bool = True):
        self.cfg = cfg
        p = dict(cfg.system.params or {})
        unknown = sorted(set(p) - set(_OWN_KEYS))
        if unknown:
            raise GmemError(f"system.params: unknown keys {unknown} for the gift system; known: {list(_OWN_KEYS)}")
        if p.get("use", "sequence_classification") != "sequence_classification":
            raise GmemError("system.params.use: the gift train system does sequence_classification; "
                            "for a causal LM use system.name=lm with an adapter of kind gift")
        spec_kw = {k: (tuple(p[k]) if k == "targets" else p[k]) for k in _SPEC_KEYS if k in p}
        self.use = gift.GiftUse.make("sequence_classification", **spec_kw)
        self.specs = [self.use.spec]
        self.texts, self.labels, self.label_names = load_examples(
            p.get("dataset", "wiki-topics"), p.get("text_field", "text"), p.get("label_field", "label"),
            p.get("max_examples"), cfg.data.seed)
        m = cfg.model
        self.path = None
        if m.source == "random":
            from gmem.data.text import ByteTokenizer
            self.tokenizer = ByteTokenizer()
            base = BertConfig(vocab_size=260, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
                              num_attention_heads=m.num_attention_heads, intermediate_size=m.intermediate_size,
                              max_position_embeddings=max(cfg.data.seq_len + 2, 64), pad_token_id=258)
            self._encoder = None
        else:
            import gmem.assets
            from gmem.hf.convert import load_pretrained
            from gmem.hf.tokenizer import load_tokenizer
            src = "all-minilm-l6-v2" if m.source == "minilm" else m.source
            if src in gmem.assets.ASSETS:
                src = gmem.assets.path(src)
            self.path = pathlib.Path(src)
            _, base, enc = load_pretrained(self.path)
            if not isinstance(base, BertConfig):
                raise GmemError(f"model.source: {src} is a {type(base).__name__}; the gift system needs BERT/RoBERTa")
            self._encoder = nn.unbox(enc)
            self._encoder = self._encoder.get("bert", self._encoder.get("roberta", self._encoder))
            self.tokenizer = load_tokenizer(self.path)
        self.model_config = dataclasses.replace(
            base, num_labels=len(self.label_names), labels=self.label_names, hidden_dropout_prob=0.0,
            architecture="BertForSequenceClassification", add_pooling_layer=True, dtype=m.dtype, remat=m.remat)
        self.module = BertForSequenceClassification(self.model_config)
        ids, mask = self._tokenize(self.texts)
        n_eval = max(1, int(round(len(ids) * cfg.data.eval_fraction)))
        self.train_rows = (ids[:-n_eval], mask[:-n_eval], np.asarray(self.labels[:-n_eval], np.int32))
        self.eval_rows = (ids[-n_eval:], mask[-n_eval:], np.asarray(self.labels[-n_eval:], np.int32))
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
                "adapters": [{k: (list(v) if isinstance(v, tuple) else v)
                              for k, v in dataclasses.asdict(self.use.spec).items()}],
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
        return gift.init_trainable(self.use, base, rng)

    def abstract_trainable(self, abstract_base):
        return jax.eval_shape(lambda b: gift.init_trainable(self.use, b, jax.random.PRNGKey(0)), abstract_base)

    def trainable_specs(self, abstract_trainable, base_specs):
        from jax.sharding import PartitionSpec as P
        return jax.tree_util.tree_map(lambda x: P(*([None] * len(x.shape))), abstract_trainable)

    # ---- loss, data, eval ---------------------------------------------------------------
    def logits(self, trainable, frozen, batch):
        return self.module.apply(gift.variables(self.use, trainable, frozen), batch["input_ids"],
                                 batch["attention_mask"])

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
        """Accuracy and loss over the held-out examples (all of them, in batches)."""
        fn = jax.jit(lambda t, f, x: self.logits(t, f, x))
        ids, mask, labels = self.eval_rows
        b = self.cfg.data.batch_size
        correct, ce = 0, 0.0
        for s in range(0, len(ids), b):
            x = {"input_ids": jnp.asarray(_pad(ids[s:s + b], b)), "attention_mask": jnp.asarray(_pad(mask[s:s + b], b))}
            lg = np.asarray(fn(trainable, frozen, x))[: len(ids[s:s + b])]
            y = labels[s:s + b]
            correct += int((lg.argmax(-1) == y).sum())
            ce += float(optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(lg), jnp.asarray(y)).sum())
        return {"eval/accuracy": correct / len(ids), "eval/loss": ce / len(ids)}

    def predict(self, trainable, frozen, prompts=None):
        texts = list(prompts) if prompts else self.texts[-len(self.eval_rows[0]):][:32]
        ids, mask = self._tokenize(texts)
        lg = np.asarray(self.logits(trainable, frozen, {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask)}))
        return [{"text": t[:200], "prediction": self.label_names[int(k)]} for t, k in zip(texts, lg.argmax(-1))], {}


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    return a if len(a) == n else np.concatenate([a, np.repeat(a[-1:], n - len(a), 0)])
