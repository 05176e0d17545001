"""Train-mode attention dropout against transformers with the same keep masks; the parity tests
import it as `dropout_helpers` (tests/parity is on sys.path).

gmem draws one keep mask per attention layer with jax.random.bernoulli (shape [B, K, G, L, S],
head h = k * G + g; see gmem.nn.attention.dot_product_attention). `gmem_masks` records them
during an un-jitted apply, and `torch_replaying` makes torch's dropout on the attention
probabilities ([B, H, L, S], rate p, training) use them in the same layer order, so the
train-mode forwards of both libraries can be compared exactly. Every other dropout of the
model must be off (rate 0), so the only masks drawn are the attention ones.
"""

import contextlib

import jax
import numpy as np
import torch


def gmem_masks(monkeypatch, fn):
    """(fn(), [keep mask [B, H, L, S] of each jax.random.bernoulli call, in call order])."""
    masks, real = [], jax.random.bernoulli

    def record(key, p=0.5, shape=None):
        keep = real(key, p, shape)
        a = np.asarray(keep)
        masks.append(a.reshape(a.shape[0], -1, *a.shape[-2:]))
        return keep

    with monkeypatch.context() as m:
        m.setattr(jax.random, "bernoulli", record)
        out = fn()
    return out, masks


@contextlib.contextmanager
def torch_replaying(monkeypatch, rate: float, masks: list):
    """torch.nn.functional.dropout on 4-D inputs at `rate` (training) applies masks[0], masks[1],
    ... instead of drawing; other calls (rate 0, eval) run unchanged. Checks every mask was used."""
    queue, real = list(masks), torch.nn.functional.dropout

    def replay(x, p=0.5, training=True, inplace=False):
        if training and p == rate and x.dim() == 4:
            keep = torch.tensor(queue.pop(0))
            assert keep.shape == x.shape, (keep.shape, x.shape)
            return torch.where(keep, x / (1.0 - p), torch.zeros_like(x))
        return real(x, p, training, inplace)

    with monkeypatch.context() as m:
        m.setattr(torch.nn.functional, "dropout", replay)
        yield
    assert not queue, f"{len(queue)} gmem masks were not used by torch"
