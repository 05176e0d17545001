"""ReGrad (`system.name: regrad`): passages become parameter updates (spec §3).

    python train.py --config configs/regrad.yaml               # meta-train theta and alpha
    python train.py --config configs/regrad.yaml --pass bank   # the gradient bank (resumable)
    python infer.py --checkpoint runs/regrad                   # every mode, EM/F1, predictions

Trainable: {"lora": theta, LoRA on the MLP gate/up/down of the chosen layers (PEFT init, B = 0),
"alpha": the inner step sizes (AlphaMode)}; frozen: the base decoder. One training row is one
task (a question with its top-k passages, gmem.systems.regrad.data.TaskRows); the loss is the
outer QA loss after one inner step on the passages (gmem.systems.regrad.meta), so the
loop's jax.value_and_grad is the second-order meta-gradient. A meta-batch of 16 is
data.batch_size 16 with optim.grad_accum 16 (one task per micro-batch, as the original
backpropagates task by task).
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as Spec
from tqdm import tqdm

from gmem.adapters import init_adapters
from gmem.adapters.sharding import adapter_logical_specs
from gmem.config import register_system
from gmem.errors import GmemError
from gmem.systems.lm import LMSystem
from gmem.systems.regrad import bank as B
from gmem.systems.regrad.data import RegradData, TaskRows, bank_passages, batch_indices
from gmem.systems.regrad.meta import Model
from gmem.systems.regrad.modes import Answerer, bank_grads, check_modes, combined
from gmem.systems.regrad.options import AlphaMode, RegradOptions, adapted_layers
from gmem.systems.regrad.prompt import extract_answer, passage_rows
from gmem.train.system import OfflinePass
from gmem.tree import flatten


@register_system("regrad")
class RegradSystem(LMSystem):
    Options = RegradOptions
    throughput_unit = "answer_tokens"

    def __init__(self, cfg, load_data: bool = True):
        super().__init__(cfg, load_data=False)   # LMSystem: base model, tokenizer, adapter specs
        o = self.opts
        self._check_options(o)
        layers = adapted_layers(o.lora_layers, self.model_config.num_hidden_layers)
        self.spec = dataclasses.replace(self.specs[0], layers_to_transform=layers)
        self.specs = [self.spec]
        self.model = Model(self.module, self.spec, o.alpha_mode, o.init_alpha, o.passage_loop,
                           o.meta_grad)
        self.rows = TaskRows(self.tokenizer, o)
        run = pathlib.Path(cfg.train.run_dir)
        self.regrad_data = RegradData(o, o.data_dir or run / "data", progress=cfg.train.progress)
        self.bank_dir = pathlib.Path(o.bank_dir) if o.bank_dir else run / "passes" / "bank"
        self._base_identity = None
        if load_data:
            self.regrad_data.train_records()

    def _check_options(self, o) -> None:
        if len(self.specs) != 1 or self.specs[0].kind != "lora":
            raise GmemError("adapters: ReGrad needs exactly one LoRA set (its theta); got "
                            f"{[s.kind for s in self.specs]}")
        for f in ("top_k", "max_passage_len", "max_prompt_len", "max_answer_len", "max_new_tokens",
                  "bank_chunk", "bank_batch", "infer_batch"):
            if getattr(o, f) < 1:
                raise GmemError(f"system.{f}: must be >= 1, got {getattr(o, f)}")
        B.np_dtype(o.bank_dtype)
        check_modes(o.modes)

    @property
    def structure(self) -> dict:
        s = LMSystem.structure.fget(self)
        s.update(system=self.name, alpha_mode=self.opts.alpha_mode.value,
                 lora_layers=list(self.spec.layers_to_transform))
        return s

    def data(self):
        return self.regrad_data

    # ---- trainable ----------------------------------------------------------------------
    def init_trainable(self, base, rng):
        lora = init_adapters([self.spec], base, rng)[self.spec.name]
        alpha = self.model.init_alpha_tree(lora)
        return {"lora": lora} if alpha is None else {"lora": lora, "alpha": alpha}

    def abstract_trainable(self, abstract_base):
        return jax.eval_shape(lambda b: self.init_trainable(b, jax.random.PRNGKey(0)), abstract_base)

    def trainable_specs(self, abstract_trainable, base_specs):
        """LoRA sharded like its projection; alpha as its tensor (full) or replicated."""
        lora = adapter_logical_specs({"lora": abstract_trainable["lora"]}, base_specs)["lora"]
        out = {"lora": lora}
        if "alpha" in abstract_trainable:
            if self.opts.alpha_mode == AlphaMode.full:
                out["alpha"] = lora
            else:
                out["alpha"] = jax.tree_util.tree_map(lambda _: Spec(), abstract_trainable["alpha"])
        return out

    # ---- loss and batches ---------------------------------------------------------------
    def loss(self, trainable, frozen, batch, rng):
        """Mean outer loss of the tasks in `batch` (after each one's inner step)."""
        return self.model.meta_loss(trainable, frozen, batch)

    def batch_shapes(self) -> dict:
        return {k: jax.ShapeDtypeStruct(s, jnp.int32)
                for k, s in self.rows.shapes(self.cfg.data.batch_size).items()}

    def batch(self, index: int, host: slice = slice(None)) -> dict:
        recs = self.regrad_data.train_records()
        idx = batch_indices(len(recs), self.cfg.data.batch_size, index, self.cfg.data.seed)[host]
        return self.rows.rows([recs[i] for i in idx])

    # ---- evaluation ---------------------------------------------------------------------
    def evaluate(self, trainable, frozen, eval_fn=None) -> dict:
        """Dev meta-loss (eval/{set}/loss over eval.batches micro-batches) and, with
        system.eval_questions > 0, EM/F1 of ReGrad with on-the-fly gradients."""
        fn = eval_fn or jax.jit(lambda t, f, x: self.loss(t, f, x, None)[0])
        micro = max(1, self.cfg.data.batch_size // self.cfg.optim.grad_accum)
        out, losses, f1s = {}, [], []
        for name, recs in self.regrad_data.dev_sets().items():
            b = min(micro, len(recs))      # full micro-batches only: one compiled shape
            n = min(len(recs), self.cfg.eval.batches * b) // b * b if b else 0
            ls = [float(fn(trainable, frozen, self.rows.rows(recs[s:s + b]))) for s in range(0, n, b)]
            if ls:
                out[f"eval/{name}/loss"] = float(np.mean(ls))
                losses.append(out[f"eval/{name}/loss"])
            q = self.opts.eval_questions
            if q > 0 and recs:
                _, m = Answerer(self, trainable, frozen, "fly").run(name, recs[:q], ["regrad"])
                out[f"eval/{name}/em"], out[f"eval/{name}/f1"] = m[f"{name}/regrad/em"], m[f"{name}/regrad/f1"]
                f1s.append(out[f"eval/{name}/f1"])
        if losses:
            out["eval/loss"] = float(np.mean(losses))
        if f1s:
            out["eval/f1"] = float(np.mean(f1s))
        return out

    # ---- the gradient bank --------------------------------------------------------------
    def base_identity(self, frozen) -> dict:
        """What the base model is: source, family sizes, sha256 of the frozen weights."""
        if self._base_identity is None:
            c = self.model_config
            self._base_identity = {"source": self.cfg.model.source, "family": c.model_type,
                                   "sizes": self.structure["model"],
                                   "weights_sha256": B.weights_sha256(frozen)}
        return self._base_identity

    def offline_passes(self) -> dict:
        d = self.regrad_data
        items = bank_passages(d.dev_sets(), d.dev_files())
        keys = [k for k, _ in items]
        o = self.opts
        jitted = jax.jit(self.model.per_passage_grads)
        state = {"checked": False}

        def run_chunk(start, stop, out, trainable, frozen):
            meta = B.bank_meta(o.bank_dtype, d.corpus_identity(), self.base_identity(frozen),
                               B.lora_shapes(trainable["lora"]), keys)
            if not state["checked"]:
                B.ensure_meta(out, meta)
                state["checked"] = True
            B.drop_uncommitted(out, start)
            texts = [t for _, t in items[start:stop]]
            grads, losses = {}, []
            for s in range(0, len(texts), o.bank_batch):
                part = texts[s:s + o.bank_batch]
                ids, mask = passage_rows(self.tokenizer, part + [""] * (o.bank_batch - len(part)),
                                         o.max_passage_len, self.rows.pad)
                loss, g = jitted(trainable["lora"], frozen, ids, mask)
                losses += np.asarray(loss)[:len(part)].tolist()
                for p, v in flatten(dict(jax.device_get(g))).items():
                    grads.setdefault(p, []).append(np.asarray(v)[:len(part)])
            B.write_shard(out, start, keys[start:stop], {p: np.concatenate(v) for p, v in grads.items()},
                          o.bank_dtype)
            return {"passages": stop - start, "passage_loss": float(np.mean(losses))}

        def finish(out):
            where = {k: p.name for p in sorted(out.glob("shard-*.safetensors")) for k in B.shard_keys(p)}
            if len(where) != len(keys) or set(where) != set(keys):
                raise GmemError(f"{out}: {len(where)} passages in the shards, {len(keys)} expected; "
                                "delete the folder and build the bank again")
            B.write_json(out / B.INDEX, where)
            per = B.read_json(out / B.META)["bytes_per_passage"]
            size = sum(p.stat().st_size for p in out.glob("shard-*.safetensors"))
            print(f"bank: {len(keys)} passages, {B.human(per)} per passage ({o.bank_dtype}), "
                  f"{B.human(size)} in {out}", flush=True)
            return {"bytes_per_passage": per, "bank_bytes": size}

        return {"bank": OfflinePass("bank", len(keys), run_chunk, chunk=o.bank_chunk,
                                    unit="passages", finish=finish)}

    def open_bank(self, trainable, frozen) -> B.Bank:
        expect = {"corpus": self.regrad_data.corpus_identity(), "base": self.base_identity(frozen),
                  "lora": B.lora_shapes(trainable["lora"])}
        return B.Bank(self.bank_dir, expect)

    # ---- inference ----------------------------------------------------------------------
    def predict(self, trainable, frozen, prompts=None) -> tuple[list[dict], dict]:
        """Every mode of system.modes on every dev set (gradients from the bank), or, given
        prompts, on those questions (retrieved now, gradients computed now)."""
        o = self.opts
        modes = check_modes(o.modes)
        if prompts:
            recs = self._retrieved(prompts)
            ans = Answerer(self, trainable, frozen, "fly", o.gamma)
            rows = []
            for mode in (m for m in modes if m != "shift"):   # shift needs a set of questions
                for r, t in zip(recs, ans.answer(recs, mode, "prompts")):
                    rows.append({"prompt": r["question"], "mode": mode, "generation": t,
                                 "prediction": extract_answer(t), "passages": r["passages"]})
            return rows, {}
        needs_bank = any(m in ("regrad", "regrad_icl", "shift") for m in modes)
        grads = bank_grads(self.open_bank(trainable, frozen), self) if needs_bank else "fly"
        ans = Answerer(self, trainable, frozen, grads, o.gamma)
        sets, files = self.regrad_data.dev_sets(), self.regrad_data.dev_files()
        rows, metrics = [], {}
        total = sum(len(r) for r in sets.values()) * len(modes)
        with tqdm(total=total, desc="answering", unit="q", disable=not self.cfg.train.progress) as bar:
            for name, recs in sets.items():
                r, m = ans.run(name, recs, modes, files.get(name, name), bar.update)
                rows += r
                metrics.update(m)
        metrics.update(combined(metrics, list(sets), modes))
        return rows, metrics

    def _retrieved(self, questions) -> list[dict]:
        hits = self.regrad_data.retriever().search(list(questions), self.opts.top_k)
        return [{"test_id": i, "question": q, "answer": "", "passages": [str(t) for t in hits.passages[i]],
                 "passage_ids": [str(t) for t in hits.ids[i]]} for i, q in enumerate(questions)]
