"""The System contract: everything gmem.train needs from a system, and nothing more.

gmem.train (the loop, checkpoints, inference, offline passes) knows no system by name: it
builds one with `build_system(cfg)` (the class registered for `cfg.system.name`, see
gmem.config.register_system) and talks to it only through the methods below. A system is one
package under gmem/systems/ that defines a class satisfying `System`, with a typed `Options`
dataclass for its `system:` config section.

Trees are nested dicts of arrays. "Frozen" is the base the system never trains (the LLM,
constants); "trainable" is what the optimizer updates (adapters, heads, memory layers). The two
are a partition of the model's parameters: gradients are taken with respect to trainable only.
Shapes below use B for the global batch size (data.batch_size), L for data.seq_len.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Protocol, runtime_checkable

import chex
import jax

from gmem import config as gconfig

Tree = Any                   # nested dict of arrays (or ShapeDtypeStructs / PartitionSpecs)
Batch = Mapping[str, Any]    # {name: array [B, ...]}


@dataclasses.dataclass
class OfflinePass:
    """Work a system does outside the training loop (a gradient bank, a retrieval index, an
    augmented dataset), run by gmem.train.passes.run_pass with progress and resume.

    total: number of work items; chunk: items per commit; unit: what an item is ("passages").
    run_chunk(start, stop, out_dir, trainable, frozen) -> metrics dict: process items
    [start, stop) and write their outputs under out_dir so that a chunk is either wholly
    written or not at all (write to a temporary name, then rename): after a kill the runner
    redoes the chunk it had not committed, so no item is lost or written twice.
    finish(out_dir) (optional) runs once when every chunk is done (an index footer, a manifest).
    """

    name: str
    total: int
    run_chunk: Callable[..., dict]
    chunk: int = 64
    unit: str = "items"
    finish: Optional[Callable[[Any], dict]] = None


@runtime_checkable
class System(Protocol):
    """What a system provides. `name` and `Options` are class attributes (register_system sets
    `name`); `cfg` is the resolved gmem.config.Config it was built from."""

    name: str
    cfg: Any

    @property
    def structure(self) -> dict:
        """JSON-able structural choices (family, sizes, adapter specs, memory layers, ...):
        saved with every checkpoint and compared on restore, so a checkpoint never loads into
        a differently shaped system."""

    def abstract_base(self) -> tuple[Tree, Tree]:
        """(frozen tree as jax.ShapeDtypeStructs, logical PartitionSpec tree of the same
        structure). Allocates nothing: the plan shards and checks shapes from this."""

    def load_base(self) -> Tree:
        """The frozen tree (host arrays), structure and dtypes as abstract_base()."""

    def abstract_trainable(self, abstract_base: Tree) -> Tree:
        """ShapeDtypeStructs of init_trainable's result (use jax.eval_shape)."""

    def trainable_specs(self, abstract_trainable: Tree, base_specs: Tree) -> Tree:
        """Logical PartitionSpecs of the trainable tree (gmem.adapters.sharding for adapters)."""

    def init_trainable(self, base: Tree, rng: jax.Array) -> Tree:
        """A fresh trainable tree (float32), from the frozen base and a PRNG key."""

    def loss(self, trainable: Tree, frozen: Tree, batch: Batch, rng: Optional[jax.Array]
             ) -> tuple[jax.Array, dict]:
        """(scalar loss, {name: scalar aux metric}); pure and jit-able. rng None means
        evaluation: deterministic, no dropout. Aux keys ending in "tokens" are counts, summed
        (not averaged) over gradient-accumulation micro-batches."""

    def batch_shapes(self) -> dict[str, jax.ShapeDtypeStruct]:
        """{name: ShapeDtypeStruct} of one global batch; every leading dim is B."""

    def batch(self, index: int, host: slice = slice(None)) -> dict:
        """Host-local rows `host` of global batch `index` (numpy), shapes as batch_shapes()
        with the leading dim cut to the host's rows. Deterministic in (index, data.seed), so
        a resumed run sees the batches an uninterrupted one would."""

    def evaluate(self, trainable: Tree, frozen: Tree, eval_fn: Optional[Callable] = None) -> dict:
        """Held-out metrics {"eval/...": float} (train.py every eval.every steps, infer.py).
        eval_fn(trainable, frozen, batch) -> loss, when given, is the loop's jitted eval loss."""

    def predict(self, trainable: Tree, frozen: Tree, prompts: Optional[list] = None
                ) -> tuple[list[dict], dict]:
        """infer.py: (prediction rows {"prompt": ..., "generation": ..., ...}, metrics)."""


def build_system(cfg, **kwargs) -> System:
    """The system `cfg.system.name` names, built from cfg (a gmem.config.Config)."""
    return gconfig.system_class(cfg.system.name)(cfg, **kwargs)


def throughput_unit(system) -> str:
    """The aux metric a step counts for its rate (tokens; GMT's stage 1 counts triples)."""
    return getattr(system, "throughput_unit", "tokens")


def offline_passes(system) -> dict[str, OfflinePass]:
    """The system's offline passes by name ({} when it has none)."""
    fn = getattr(system, "offline_passes", None)
    return dict(fn()) if fn is not None else {}


def check_batch(system, batch: Mapping[str, Any]) -> None:
    """Trace-time check that a batch has system.batch_shapes()'s keys and ranks (sizes may
    differ: a host's or a micro-batch's share of rows; GMT cuts each batch to its longest row)."""
    want = system.batch_shapes()
    chex.assert_equal(sorted(batch), sorted(want))
    for k, s in want.items():
        chex.assert_rank(batch[k], len(s.shape))


def checked_loss(system) -> Callable:
    """system.loss with check_batch in front: shapes are checked once per trace, at no cost
    per step."""
    def loss(trainable, frozen, batch, rng):
        check_batch(system, batch)
        return system.loss(trainable, frozen, batch, rng)
    return loss
