"""The tiny VardaGPT config the varda tests share: configs/varda_tiny.yaml on a seeded corpus of
Hamlet's words written into the test's folder."""

import pathlib
import random

from gmem.config import load_config, to_object

ROOT = pathlib.Path(__file__).resolve().parents[3]


def tiny_varda_cfg(tmp, *overrides):
    rng = random.Random(0)
    words = "to be or not that is the question whether tis nobler in the mind".split()
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(120)))
    return to_object(load_config(ROOT / "configs" / "varda_tiny.yaml",
                                 [f"system.corpus={corpus}", f"train.run_dir={tmp / 'run'}", *overrides]))
