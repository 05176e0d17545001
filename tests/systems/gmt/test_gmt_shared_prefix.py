"""SharedPrefix: which packed batches may take the shared-prefix path, and where it splits.
(Exactness of the path itself: tests/models/test_llama_shared_prefix.py and test_gmt.py.)"""

import types

import numpy as np

from gmem.systems.gmt.shared_prefix import SharedPrefix


class _System(SharedPrefix):
    def __init__(self, prefix_ids, layers=(), num_layers=6):
        self.prefix_ids, self.specs, self._layers = list(prefix_ids), [], list(layers)
        self.model_config = types.SimpleNamespace(num_hidden_layers=num_layers)

    def trained_layers(self):
        return self._layers


def test_shared_len_needs_every_row_to_start_with_the_real_prefix():
    s = _System([5, 6, 7])
    ids = np.asarray([[5, 6, 7, 0, 9], [5, 6, 7, 8, 9]])
    att = np.asarray([[1, 1, 1, 0, 1], [1, 1, 1, 1, 1]])
    assert s.shared_len({"input_ids": ids, "attention_mask": att}) == 3
    bad = ids.copy()
    bad[1, 2] = 4                                          # one row differs inside the prefix
    assert s.shared_len({"input_ids": bad, "attention_mask": att}) == 0
    pad = att.copy()
    pad[0, 0] = 0                                          # a pad inside the prefix
    assert s.shared_len({"input_ids": ids, "attention_mask": pad}) == 0
    assert s.shared_len({"input_ids": ids[:, :3], "attention_mask": att[:, :3]}) == 0   # nothing after it
    assert _System([]).shared_len({"input_ids": ids, "attention_mask": att}) == 0


def test_prefix_split_is_the_first_trained_layer():
    assert _System([1], layers=(4, 2, 5)).prefix_split({}) == 2
    assert _System([1]).prefix_split({}) == 6              # nothing trained: every layer is shared
