"""One optimizer step: grads of the system's loss over the trainable tree only, with gradient
accumulation as a scan over micro-batches, clipping and the update, jitted with shardings."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from gmem.train.state import TrainState

# loss_fn(trainable, frozen, batch, rng) -> (scalar loss, dict of scalar aux metrics)
LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, dict]]


def _micro_batches(batch: dict, n: int) -> dict:
    """[B, ...] -> [n, B/n, ...] with micro-batch i = rows i, i+n, ... so every device keeps
    contributing its local rows to every micro-batch (no resharding)."""
    def split(x):
        b = x.shape[0]
        return x.reshape((b // n, n) + x.shape[1:]).swapaxes(0, 1)
    return jax.tree_util.tree_map(split, batch)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule | None = None, grad_accum: int = 1):
    """Returns step(state, frozen, batch) -> (new state, metrics dict of fp32 scalars)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, frozen, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        if grad_accum == 1:
            (loss, aux), grads = grad_fn(state.trainable, frozen, batch, rng)
        else:
            micro = _micro_batches(batch, grad_accum)

            def body(carry, xs):
                i, mb = xs
                (l, a), g = grad_fn(state.trainable, frozen, mb, jax.random.fold_in(rng, i))
                acc_l, acc_a, acc_g = carry
                return (acc_l + l, jax.tree_util.tree_map(jnp.add, acc_a, a),
                        jax.tree_util.tree_map(jnp.add, acc_g, g)), None

            zeros_g = jax.tree_util.tree_map(jnp.zeros_like, state.trainable)
            aux_shape = jax.eval_shape(lambda: grad_fn(state.trainable, frozen,
                                                       jax.tree_util.tree_map(lambda x: x[0], micro), rng)[0][1])
            zeros_a = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)
            (loss, aux, grads), _ = jax.lax.scan(
                body, (jnp.zeros((), jnp.float32), zeros_a, zeros_g),
                (jnp.arange(grad_accum), micro))
            loss = loss / grad_accum
            grads = jax.tree_util.tree_map(lambda g: g / grad_accum, grads)
            # Sums stay sums (e.g. token counts); everything else is averaged.
            aux = {k: (v if k.endswith("tokens") else v / grad_accum) for k, v in aux.items()}
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        metrics = {"loss": loss.astype(jnp.float32), "grad_norm": grad_norm.astype(jnp.float32),
                   **{k: jnp.asarray(v, jnp.float32) for k, v in aux.items()}}
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        new = TrainState(step=state.step + 1, trainable=trainable, opt_state=opt_state, rng=state.rng)
        return new, metrics

    return step


def jit_train_step(step_fn, state_sh, frozen_sh, batch_sh):
    """jax.jit with explicit in/out shardings; the old state's buffers are donated."""
    return jax.jit(step_fn, in_shardings=(state_sh, frozen_sh, batch_sh),
                   out_shardings=(state_sh, None), donate_argnums=(0,))
