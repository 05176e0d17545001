"""VardaGPT evaluation: generation with the memory, the perplexity table (backbone alone, memory
wiped every segment, memory carried) and the long-context fact probe (specs/gift-varda-regrad.md
§2). `python infer.py --checkpoint RUN` reports both (VardaSystem.predict, system.report)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gmem.models.generate import encode_text
from gmem.systems.varda.model import VardaModel


def _ce(logits, targets):
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean())


def perplexity_table(system, trainable, frozen, batches: int = 8) -> dict:
    """Held-out loss of three variants on the same rows and segments: the backbone alone (no
    memory path), the trained model with its memory wiped before every segment, and VardaGPT."""
    rows = system.data()[1]
    bs = system.cfg.data.batch_size
    rows = rows[: max(1, min(batches, len(rows) // bs)) * bs]
    seg = system.varda_cfg.segment_len
    alone = VardaModel(dataclasses.replace(system.varda_cfg, use_memory=False), system.module, system.model.hidden)

    @jax.jit  # weights as arguments, not closed-over constants (XLA would constant-fold them)
    def losses(trainable, frozen, ids):
        bv = system.variables(trainable["adapters"], frozen)
        x, y = ids[:, :-1], ids[:, 1:]
        b, t = x.shape
        full, _, _ = system.model(trainable["varda"], bv, system.model.init_memory(b), x)
        xs = x.reshape(b * (t // seg), seg)  # every segment alone, empty memory
        wiped, _, _ = system.model(trainable["varda"], bv, system.model.init_memory(xs.shape[0]), xs)
        base, _, _ = alone(trainable["varda"], bv, alone.init_memory(b), x)
        return [optax.softmax_cross_entropy_with_integer_labels(l.reshape(b, t, -1), y).mean()
                for l in (base, wiped, full)]

    out = np.mean([[float(v) for v in losses(trainable, frozen, jnp.asarray(rows[i:i + bs]))] for i in range(0, len(rows), bs)], 0)
    names = ("backbone alone", "memory layers, memory wiped every segment", "VardaGPT (memory carried)")
    return {n: (float(l), float(np.exp(l))) for n, l in zip(names, out)} | {"rows": len(rows)}


NAMES = ("Antonio", "Beatrice", "Claudio", "Desdemona", "Emilia", "Ferdinand", "Gonzalo", "Hermia",
         "Isabella", "Lysander")


def fact_probe(system, trainable, frozen, trials: int = 10, gap: int = 2) -> dict:
    """A fact in segment 0 ("the keeper of the key is NAME"), `gap` segments of held-out text,
    then the question at the end of the last segment; the model picks NAME among 10 by summed
    log-probability. 'in window' puts the fact inside the last segment (what the backbone can
    do when it sees the fact); chance is 10%."""
    tok, seg = system.tokenizer, system.varda_cfg.segment_len
    enc = lambda t: encode_text(tok, t, add_special_tokens=False)
    filler = np.asarray(system.data()[1]).reshape(-1)
    q = enc(" Question: who is the keeper of the key? Answer: the keeper of the key is")
    alone = VardaModel(dataclasses.replace(system.varda_cfg, use_memory=False), system.module, system.model.hidden)
    def logits(m, t, f, ids):
        return m(t["varda"], system.variables(t["adapters"], f), m.init_memory(len(NAMES)), ids)[0]
    run = {m: jax.jit(functools.partial(logits, m)) for m in (alone, system.model)}
    models = {"backbone alone": alone, "VardaGPT": system.model}
    hits = {"backbone alone": 0, "VardaGPT": 0, "backbone, fact in window": 0}
    for t in range(trials):
        name = NAMES[t % len(NAMES)]
        fact = enc(f" Remember: the keeper of the key is {name}.")
        text = list(filler[(t * 997) % (len(filler) - (gap + 2) * seg):][: (gap + 2) * seg])
        for variant in hits:
            rows, spans = [], []
            for cand in NAMES:
                c = enc(" " + cand)
                if variant.endswith("in window"):
                    last = text[: seg - len(fact) - len(q) - len(c)] + fact + q + c
                    head = text[seg: (gap + 1) * seg + seg]
                else:
                    last = text[: seg - len(q) - len(c)] + q + c
                    head = (fact + text[seg:])[:seg] + text[2 * seg: (gap + 1) * seg + seg]
                rows.append(head[: (gap + 1) * seg] + last)
                spans.append((len(rows[-1]) - len(c), len(rows[-1])))
            ids = jnp.asarray(rows, jnp.int32)
            logp = np.asarray(jax.nn.log_softmax(run[models.get(variant, alone)](trainable, frozen, ids), -1))
            ids = np.asarray(ids)
            scores = [sum(logp[i, p - 1, ids[i, p]] for p in range(a, b)) for i, (a, b) in enumerate(spans)]
            hits[variant] += int(np.argmax(scores) == NAMES.index(name))
    return {k: v / trials for k, v in hits.items()} | {"trials": trials, "gap_segments": gap}
