"""Alternating timing rounds: the fair way to compare two libraries on a machine whose speed
drifts (other jobs, frequency scaling). No jax import, so a bench can still set XLA_FLAGS."""

from __future__ import annotations

import time


def alternate(fns: dict, n_rounds: int) -> dict:
    """{name: [seconds per round]}: one call of each fn per round after a warm-up call each,
    the order reversed every other round, so slow spells of a shared machine hit all alike."""
    for f in fns.values():
        f()  # warm-up (compiles)
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(n_rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return times
