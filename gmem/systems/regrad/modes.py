"""infer.py's evaluation: every mode on every dev set, EM/F1 as the original scores them.

Modes (spec §3.7):
  direct      the base model (no LoRA), prompt without passages      (original: --icl --blind_context)
  rag         the base model, the k passages in the prompt            (original: --icl)
  regrad      theta' = theta - gamma * alpha (.) sum_i g_i, no passages (--blind_context)
  regrad_icl  theta' and the passages in the prompt                   (no --blind_context)
  shift       question i answered with question i-1's gradients (and, when the run was
              trained with context, its passages): does the injected knowledge matter?
              (question 0 takes the last question's, as the original's i-1 index does)
g_i come from the gradient bank (gmem.systems.regrad.bank), or are computed on the fly
(`grads="fly"`: training-time evaluation and free-form questions).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from gmem.errors import GmemError
from gmem.systems.regrad import metrics as M
from gmem.systems.regrad import prompt as P
from gmem.systems.regrad.answer import adapt_rows, generate_rows, inner_rows, stack_rows
from gmem.systems.regrad.data import passage_keys
from gmem.systems.regrad.options import MODES
from gmem.tree import unflatten


def check_modes(modes: Sequence[str]) -> list[str]:
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise GmemError(f"system.modes: unknown mode(s) {bad}; use some of {list(MODES)}")
    return list(modes)


class Answerer:
    """Answers questions of augmented records in each mode for one (system, trainable, frozen)."""

    def __init__(self, system, trainable, frozen, grads: Callable | str = "fly", gamma: float = 1.0):
        """grads: "fly" (inner gradients computed now) or fn(record, where, index) -> summed
        gradient tree of the record's passages (numpy), e.g. from a Bank."""
        self.s, self.t, self.f = system, trainable, frozen
        self.grads, self.gamma = grads, float(gamma)
        o = system.opts
        self.o, self.tok = o, system.tokenizer

    def _prompt(self, rec: dict, context: bool) -> list[int]:
        ps = list(rec["passages"])[:self.o.top_k] if context else None
        return P.prompt_ids(self.tok, rec["question"], ps, 10 ** 9, self.o.max_context_len)

    def _adapted(self, recs: Sequence[dict], where: str, offset: int):
        if self.grads == "fly":
            rows = self.s.rows.rows(recs)
            g = inner_rows(self.s.model, self.t["lora"], self.f, rows["passage_ids"], rows["passage_mask"])
        else:
            g = stack_rows([self.grads(r, where, offset + i) for i, r in enumerate(recs)])
        return adapt_rows(self.s.model, self.t, g, self.gamma)

    def answer(self, recs: Sequence[dict], mode: str, where: str = "", offset: int = 0,
               donors: Sequence[dict] | None = None) -> list[str]:
        """Generated texts for records in `mode`; donors: the records whose gradients (and
        context) each row uses (shift)."""
        context = mode in ("rag", "regrad_icl") or (mode == "shift" and not self.o.blind_context)
        src = list(donors) if donors is not None else list(recs)
        prompts = [self._prompt({**r, "passages": d["passages"]}, context) for r, d in zip(recs, src)]
        lora = None if mode in ("direct", "rag") else self._adapted(src, where, offset)
        return generate_rows(self.s.model, self.tok, self.f, prompts, lora,
                             max_new_tokens=self.o.max_new_tokens,
                             vocab_size=self.s.model_config.vocab_size)

    def run(self, name: str, recs: Sequence[dict], modes: Sequence[str], where: str = "",
            progress=None) -> tuple[list[dict], dict]:
        """(prediction rows, {f"{name}/{mode}/{em,f1,prec,recall}"}) over records."""
        rows, out = [], {}
        n, b = len(recs), max(1, self.o.infer_batch)
        for mode in modes:
            preds = {}
            for s in range(0, n, b):
                chunk = list(recs[s:s + b])
                donors = [recs[(s + i - 1) % n] for i in range(len(chunk))] if mode == "shift" else None
                texts = self.answer(chunk, mode, where, s, donors)
                for r, t in zip(chunk, texts):
                    pred = P.extract_answer(t)
                    preds[r["test_id"]] = pred
                    rows.append({"dataset": name, "mode": mode, "test_id": r["test_id"],
                                 "prompt": r["question"], "answer": r["answer"],
                                 "prediction": pred, "generation": t})
                if progress is not None:
                    progress(len(chunk))
            for k, v in M.evaluate(preds, recs).items():
                out[f"{name}/{mode}/{k}"] = v
        return rows, out


def combined(metrics: dict, names: Sequence[str], modes: Sequence[str]) -> dict:
    """all/{mode}/{metric}: the unweighted mean over dev sets (the original's combined score)."""
    out = {}
    for mode in modes:
        per = {n: {k: metrics[f"{n}/{mode}/{k}"] for k in M.KEYS} for n in names}
        for k, v in M.combine(per).items():
            out[f"all/{mode}/{k}"] = round(v, 2)
    return out


def bank_grads(bank, system):
    """fn(record, where, index) -> sum of the bank's gradients of its passages."""
    def fn(rec: dict, where: str, index: int):
        keys = passage_keys(rec, where, index)[:system.opts.top_k]
        g = bank.summed(keys, f"{where}: record {index}")
        return unflatten({p: np.asarray(v) for p, v in g.items()})
    return fn
