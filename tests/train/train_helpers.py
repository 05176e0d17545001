"""Shared pieces of the training tests: a tiny corpus and tiny configs; tests import it as `train_helpers` (tests/train is on sys.path)."""

from __future__ import annotations

import pathlib
import random

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

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


class ToySystem:
    """Linear regression with a frozen matrix W and a trainable offset a: loss = mean((x(W+a) - y)^2).
    Batch `poison` (and later) holds NaN inputs."""

    structure = {"system": "toy"}

    def __init__(self, batch_size=8, poison=None):
        self.batch_size, self.poison = batch_size, poison

    def abstract_base(self):
        return {"w": jax.ShapeDtypeStruct((4, 4), jnp.float32)}, {"w": P("embed", None)}

    def load_base(self):
        return {"w": np.eye(4, dtype=np.float32)}

    def abstract_trainable(self, base):
        return {"a": jax.ShapeDtypeStruct((4,), jnp.float32)}

    def trainable_specs(self, abstract, base_specs):
        return {"a": P(None)}

    def init_trainable(self, base, rng):
        return {"a": jnp.zeros((4,), jnp.float32)}

    def loss(self, trainable, frozen, batch, rng):
        pred = batch["x"] @ (frozen["w"] + trainable["a"])
        return jnp.mean((pred - batch["y"]) ** 2), {"tokens": jnp.float32(batch["x"].shape[0])}

    def batch_shapes(self):
        return {"x": jax.ShapeDtypeStruct((self.batch_size, 4), jnp.float32),
                "y": jax.ShapeDtypeStruct((self.batch_size, 4), jnp.float32)}

    def batch(self, index, host=slice(None)):
        r = np.random.default_rng(index)
        x = r.normal(size=(self.batch_size, 4)).astype(np.float32)
        if self.poison is not None and index >= self.poison:
            x[0, 0] = np.nan
        return {"x": x[host], "y": (x @ np.full((4, 4), 0.5, np.float32))[host]}

    def evaluate(self, trainable, frozen, eval_fn=None):
        return {"eval/loss": float(self.loss(trainable, frozen, self.batch(999), None)[0])}


def toy_cfg(tmp_path, *overrides):
    return to_object(load_config(None, [f"train.run_dir={tmp_path / 'run'}", "train.progress=false",
                                        "train.steps=6", "checkpoint.every=2", "optim.warmup_steps=0",
                                        "optim.lr=0.1", *overrides]))
