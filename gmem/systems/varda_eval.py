"""VardaGPT evaluation: generation with the memory, the perplexity table (backbone alone, memory
wiped every segment, memory carried) and the long-context fact probe (specs/gift-varda-regrad.md
§2). `python -m gmem.systems.varda RUN_DIR` prints the table and the probe."""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gmem.errors import GmemError
from gmem.models.generate import encode_text, next_token
from gmem.systems.varda import VardaModel, VardaSystem


def generate_with_memory(system: VardaSystem, trainable, frozen, prompts_ids: list[list[int]],
                         max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                         eos_token_id: Optional[int] = None, rng=None) -> list[list[int]]:
    """New token ids per prompt. Every step runs the segments over prompt + tokens so far with a
    fresh memory, and reads the logits at each row's last token. Rows are right-padded to one
    width (a multiple of segment_len), so this compiles once: a token in segment t reads the
    memory written by segments < t and attends causally, so the pads after it change nothing
    it sees. There is no KV cache: memory writes between segments change what later segments
    read, so each step recomputes (cost: max_new_tokens forwards of the padded width)."""
    if not prompts_ids or any(len(p) == 0 for p in prompts_ids):
        raise GmemError("varda generate: every prompt needs at least one token")
    b = len(prompts_ids)
    seg = system.varda_cfg.segment_len
    width = -(-(max(map(len, prompts_ids)) + max_new_tokens) // seg) * seg
    ids = np.zeros((b, width), np.int32)
    for i, p in enumerate(prompts_ids):
        ids[i, :len(p)] = p
    length = np.asarray([len(p) for p in prompts_ids])
    done = np.zeros(b, bool)
    do_sample = temperature > 0
    rng = jax.random.PRNGKey(0) if rng is None else rng

    @jax.jit
    def step(trainable, frozen, ids_BT, last_B, key):
        logits, _, _ = system.forward(trainable, frozen, system.model.init_memory(b), ids_BT)
        last = jnp.take_along_axis(logits, last_B[:, None, None], axis=1)[:, 0]
        return next_token(last, key, jnp.float32(max(temperature, 1e-6)), top_k, 1.0,
                          do_sample=do_sample, use_top_k=do_sample and top_k > 0, use_top_p=False)

    out = [[] for _ in range(b)]
    for n in range(max_new_tokens):
        tok = np.asarray(step(trainable, frozen, jnp.asarray(ids), jnp.asarray(length - 1), jax.random.fold_in(rng, n)))
        for i in np.flatnonzero(~done):
            t = int(tok[i])
            if t == eos_token_id:          # the row ends; eos itself is not returned
                done[i] = True
                continue
            out[i].append(t)
            ids[i, length[i]] = t
            length[i] += 1
        if done.all():
            break
    return out


def _ce(logits, targets):
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean())


def perplexity_table(system: VardaSystem, trainable, frozen, batches: int = 8) -> dict:
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


def fact_probe(system: VardaSystem, trainable, frozen, trials: int = 10, gap: int = 2) -> dict:
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


def main(argv=None):
    """python -m gmem.systems.varda RUN_DIR (or -m gmem.systems.varda_eval): the perplexity table
    and the fact probe, markdown."""
    import sys
    from gmem.train.infer import restore_run
    argv = sys.argv[1:] if argv is None else argv
    cfg, system, plan, state, frozen, step = restore_run(argv[0])
    with plan.context():
        table = perplexity_table(system, state.trainable, frozen, cfg.eval.batches)
        rows = table.pop("rows")
        print(f"| model ({step} steps, {rows} held-out rows of {cfg.data.seq_len} tokens, "
              f"{system.varda_cfg.segment_len}-token segments) | loss | perplexity |\n|---|---|---|")
        for k, (loss, ppl) in table.items():
            print(f"| {k} | {loss:.3f} | {ppl:.2f} |")
        probe = fact_probe(system, state.trainable, frozen)
        print(f"\nfact probe ({probe.pop('trials')} trials, fact {probe.pop('gap_segments') + 1} segments "
              "before the question; chance 10%):")
        for k, v in probe.items():
            print(f"- {k}: {v:.0%}")


if __name__ == "__main__":
    main()
