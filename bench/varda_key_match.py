#!/usr/bin/env python
"""Which key of VardaGPT's next_token read finds the probe's fact: for each `key_ngram`, the
share of the name's tokens (and of first tokens) whose top-1 memory result, among every token
of the earlier segments, is the right next token. At init (identity key map), on the probe's
gold rows (gmem.systems.varda.eval.probe_rows). The figures behind the README's
"Which key finds it" line:

    python bench/varda_key_match.py [--config configs/varda.yaml] [--trials 20] [--gap 2]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/varda.yaml")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--gap", type=int, default=2)
    ap.add_argument("--ngrams", default="0,1,2,3,4")
    a = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from gmem.config import load_config, to_object
    from gmem.systems.varda.eval import probe_rows
    from gmem.systems.varda.next_token import NextTokenRead
    from gmem.systems.varda.system import VardaSystem

    cfg = to_object(load_config(a.config, ["system.read=next_token", "system.metric=ip",
                                           "system.key_proj=false", "train.run_dir=/tmp/varda_key_match"]))
    system = VardaSystem(cfg)
    frozen = system.load_base()
    trainable = system.init_trainable(frozen, jax.random.PRNGKey(0))
    bv = system.backbone_variables(trainable, frozen)
    seg, hidden = system.varda_cfg.segment_len, system.model.hidden
    params = {"params": trainable["varda"]}
    print(f"| key_ngram | name tokens found (top-1) | first tokens found | ({a.trials} trials, fact {a.gap + 1} segments back) |")
    print("|---|---|---|---|")
    for n in (int(v) for v in a.ngrams.split(",")):
        read = NextTokenRead(hidden, False, n)

        @jax.jit
        def keys(ids, read=read):
            x = system.module.apply(bv, ids, method="embed")
            h = system.module.apply(bv, inputs_embeds_BLD=x, return_hidden=True)[2]
            return read.apply(params, h, x, method="keys")

        hit = tot = first = 0
        for trial in range(a.trials):
            ids, spans, gold = probe_rows(system, trial, a.gap, False)
            row, (lo, hi) = ids[gold], spans[gold]
            k = np.asarray(keys(jnp.asarray(row.reshape(-1, seg)))).reshape(len(row), -1)
            stored = (a.gap + 1) * seg              # what the segments before the question's store
            past, nxt = k[:stored], row[1:stored + 1]
            for p in range(lo - 1, hi - 1):        # the token before each name token
                ok = nxt[int(np.argmax(past @ k[p]))] == row[p + 1]
                hit, tot = hit + ok, tot + 1
                first += ok if p == lo - 1 else 0
        print(f"| {n} | {hit / tot:.0%} | {first / a.trials:.0%} | |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
