"""Logical sharding axes of adapter trees: an adapter is sharded like the projection it sits on."""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import PartitionSpec as P


def adapter_logical_specs(abstract_trainable, base_specs) -> Any:
    """Logical specs for an adapter tree ({set name: tree mirroring module paths}): LoRA A
    [D_in, r] takes its kernel's input axis, B [r, D_out] its output axis, so a LoRA pair is
    sharded like the projection it sits on; every other leaf is replicated."""
    def key(k):
        return getattr(k, "key", getattr(k, "idx", k))

    def spec(path, leaf):
        keys = [key(k) for k in path]
        name = keys[-1]
        if name in ("lora_A", "lora_B") and len(keys) >= 3:
            node = base_specs
            for k in keys[1:-1] + ["kernel"]:
                node = node.get(k) if isinstance(node, dict) else None
                if node is None:
                    break
            if isinstance(node, P) and len(node) == 2:
                return P(node[0], None) if name == "lora_A" else P(None, node[1])
        return P(*([None] * len(leaf.shape)))
    return jax.tree_util.tree_map_with_path(spec, abstract_trainable)
