"""Shared prompt prefix: training and scoring batches whose rows all begin with the same tokens.

GMT's classification prompts start with the same Alpaca header + instruction (84 SmolLM2 tokens
of ~100). The system's encode() keeps those tokens at the front of each row ([prefix | pads |
rest]); the decoder layers below the first layer holding anything trained are then the same for
every row and compute the prefix once per batch (LlamaModel shared_prefix / prefix_split).

A mixin for LMSystem subclasses that have `prefix_ids` (the shared tokens, [] for none),
`module`, `specs`, `model_config`, and optionally `trained_layers()` (layers trained besides
the adapters, e.g. GMT's memory blocks).
"""

from __future__ import annotations

import numpy as np

from gmem.adapters.core import placements
from gmem.adapters.targets import layer_index


class SharedPrefix:
    def trained_layers(self) -> list[int]:
        """Decoder layers holding something trained other than adapters (none by default)."""
        return []

    def shared_len(self, batch) -> int:
        """The shared prefix length a packed (numpy) batch can use: len(prefix_ids) if every row
        begins with those real tokens, else 0 (plain forward)."""
        pre = np.asarray(self.prefix_ids, np.int64)
        n = len(pre)
        if not n or batch["input_ids"].shape[1] <= n:
            return 0
        ok = (np.asarray(batch["attention_mask"])[:, :n] == 1).all() and (
            np.asarray(batch["input_ids"])[:, :n] == pre[None]).all()
        return n if ok else 0

    def prefix_split(self, llm) -> int:
        """First layer holding anything trained (memory block or adapter): the layers below it
        are the same for every row. 0 if an adapter sits outside the decoder layers."""
        layers = list(self.trained_layers())
        for spec in self.specs:
            for paths in placements(spec, llm).values():
                for path in paths:
                    i = layer_index(path.replace("/layers_", ".").replace("/", ".") + ".")
                    if i is None:
                        return 0
                    layers.append(i)
        return min(layers, default=self.model_config.num_hidden_layers)

    def module_for(self, prefix: int, llm):
        """self.module, or its shared-prefix twin (same parameters) for batches packed with a
        shared prefix of `prefix` tokens."""
        if not prefix or not hasattr(self.module, "shared_prefix"):
            return self.module
        # One twin per prefix length: the split is fixed by the config, so it is found once
        # (not per evaluation batch) and generate's jit sees the same module each call.
        twins = self.__dict__.setdefault("_prefix_modules", {})
        if prefix not in twins:
            split = self.prefix_split(llm)
            twins[prefix] = (self.module.clone(shared_prefix=int(prefix), prefix_split=int(split), parent=None)
                             if split else self.module)
        return twins[prefix]
