"""GOFA's compressor, pretrained as ICAE (`system.name: gofa_compressor`).

No ICAE checkpoint exists for the embedded SmolLM2, so one is trained here, as ICAE pretrains:
each Wikipedia summary (train split of the TAG's seeded node split) is compressed into K memory
states by the LLM with the `encadapt` LoRA; the frozen LLM (no adapter) then reads them as input
embeddings and is trained to
  autoencode  (share ae_fraction): K slots + [AE] -> the text + EOS, or
  continue:   the first p tokens compressed, K slots + [LM] -> the next tokens + EOS.
Trained: the encoder LoRA and the memory table [K + 3, D]. Batches (deterministic in the index):
  text_ids [B, Lt], text_len [B]; dec_ids, dec_mask, dec_target [B, Ld]   (gofa.layout)
Evaluation (held-out test-split summaries, autoencoding): teacher-forced loss and token accuracy,
and greedy reconstructions scored by token BLEU-4 and exact match.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gmem.config import register_system
from gmem.errors import GmemError
from gmem.graph.tag import load_wiki_summaries, split_of
from gmem.systems.gofa import model as M
from gmem.systems.gofa.base import GOFABase, check_shapes
from gmem.systems.gofa.checkpoint import load_icae
from gmem.systems.gofa.layout import TextCache, bucket, encoder_slab, icae_row, pad_decoder_rows
from gmem.systems.gofa.options import ENCODER_ADAPTER, GOFACompressorOptions
from gmem.systems.gofa.scoring import corpus_bleu
from gmem.systems.lm import LMSystem


@register_system("gofa_compressor")
class GOFACompressorSystem(GOFABase):
    Options = GOFACompressorOptions

    def __init__(self, cfg, load_data: bool = True):
        self._init_gofa(cfg)
        if not 0.0 <= self.p.ae_fraction <= 1.0:
            raise GmemError(f"system.ae_fraction: must be in [0, 1], got {self.p.ae_fraction}")
        self.tokens = TextCache(self.tokenizer, True)
        self._texts = None
        self._jit = {}
        if load_data:
            self.texts()

    @property
    def structure(self) -> dict:
        s = dict(GOFABase.structure.fget(self))
        s.update(system=self.name, num_memory_tokens=self.p.num_memory_tokens)
        return s

    # ---- parameters ------------------------------------------------------------------------
    def load_base(self):
        return {"llm": LMSystem.load_base(self)}

    def abstract_base(self):
        abs_, specs = LMSystem.abstract_base(self)
        return {"llm": abs_}, {"llm": specs}

    def init_trainable(self, base, rng):
        out = self.init_encoder(base["llm"], rng)
        if self.p.import_icae:
            got = load_icae(self.p.import_icae, self)
            check_shapes(got, out, f"system.import_icae={self.p.import_icae!r}")
            out = jax.tree_util.tree_map(jnp.asarray, got)
        return out

    def abstract_trainable(self, abstract_base):
        return jax.eval_shape(lambda b: self.init_encoder(b["llm"], jax.random.PRNGKey(0)), abstract_base)

    def trainable_specs(self, abstract_trainable, base_specs):
        return self.encoder_specs(abstract_trainable, base_specs["llm"])

    # ---- loss ------------------------------------------------------------------------------
    def memory(self, trainable, frozen, text_ids, text_len, rng=None):
        """Memory states [B, K, D] of the texts, encoder LoRA on."""
        v = self.variables(frozen["llm"], self.enc_spec, trainable[ENCODER_ADAPTER])
        return M.compress(self.module, v, trainable["memory_table"], text_ids, text_len, self.special,
                          self.dtype, rngs=self.rngs(rng, self.enc_spec))

    def loss(self, trainable, frozen, batch, rng):
        """Mean CE over the decoder's target tokens; aux: tokens (encoder + decoder), target
        tokens, teacher-forced token accuracy."""
        mem = self.memory(trainable, frozen, batch["text_ids"], batch["text_len"], rng)
        ce, n, hit = M.decoder_loss(self.module, self.variables(frozen["llm"]), trainable["memory_table"], mem,
                                    batch, self.special, self.dtype)
        n1 = jnp.maximum(n, 1.0)
        tokens = batch["text_len"].sum() + batch["dec_mask"].sum()
        return ce / n1, {"tokens": tokens.astype(jnp.float32), "target_tokens": n, "accuracy": hit / n1}

    # ---- data ------------------------------------------------------------------------------
    def texts(self) -> dict[str, list[str]]:
        """{"train": [...], "test": [...]} summaries by the TAG's seeded split (val unused)."""
        if self._texts is None:
            titles, texts, _ = load_wiki_summaries()
            split = [split_of(t, self.p.tag_seed) for t in titles]
            self._texts = {"train": [x for x, s in zip(texts, split) if s == 0],
                           "test": [x for x, s in zip(texts, split) if s == 2]}
        return self._texts

    def rows(self, texts, kinds, cuts) -> dict:
        """A batch from texts, kinds ("ae" | "lm") and continuation cut points (fractions)."""
        o, sp = self.p, self.special
        eos = self.tokenizer.eos_token_id
        enc, dec = [], []
        for text, kind, cut in zip(texts, kinds, cuts):
            ids = self.tokens(text)
            if kind == "lm" and len(ids) > 1:
                p = 1 + int(cut * (min(len(ids), o.max_text_len + 1) - 1))
                enc.append(ids[:p])
                dec.append(icae_row(sp, sp.lm, ids[p:], eos, o.max_text_len))
            else:
                enc.append(ids[:o.max_text_len])
                dec.append(icae_row(sp, sp.ae, enc[-1], eos, o.max_text_len))
        lt = bucket(min(max(map(len, enc)), o.max_text_len), o.text_len_buckets, "system.text_len_buckets")
        ld = bucket(max(len(r) for r, _ in dec), o.dec_len_buckets, "system.dec_len_buckets")
        ids, lens = encoder_slab(enc, lt, self.pad_id)
        return {"text_ids": ids, "text_len": lens, **pad_decoder_rows(dec, ld, self.pad_id)}

    def batch_shapes(self) -> dict:
        """The largest shapes (a batch is cut to the buckets its rows need)."""
        b, o = self.cfg.data.batch_size, self.p
        lt, ld = max(o.text_len_buckets), max(o.dec_len_buckets)
        return {"text_ids": jax.ShapeDtypeStruct((b, lt), jnp.int32), "text_len": jax.ShapeDtypeStruct((b,), jnp.int32),
                **{k: jax.ShapeDtypeStruct((b, ld), jnp.float32 if k == "dec_target" else jnp.int32)
                   for k in ("dec_ids", "dec_mask", "dec_target")}}

    def batch(self, index: int, host: slice = slice(None)) -> dict:
        """Global batch `index`: rows index*B .. index*B+B-1 of epoch-wise seeded permutations of
        the train texts; kind and cut from a generator seeded by (seed, index)."""
        train = self.texts()["train"]
        b, seed = self.cfg.data.batch_size, self.cfg.data.seed
        picks = []
        for r in range(index * b, index * b + b):
            e = r // len(train)
            picks.append(int(np.random.default_rng([seed, e]).permutation(len(train))[r % len(train)]))
        rng = np.random.default_rng([seed, 1 << 20, index])
        kinds = ["ae" if u < self.p.ae_fraction else "lm" for u in rng.random(b)]
        out = self.rows([train[i] for i in picks], kinds, rng.random(b))
        return {k: v[host] for k, v in out.items()}

    # ---- evaluation ------------------------------------------------------------------------
    def eval_texts(self) -> list[str]:
        test = self.texts()["test"]
        order = np.random.default_rng([self.p.tag_seed, 7]).permutation(len(test))
        return [test[i] for i in order[:self.p.eval_texts]]

    def evaluate(self, trainable, frozen, eval_fn=None) -> dict:
        """eval/loss, eval/token_accuracy (teacher-forced autoencoding), eval/bleu and
        eval/exact (greedy reconstructions of the first eval_generate texts)."""
        texts = self.eval_texts()
        if not texts:
            return {}
        loss = self._jit.setdefault("loss", jax.jit(lambda t, f, b: self.loss(t, f, b, None)))
        tot = n = hit = 0.0
        bs = self.p.eval_batch
        for i in range(0, len(texts), bs):
            chunk = texts[i:i + bs]
            l, aux = loss(trainable, frozen, self.rows(chunk, ["ae"] * len(chunk), [0.0] * len(chunk)))
            k = float(aux["target_tokens"])
            tot, n, hit = tot + float(l) * k, n + k, hit + float(aux["accuracy"]) * k
        out = {"eval/loss": tot / max(n, 1), "eval/token_accuracy": hit / max(n, 1)}
        gen = texts[:self.p.eval_generate]
        if gen:
            hyps = self.reconstruct(trainable, frozen, gen)
            refs = [self.tokens(t)[:self.p.max_text_len] for t in gen]
            plain = [[i for i in r if i != self.tokenizer.eos_token_id] for r in refs]
            out["eval/bleu"] = corpus_bleu(hyps, plain)
            out["eval/exact"] = float(np.mean([h == r for h, r in zip(hyps, plain)]))
        return out

    def reconstruct(self, trainable, frozen, texts) -> list[list[int]]:
        """Greedy autoencoding of texts: token ids (EOS dropped) per text."""
        o, sp = self.p, self.special
        out = []
        for i in range(0, len(texts), o.eval_batch):
            chunk = texts[i:i + o.eval_batch]
            enc = [self.tokens(t)[:o.max_text_len] for t in chunk]
            lt = bucket(max(map(len, enc)), o.text_len_buckets, "system.text_len_buckets")
            ids, lens = encoder_slab(enc, lt, self.pad_id)
            prompt = np.asarray([sp.slots + [sp.ae]] * len(chunk), np.int32)
            mem = self._jit.setdefault("mem", jax.jit(self.memory))(trainable, frozen, ids, lens)
            res = M.generate_from_memory(self.module, self.variables(frozen["llm"]), trainable["memory_table"], mem,
                                         prompt, np.ones(prompt.shape, np.int32), sp, self.dtype,
                                         max_new_tokens=o.max_text_len + 1, eos_token_id=self.tokenizer.eos_token_id,
                                         pad_token_id=self.pad_id)
            toks, lengths = np.asarray(res.tokens), np.asarray(res.lengths)
            eos = self.tokenizer.eos_token_id
            out += [[int(x) for x in toks[r, :lengths[r]] if x != eos] for r in range(len(chunk))]
        return out

    def predict(self, trainable, frozen, prompts=None):
        """Reconstructions of `prompts` (texts; default: the first eval_generate eval texts)."""
        texts = list(prompts or self.eval_texts()[:max(self.p.eval_generate, 1)])
        hyps = self.reconstruct(trainable, frozen, texts)
        return [{"prompt": t, "generation": self.tokenizer.decode(h)} for t, h in zip(texts, hyps)], {}

