"""Comparisons of float32 results with tolerances scaled to the compared values.

Two float32 computations of the same function in another order (folded vs direct attention, a
merged vs a live adapter, gmem vs torch, one XLA/BLAS build vs another) differ by a few units
of float32 rounding *of the largest values involved*: about 1e-7 to 1e-6 times max|value|.
An absolute tolerance fixed in the test (atol 1e-5) is then either meaningless on small values
or flaky on large ones (gradients of magnitude 20 are off by 1.4e-5 on another x86 box).
So these helpers take a relative size `rel` and allow

    |actual - desired| <= rel * max|desired| + rel * |desired|        (per array, or per leaf)

rel = 1e-5 is the default for float32 reorderings (the rounding seen in gmem's tests is 1e-7 to
1.5e-6 of the max, so 10-100x of margin) and a 1% error still fails by a factor of ~500;
element-wise results (one or two roundings apart) use rel = 1e-6. Tests import it as
`from tolerance import ...` (tests/ is on sys.path through tests/conftest.py).
"""

from __future__ import annotations

import chex
import jax
import numpy as np


def scaled_atol(desired, rel: float) -> float:
    """rel * max|desired| (0 for an empty array)."""
    d = np.asarray(desired, np.float64)
    return float(rel * np.abs(d).max()) if d.size else 0.0


def assert_close_to_scale(actual, desired, rel: float = 1e-5, err_msg: str = "") -> None:
    """np.testing.assert_allclose with rtol = rel and atol = rel * max|desired|."""
    np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), rtol=rel,
                               atol=scaled_atol(desired, rel), err_msg=err_msg)


def assert_trees_close_to_scale(actual, desired, rel: float = 1e-5, rel_0d: float | None = None) -> None:
    """The same per leaf of two trees of the same structure (each leaf scaled by its own max);
    a failure names the leaf's path.

    rel_0d: if given, 0-d leaves are compared with rtol = rel_0d alone. A scalar gradient (of a
    gate, a LoRA scale) is a sum over every element of the computation, often far smaller than
    its summands, so its rounding is relative to them, not to itself."""
    chex.assert_trees_all_equal_structs(actual, desired)
    flat_a = jax.tree_util.tree_flatten_with_path(actual)[0]
    for (path, a), d in zip(flat_a, jax.tree_util.tree_leaves(desired)):
        msg = f"leaf {jax.tree_util.keystr(path)}"
        if rel_0d is not None and np.ndim(d) == 0:
            np.testing.assert_allclose(np.asarray(a), np.asarray(d), rtol=rel_0d, atol=0, err_msg=msg)
        else:
            assert_close_to_scale(a, d, rel, err_msg=msg)
