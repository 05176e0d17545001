"""Decoder hook points: blocks a system places inside chosen decoder layers.

A hook is how a system adds a block to a decoder without forking the model: GMT's memory
cross-attention runs after self-attention in the top layers; GOFA's GNN runs before each of the
last blocks and mixes memory-token states across graph nodes. The decoder builds the block
inside layer i (its parameters live at model/layers_i/<name>) and calls it with the hidden
states and one entry of the call's `hook_inputs` mapping; a hook whose input is absent from the
call does not run, so the same module serves passes with and without it (GOFA's compressor and
decoder, GMT's zero-memory baseline).

    hook = DecoderHook(block=functools.partial(MyBlock, config), layers=(22, 23),
                       where="post_attn", input="memory", name="memory_attn")
    model = LlamaForCausalLM(config, hooks=(hook,))
    logits, _ = model.apply(variables, ids_BL, hook_inputs={"memory": mem_BMD})

block(name=...)(x_BLD, hook_inputs[input]) -> x_BLD (same shape); the block owns its residual.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

from gmem.errors import GmemError

PLACES = ("pre", "post_attn")   # before the layer's input norm | after self-attention, before the MLP


@dataclasses.dataclass(frozen=True)
class DecoderHook:
    """block: module factory (e.g. functools.partial of a linen Module class), called as
    block(name=name); layers: 0-based decoder layer indices; where: one of PLACES; input: the
    `hook_inputs` key that feeds it; name: its parameter scope inside the layer."""

    block: Any
    layers: tuple
    where: str = "post_attn"
    input: str = "memory"
    name: str = "memory_attn"

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        if self.where not in PLACES:
            raise GmemError(f"decoder hook {self.name!r}: where={self.where!r} is not one of {PLACES}")


def check_hooks(hooks: Sequence[DecoderHook], num_layers: int) -> None:
    """Every layer index in range, and no two hooks with one name in one layer."""
    seen = set()
    for h in hooks:
        for i in h.layers:
            if not 0 <= i < num_layers:
                raise GmemError(f"decoder hook {h.name!r}: layer {i} is outside 0..{num_layers - 1}")
            if (i, h.name) in seen:
                raise GmemError(f"decoder hook {h.name!r}: two hooks of that name in layer {i}")
            seen.add((i, h.name))


def layer_hooks(hooks: Sequence[DecoderHook], i: int) -> tuple:
    """The hooks that sit in layer i, in the order given."""
    return tuple(h for h in hooks if i in h.layers)


def run_hooks(hooks: Sequence[DecoderHook], where: str, x_BLD, hook_inputs: Optional[Mapping[str, Any]]):
    """Apply this layer's hooks at `where` (inside the layer's compact __call__) to x_BLD."""
    if not hook_inputs:
        return x_BLD
    for h in hooks:
        if h.where == where and hook_inputs.get(h.input) is not None:
            x_BLD = h.block(name=h.name)(x_BLD, hook_inputs[h.input])
    return x_BLD
