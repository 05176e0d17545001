"""optax AdamW with warmup + decay, gradient clipping and a weight-decay mask.

The optimizer is built for the trainable tree only, so its state never holds a moment for a
frozen base weight. Gradient accumulation lives in the train step (a scan over micro-batches),
so one optimizer update is one step everywhere (schedules, checkpoints, logs).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from gmem.errors import GmemError

SCHEDULES = ("cosine", "linear", "constant")


def schedule(lr: float, total_steps: int, warmup_steps: int = 0, kind: str = "cosine",
             end_lr_ratio: float = 0.0, warmup_start_ratio: float = 0.0) -> optax.Schedule:
    """Linear warmup from lr*warmup_start_ratio to lr, then cosine/linear decay to
    lr*end_lr_ratio at total_steps."""
    if kind not in SCHEDULES:
        raise GmemError(f"optim.schedule: unknown value {kind!r}; use one of {SCHEDULES}")
    warmup_steps = max(0, min(warmup_steps, total_steps))
    decay_steps = max(1, total_steps - warmup_steps)
    end = lr * end_lr_ratio
    if kind == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=end_lr_ratio)
    elif kind == "linear":
        decay = optax.linear_schedule(lr, end, decay_steps)
    else:
        decay = optax.constant_schedule(lr)
    if warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(lr * warmup_start_ratio, lr, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def _path_names(path, names: Sequence[str]) -> bool:
    """Whether a leaf's key path contains one of `names` (case-insensitive)."""
    key = jax.tree_util.keystr(path).lower()
    return any(n.lower() in key for n in names)


def decay_mask(params, no_decay: Sequence[str] = ("bias", "norm", "scale"),
               decay: Sequence[str] = ()):
    """True where weight decay applies: matrices whose path names none of `no_decay`, and any
    leaf (whatever its rank) whose path names one of `decay`."""
    def keep(path, leaf):
        if decay and _path_names(path, decay):
            return True
        return leaf.ndim >= 2 and not _path_names(path, no_decay)
    return jax.tree_util.tree_map_with_path(keep, params)


def clip_by_global_norm_except(max_norm: float, exclude: Sequence[str]) -> optax.GradientTransformation:
    """optax.clip_by_global_norm over the leaves whose path names none of `exclude`; the excluded
    leaves pass unclipped and do not count in the norm. (GMT's scalar memory gates: their
    gradient grows with the memory read's output and would otherwise set the clip factor of
    every other parameter.)"""
    if not exclude:
        return optax.clip_by_global_norm(max_norm)
    def update(updates, state, params=None):
        del params
        mask = jax.tree_util.tree_map_with_path(lambda path, _: not _path_names(path, exclude), updates)
        norm = optax.global_norm(jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g), updates, mask))
        scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))
        return jax.tree.map(lambda g, m: (g * scale).astype(g.dtype) if m else g, updates, mask), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """From an OptimConfig: (optimizer, lr schedule)."""
    if cfg.grad_accum < 1:
        raise GmemError(f"optim.grad_accum: must be >= 1, got {cfg.grad_accum}")
    sched = schedule(cfg.lr, total_steps, cfg.warmup_steps, cfg.schedule, cfg.end_lr_ratio,
                     cfg.warmup_start_ratio)
    parts = []
    if cfg.clip_norm:
        parts.append(clip_by_global_norm_except(cfg.clip_norm, tuple(cfg.clip_exclude)))
    no_decay, decay = tuple(cfg.no_decay), tuple(cfg.decay)
    parts.append(optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             mask=lambda p: decay_mask(p, no_decay, decay)))
    return optax.chain(*parts), sched
