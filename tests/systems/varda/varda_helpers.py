"""The tiny VardaGPT config the varda tests share: configs/varda_tiny.yaml on a seeded corpus of
Hamlet's words written into the test's folder."""

import pathlib
import random

import jax
import jax.numpy as jnp

from gmem.config import load_config, to_object

ROOT = pathlib.Path(__file__).resolve().parents[3]


def tiny_varda_cfg(tmp, *overrides):
    rng = random.Random(0)
    words = "to be or not that is the question whether tis nobler in the mind".split()
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(120)))
    return to_object(load_config(ROOT / "configs" / "varda_tiny.yaml",
                                 [f"system.corpus={corpus}", f"train.run_dir={tmp / 'run'}", *overrides]))


def stepwise_greedy(system, trainable, frozen, prompt, n):
    """The reference for generate_with_memory: n greedy tokens, each from a forward over exactly
    the sequence so far, padded only to its own next multiple of segment_len."""
    seg = system.varda_cfg.segment_len
    fwd = jax.jit(system.forward)
    seq = list(prompt)
    for _ in range(n):
        width = -(-len(seq) // seg) * seg
        ids = jnp.asarray([seq + [0] * (width - len(seq))], jnp.int32)
        logits, _, _ = fwd(trainable, frozen, system.model.init_memory(1), ids)
        seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    return seq[len(prompt):]
