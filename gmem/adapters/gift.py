"""GIFT: W' = W (I + phi psi), weight residuals generated from the frozen weights themselves.

One (phi, psi) pair per target type, shared by every layer where that type occurs
(share_projections=True: one pair, key "shared_projection", for every target). No LoRA-style
scaling. Trainable tree (shapes for a target type whose kernels are [D_in, D_out]):

    {"q_proj": {"phi": [D_in, r], "psi": [r, D_in],
                "phi_bias": [r] (in_projection_bias), "psi_bias": [D_in] (out_projection_bias)}}

phi is the original's in_projections[t].weight transposed (A^T), psi is
out_projections[t].weight transposed (B^T). The hypernet is the original's default
'simple_block': an elementwise activation on C = W phi (identity by default), no parameters.
`adapter_collection` broadcasts each pair to every module of its type; gradients from all
layers sum into the one shared pair.

The original's files (its state-dict layout, checkpoints and the settings stored with them):
gmem.adapters.gift_io.
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import erf

from gmem.errors import GmemError, collect_errors
from gmem.nn.projection import GIFT_ACT_NAMES

SHARED = "shared_projection"

def _sig(h):
    return 1.0 / (1.0 + np.exp(-h))


_C = math.sqrt(2.0 / math.pi)
# float64 numpy forms of the simple_block activations and their derivatives (merge/unmerge).
_NP_ACTS = {
    "identity": (lambda h: h, lambda h: np.ones_like(h)),
    "gelu": (lambda h: 0.5 * h * (1.0 + erf(h / math.sqrt(2.0))),
             lambda h: 0.5 * (1.0 + erf(h / math.sqrt(2.0))) + h * np.exp(-0.5 * h * h) / math.sqrt(2 * math.pi)),
    "gelu_tanh": (lambda h: 0.5 * h * (1.0 + np.tanh(_C * (h + 0.044715 * h ** 3))),
                  lambda h: 0.5 * (1.0 + np.tanh(_C * (h + 0.044715 * h ** 3)))
                  + 0.5 * h * (1.0 - np.tanh(_C * (h + 0.044715 * h ** 3)) ** 2)
                  * _C * (1.0 + 3 * 0.044715 * h * h)),
    "relu": (lambda h: np.maximum(h, 0.0), lambda h: (h > 0).astype(h.dtype)),
    "tanh": (np.tanh, lambda h: 1.0 - np.tanh(h) ** 2),
    "silu": (lambda h: h * _sig(h), lambda h: _sig(h) * (1.0 + h * (1.0 - _sig(h)))),
    "sigmoid": (_sig, lambda h: _sig(h) * (1.0 - _sig(h))),
    "standard_sigmoid": (_sig, lambda h: _sig(h) * (1.0 - _sig(h))),
    "hsigmoid": (lambda h: np.clip(h + 3.0, 0.0, 6.0) / 6.0,
                 lambda h: ((h > -3.0) & (h < 3.0)).astype(h.dtype) / 6.0),
}


def group_key(spec, target: str) -> str:
    return SHARED if spec.share_projections else target


def init_gift(spec, groups: dict[str, list[str]], shapes: dict[str, tuple[int, int]],
              rng: jax.Array) -> dict[str, dict]:
    """One pair per group key. phi (and its bias) ~ U(+-1/sqrt(D_in)) as torch nn.Linear
    initialises the original's in_projection; psi and its bias are zero (zero_init=True)."""
    d_in = _group_dims(spec, groups, shapes)
    out = {}
    keys = jax.random.split(rng, max(len(d_in), 1))
    for key, g in zip(keys, sorted(d_in)):
        n = d_in[g]
        bound = 1.0 / math.sqrt(n)
        k1, k2 = jax.random.split(key)
        e = {"phi": jax.random.uniform(k1, (n, spec.rank), jnp.float32, -bound, bound),
             "psi": jnp.zeros((spec.rank, n), jnp.float32)}
        if spec.in_projection_bias:
            e["phi_bias"] = jax.random.uniform(k2, (spec.rank,), jnp.float32, -bound, bound)
        if spec.out_projection_bias:
            e["psi_bias"] = jnp.zeros((n,), jnp.float32)
        out[g] = e
    return out


def _group_dims(spec, groups, shapes) -> dict[str, int]:
    """Each group's D_in; every module sharing a pair must have the same D_in."""
    dims: dict[str, dict[int, list[str]]] = {}
    for t, paths in groups.items():
        for p in paths:
            dims.setdefault(group_key(spec, t), {}).setdefault(shapes[p][0], []).append(p)
    errors = [f"{g}: modules differ in input width {sorted(d)} ({ {k: v[0] for k, v in d.items()} })"
              for g, d in dims.items() if len(d) > 1]
    collect_errors(errors, f"adapter {spec.name!r} (GIFT): shared projections need one D_in")
    return {g: next(iter(d)) for g, d in dims.items()}


