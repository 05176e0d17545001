#!/usr/bin/env python
"""GOFA's zero-shot table: the same held-out questions (topic and yes/no link, gofa.evaluation)
for five rows, written to bench/RESULTS.md (section gofa_zero_shot):

  (a) SmolLM2 with the question node's own text in the prompt        (system.baseline=text)
  (b) SmolLM2 with every node and edge text of the subgraph           (system.baseline=neighbours)
  (c) the compressor alone: GOFA with gates at 0, no decoder LoRA     (fresh GNN over --compressor)
  (d) GOFA after graph pretraining                                    (--pretrain run)
  (e) GOFA after instruction tuning                                   (--instruct run)

    python bench/gofa_zero_shot.py --compressor runs/gofa_compressor --pretrain runs/gofa_pretrain \
        --instruct runs/gofa_instruct [--topic 50] [--link 50] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from gmem import config as gconfig  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def fresh(overrides):
    """A gofa system from configs/gofa_pretrain.yaml and its initial trainables (gates 0)."""
    from gmem.systems.gofa import GOFASystem
    cfg = gconfig.to_object(gconfig.load_config(os.path.join(CONFIGS, "gofa_pretrain.yaml"), overrides))
    s = GOFASystem(cfg)
    frozen = s.load_base()
    return s, s.init_trainable(frozen, jax.random.PRNGKey(0)), frozen


def restored(run, overrides):
    from gmem.train.infer import restore_run
    from gmem.train.sharding import make_mesh
    _, s, _, state, frozen, step = restore_run(run, overrides, mesh=make_mesh(devices=jax.devices()[:1]))
    return s, state.trainable, frozen


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compressor", required=True)
    ap.add_argument("--pretrain", required=True)
    ap.add_argument("--instruct", required=True)
    ap.add_argument("--topic", type=int, default=50)
    ap.add_argument("--link", type=int, default=50)
    ap.add_argument("--rows", default="abcde")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    ev = [f"system.eval_topic={a.topic}", f"system.eval_link={a.link}"]
    comp = [f"system.compressor_ckpt={a.compressor}"]
    plans = {"a": ("SmolLM2, the node's own text in the prompt", lambda: fresh(comp + ev + ["system.baseline=text"])),
             "b": ("SmolLM2, node + subgraph texts in the prompt", lambda: fresh(comp + ev + ["system.baseline=neighbours"])),
             "c": ("compressor alone (GOFA, gates at 0)", lambda: fresh(comp + ev)),
             "d": ("GOFA after graph pretraining", lambda: restored(a.pretrain, ev)),
             "e": ("GOFA after instruction tuning", lambda: restored(a.instruct, ev))}
    rows, raw = [], {}
    for key in a.rows:
        name, build = plans[key]
        s, t, f = build()
        t0 = time.perf_counter()
        m = s.evaluate(t, f)
        secs = time.perf_counter() - t0
        raw[key] = m
        print(key, name, json.dumps(m), f"{secs:.0f}s", flush=True)
        rows.append([f"({key}) {name}", f"{100 * m.get('eval/topic_accuracy', 0):.1f}",
                     f"{100 * m.get('eval/link_accuracy', 0):.1f}", f"{100 * m.get('eval/accuracy', 0):.1f}",
                     f"{m.get('eval/decoder_tokens_per_question', 0):.0f}",
                     f"{m.get('eval/encoder_tokens_per_question', 0):.0f}", f"{secs:.0f}"])
    if a.no_write:
        return 0
    from bench.results import table, write_section
    n = int(raw[a.rows[0]].get("eval/questions", 0))
    body = ("## GOFA zero-shot on held-out Wikipedia nodes (`python bench/gofa_zero_shot.py`)\n\n"
            f"SmolLM2-135M-Instruct, fp32, greedy, {n} questions (topic among 5 candidates with the true one, "
            "scored by TAGLAS's normalised exact match; yes/no link between two test-split articles with "
            "their mention edges hidden, half linked, scored by the yes/no rule), the same for every row. "
            "Decoder tokens: what the answering pass reads (GOFA: K memory slots + question + chat template; "
            "baselines: the whole prompt); encoder tokens: the texts GOFA's encoder compresses per question.\n\n"
            + table(["row", "topic %", "link %", "all %", "decoder tokens / question",
                     "encoder tokens / question", "eval s"], rows))
    write_section("gofa_zero_shot", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
