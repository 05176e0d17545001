"""RoPE frequencies and rotation against transformers' own implementation."""

import chex
import numpy as np
import pytest
import torch

from gmem.nn.rope import apply_rope, inverse_frequencies, rope_cos_sin
from tolerance import assert_close_to_scale

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # noqa: E402


@pytest.mark.parametrize("rope", [
    {"rope_type": "default"},
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
])
def test_inverse_frequencies_match_transformers(rope):
    theta = 500000.0
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_parameters=dict(rope, rope_theta=theta))
    if rope["rope_type"] == "default":
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
        ref, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
    else:
        ref, _ = ROPE_INIT_FUNCTIONS[rope["rope_type"]](cfg, "cpu")
    ours = inverse_frequencies(16, theta, rope)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)


class RotationTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_rotation_matches_transformers_rotate_half(self):
        rng = np.random.RandomState(0)
        q = rng.randn(2, 7, 3, 16).astype(np.float32)
        pos = np.tile(np.arange(7), (2, 1))
        inv_freq = inverse_frequencies(16, 10000.0)
        cos, sin = self.variant(lambda p: rope_cos_sin(p, inv_freq))(pos)
        ours = np.asarray(self.variant(apply_rope)(q, cos, sin))
        tq = torch.tensor(q).transpose(1, 2)  # HF layout [B, H, L, D]
        ref, _ = apply_rotary_pos_emb(tq, tq, torch.tensor(np.asarray(cos)), torch.tensor(np.asarray(sin)))
        # Element-wise x cos + rotate_half(x) sin on values up to ~3: a few float32 roundings apart.
        assert_close_to_scale(ours, ref.transpose(1, 2).numpy(), rel=1e-6)