def gift_entries(spec, tree: Mapping, groups: dict[str, list[str]]) -> dict[str, dict]:
    """Broadcast each shared pair to its modules: {module path: hook entry}."""
    act = GIFT_ACT_NAMES.index(spec.gift_act)
    out = {}
    for t, paths in groups.items():
        g = group_key(spec, t)
        if g not in tree:
            raise GmemError(f"adapter {spec.name!r} (GIFT): trainable tree has no pair {g!r}; "
                            f"it has {sorted(tree)}")
        e = tree[g]
        entry = {"gift_phi": e["phi"], "gift_psi": e["psi"]}
        if "phi_bias" in e:
            entry["gift_phi_bias"] = e["phi_bias"]
        if "psi_bias" in e:
            entry["gift_psi_bias"] = e["psi_bias"]
        if act != 0:
            entry["gift_act"] = jnp.asarray(act, jnp.int32)
        for p in paths:
            out[p] = entry
    return out


def gift_delta_kernel(kernel, entry: dict, act: str) -> np.ndarray:
    """dK = (dW)^T = psi^T act(K^T phi + a)^T + c 1^T, shape [D_in, D_out] (float64)."""
    k = np.asarray(kernel, np.float64)
    c = k.T @ np.asarray(entry["gift_phi"], np.float64)
    if "gift_phi_bias" in entry:
        c = c + np.asarray(entry["gift_phi_bias"], np.float64)
    d = np.asarray(entry["gift_psi"], np.float64).T @ _NP_ACTS[act][0](c).T
    if "gift_psi_bias" in entry:
        d = d + np.asarray(entry["gift_psi_bias"], np.float64)[:, None]
    return d


def gift_unmerge_kernel(merged, entry: dict, act: str, where: str) -> np.ndarray:
    """Invert K' = K + dK(K). Identity activation: dK = M K + v 1^T with M = psi^T phi^T,
    so K = (I + M)^{-1} (K' - v 1^T). Other activations: Newton on W phi (below)."""
    km = np.asarray(merged, np.float64)
    if act == "identity":
        phi = np.asarray(entry["gift_phi"], np.float64)
        psi = np.asarray(entry["gift_psi"], np.float64)
        v = np.zeros(km.shape[0])
        if "gift_phi_bias" in entry:
            v = v + psi.T @ np.asarray(entry["gift_phi_bias"], np.float64)
        if "gift_psi_bias" in entry:
            v = v + np.asarray(entry["gift_psi_bias"], np.float64)
        return np.linalg.solve(np.eye(km.shape[0]) + psi.T @ phi.T, km - v[:, None])
    # dK depends on K only through U = K^T phi [D_out, r]. From K = K' - psi^T act(U + a)^T
    # - c 1^T: U = B - act(U + a) M with M = psi phi [r, r], B = K'^T phi - 1 c^T phi: one
    # r-dimensional equation per output row, solved by Newton (batched r x r systems).
    f, df = _NP_ACTS[act]
    phi = np.asarray(entry["gift_phi"], np.float64)
    psi = np.asarray(entry["gift_psi"], np.float64)
    a = np.asarray(entry.get("gift_phi_bias", np.zeros(phi.shape[1])), np.float64)
    c = np.asarray(entry.get("gift_psi_bias", np.zeros(phi.shape[0])), np.float64)
    m = psi @ phi
    b = km.T @ phi - (c @ phi)[None, :]
    u = b.copy()
    eye = np.eye(m.shape[0])
    for _ in range(50):
        g = u + f(u + a) @ m - b                                  # [D_out, r]
        jac = eye[None] + m.T[None] * df(u + a)[:, None, :]       # d g_j / d u_i per row
        step = np.linalg.solve(jac, g[..., None])[..., 0]
        u = u - step
        if np.max(np.abs(step)) < 1e-13 * max(1.0, np.max(np.abs(u))):
            break
    k = km - psi.T @ f(u + a).T - c[:, None]
    err = np.max(np.abs(k + gift_delta_kernel(k, entry, act) - km))
    if not np.isfinite(err) or err > 1e-8 * max(1.0, np.max(np.abs(km))):
        raise GmemError(f"{where}: GIFT unmerge did not converge (act={act!r}, residual "
                        f"{err:.2e}); keep the base weights instead of unmerging")
    return k


# Why gmem builds no 'softmax' hypernet activation (core's activation check says so).
SOFTMAX_NOTE = ("the original's 'softmax' is nn.Softmax() without a dim, applied to the "
                "[1, D_out, r] tensor its hypernet passes: torch then takes dim 0, of size 1, so "
                "the block outputs the constant 1 and dW no longer depends on W; gmem does not "
                "build it")
