"""The training state: what changes every step and what a checkpoint saves.

Frozen base weights are not part of it: they are an argument of the step, loaded from their
source, never differentiated and never saved.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """step: int32 []; trainable: adapter/trainable tree (fp32 master copy); opt_state: optax
    state over `trainable` only; rng: uint32 [2] base key (step keys are fold_in(rng, step))."""

    step: jax.Array
    trainable: Any
    opt_state: Any
    rng: jax.Array


def create_state(trainable, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                      opt_state=optimizer.init(trainable),
                      rng=jax.random.PRNGKey(seed))


def state_shardings(trainable_shardings, optimizer: optax.GradientTransformation,
                    abstract_trainable, replicated) -> TrainState:
    """Shardings of a TrainState: optimizer moments shaped like a parameter follow it
    (optax states mirror the param tree); scalars (counts) are replicated."""
    opt_abstract = jax.eval_shape(optimizer.init, abstract_trainable)
    # Match every opt-state subtree that has the trainable tree's structure.
    param_def = jax.tree_util.tree_structure(abstract_trainable)

    def walk(node):
        if jax.tree_util.tree_structure(node) == param_def:
            return trainable_shardings
        if isinstance(node, tuple) and not hasattr(node, "_fields"):
            return tuple(walk(n) for n in node)
        if hasattr(node, "_fields"):  # NamedTuple states (ScaleByAdamState, ...)
            return type(node)(*[walk(getattr(node, f)) for f in node._fields])
        return jax.tree_util.tree_map(lambda _: replicated, node)

    opt_sh = walk(opt_abstract)
    return TrainState(step=replicated, trainable=trainable_shardings, opt_state=opt_sh, rng=replicated)


def abstract_state(abstract_trainable, optimizer: optax.GradientTransformation) -> TrainState:
    """ShapeDtypeStructs of a TrainState, with no memory allocated."""
    return jax.eval_shape(lambda t: create_state(t, optimizer, 0), abstract_trainable)
