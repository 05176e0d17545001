"""A tiny random LLaMA shared by the adapter tests (distinct widths so shapes identify kernels)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from gmem.models.llama import LlamaConfig, LlamaForCausalLM


@pytest.fixture(scope="session")
def tiny_llama():
    cfg = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg)
    ids = (jnp.arange(14).reshape(2, 7) * 5) % 61
    params = nn.unbox(model.init(jax.random.PRNGKey(0), ids)["params"])
    return model, params, ids


@pytest.fixture(scope="session")
def randomise():
    return _randomise


def _randomise(tree, seed=1, scale=0.2):
    """Make every adapter leaf non-zero (fresh LoRA B / GIFT psi are zero)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
