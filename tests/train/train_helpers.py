"""Shared pieces of the training tests: a tiny corpus and tiny configs; tests import it as `train_helpers` (tests/train is on sys.path)."""

from __future__ import annotations

import pathlib
import random

from gmem.config import load_config, to_object

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_lm.yaml"


def write_corpus(path: pathlib.Path, lines: int = 300) -> pathlib.Path:
    """A small deterministic English-ish corpus (no asset download in unit tests)."""
    rng = random.Random(0)
    words = ("to be or not that is the question whether tis nobler in the mind to suffer "
             "the slings and arrows of outrageous fortune").split()
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(10)) for _ in range(lines)))
    return path


def tiny_cfg(tmp: pathlib.Path, *overrides: str):
    corpus = write_corpus(tmp / "corpus.txt")
    return to_object(load_config(TINY, [f"system.corpus={corpus}", f"train.run_dir={tmp / 'run'}",
                                        *overrides]))

