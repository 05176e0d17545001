"""VardaGPT evaluation: the perplexity table (backbone alone, backbone with the whole row in its
window, memory wiped every segment, memory carried) and the long-context fact probe
(specs/gift-varda-regrad.md §2). `python infer.py --checkpoint RUN` reports both
(VardaSystem.predict, system.report).

Every variant is one of the module-level functions *_logits(system, trainable, frozen, ids):
the table and the probe look them up when they run, so both always score the same variants.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gmem.errors import GmemError
from gmem.models.generate import encode_text
from gmem.systems.varda.recall import PROBE_FACT, PROBE_NAMES, PROBE_QUESTION

NAMES = PROBE_NAMES  # the probe's candidates (kept under the old name)


def _with_memory(system, trainable, frozen, ids_BT):
    m = system.model
    return m(trainable["varda"], system.backbone_variables(trainable, frozen), m.init_memory(ids_BT.shape[0]), ids_BT)[0]


def carried_logits(system, trainable, frozen, ids_BT):
    """VardaGPT: one fresh memory per row, carried across the row's segments."""
    return _with_memory(system, trainable, frozen, ids_BT)


def wiped_logits(system, trainable, frozen, ids_BT):
    """The trained memory layers with the memory emptied before every segment."""
    b, t = ids_BT.shape
    seg = min(system.varda_cfg.segment_len, t)
    return _with_memory(system, trainable, frozen, ids_BT.reshape(b * (t // seg), seg)).reshape(b, t, -1)


def alone_logits(system, trainable, frozen, ids_BT):
    """The backbone alone on each segment (no memory path), the same window as VardaGPT."""
    m = system.model.without_memory()
    return m(trainable["varda"], system.backbone_variables(trainable, frozen), m.init_memory(ids_BT.shape[0]), ids_BT)[0]


def full_window_logits(system, trainable, frozen, ids_BT):
    """The backbone alone with the whole row in its window (the honest upper reference)."""
    return system.module.apply(system.backbone_variables(trainable, frozen), ids_BT)[0]


def _variants():
    return {"backbone alone": alone_logits, "backbone, whole row in window": full_window_logits,
            "memory layers, memory wiped every segment": wiped_logits,
            "VardaGPT (memory carried)": carried_logits}


def eval_tokens(system) -> np.ndarray:
    """The held-out rows' tokens in order, pads (line_split rows) left out."""
    rows = np.asarray(system.data()[1])
    mask = getattr(system, "eval_mask", None)
    return rows.reshape(-1) if mask is None else rows[np.asarray(mask, bool)]


def perplexity_table(system, trainable, frozen, batches: int = 8) -> dict:
    """Held-out loss and perplexity of every variant on the same rows: {name: (loss, ppl)}."""
    rows = np.asarray(system.data()[1])
    mask = getattr(system, "eval_mask", None)
    mask = np.ones(rows.shape, np.float32) if mask is None else np.asarray(mask, np.float32)
    bs = system.cfg.data.batch_size
    n = max(1, min(batches, len(rows) // bs)) * bs
    rows, mask = rows[:n], mask[:n]
    variants = _variants()

    @jax.jit  # weights as arguments, not closed-over constants (XLA would constant-fold them)
    def losses(trainable, frozen, ids, w):
        x, y, w = ids[:, :-1], ids[:, 1:], w[:, 1:]
        out = []
        for fn in variants.values():
            ce = optax.softmax_cross_entropy_with_integer_labels(fn(system, trainable, frozen, x), y)
            out.append((ce * w).sum())
        return out

    tot = np.zeros(len(variants))
    for i in range(0, n, bs):
        tot += [float(v) for v in losses(trainable, frozen, jnp.asarray(rows[i:i + bs]), jnp.asarray(mask[i:i + bs]))]
    tok = max(float(mask[:, 1:].sum()), 1.0)
    return {k: (float(v / tok), float(np.exp(min(v / tok, 50.0)))) for k, v in zip(variants, tot)} | {"rows": n}


def probe_rows(system, trial: int, gap: int, in_window: bool):
    """The 10 candidate rows of one trial: (ids [10, (gap+2)*seg], answer spans, gold index).
    Segment 0 opens with the fact, `gap` segments of held-out text follow, and the last segment
    ends with the question and a candidate name; in_window puts the fact into the last segment
    instead (what the backbone can do when it sees the fact)."""
    tok, seg = system.tokenizer, system.varda_cfg.segment_len
    enc = lambda t: list(encode_text(tok, t, add_special_tokens=False))
    filler = eval_tokens(system)
    name = PROBE_NAMES[trial % len(PROBE_NAMES)]
    fact, q = enc(PROBE_FACT.format(name=name)), enc(PROBE_QUESTION)
    cands = [enc(" " + c) for c in PROBE_NAMES]
    need = (len(fact) if in_window else 0) + len(q) + max(map(len, cands))
    if need > seg or len(fact) > seg:
        what = "fact + question + name" if in_window else "the fact or question + name"
        raise GmemError(f"fact probe: {what} take {max(need, len(fact))} tokens, more than "
                        f"system.segment_len={seg}")
    if len(filler) < (gap + 3) * seg:
        raise GmemError(f"fact probe: {len(filler)} held-out tokens, fewer than {(gap + 3) * seg} "
                        "(raise system.eval_fraction)")
    text = list(filler[(trial * 997) % (len(filler) - (gap + 2) * seg):][: (gap + 2) * seg])
    rows, spans = [], []
    for c in cands:
        if in_window:
            last = text[: seg - len(fact) - len(q) - len(c)] + fact + q + c
            head = text[seg: (gap + 2) * seg]
        else:
            last = text[: seg - len(q) - len(c)] + q + c
            head = (fact + text[seg:])[:seg] + text[2 * seg: (gap + 2) * seg]
        rows.append(head[: (gap + 1) * seg] + last)
        spans.append((len(rows[-1]) - len(c), len(rows[-1])))
    return np.asarray(rows, np.int32), spans, PROBE_NAMES.index(name)


def fact_probe(system, trainable, frozen, trials: int = 10, gap: int = 2) -> dict:
    """A fact in segment 0 ("the keeper of the key is NAME"), `gap` segments of held-out text,
    then the question at the end of segment gap+1; the model picks NAME among 10 by summed
    log-probability. The fact is gap+1 segments back, outside the backbone's window; chance is
    10%. Variants: the backbone alone, the memory wiped every segment, VardaGPT, and the backbone
    with the fact in its window. The probe's names and fact are held out from the recall rows
    of the training curriculum (gmem.systems.varda.recall)."""
    variants = {"backbone alone": alone_logits, "memory wiped every segment": wiped_logits,
                "VardaGPT": carried_logits}
    run = {k: jax.jit(lambda t, f, ids, fn=fn: jax.nn.log_softmax(fn(system, t, f, ids), -1))
           for k, fn in variants.items()}
    enc = lambda t: list(encode_text(system.tokenizer, t, add_special_tokens=False))
    longest = max(len(enc(PROBE_FACT.format(name=n))) + len(enc(" " + n)) for n in PROBE_NAMES)
    if longest + len(enc(PROBE_QUESTION)) <= system.varda_cfg.segment_len:
        run["backbone, fact in window"] = run["backbone alone"]   # else it does not fit: left out
    hits = dict.fromkeys(run, 0)
    for t in range(trials):
        for variant, fn in run.items():
            ids, spans, gold = probe_rows(system, t, gap, variant.endswith("in window"))
            logp = np.asarray(fn(trainable, frozen, jnp.asarray(ids)))
            scores = [sum(logp[i, p - 1, ids[i, p]] for p in range(a, b)) for i, (a, b) in enumerate(spans)]
            hits[variant] += int(np.argmax(scores) == gold)
    return {k: v / trials for k, v in hits.items()} | {"trials": trials, "gap_segments": gap}
