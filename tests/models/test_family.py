"""gmem.models.family and gmem.models.hooks: one interface across families (sizes, a tiny
random config, a causal LM with decoder hooks), the same hook points in LLaMA and GPT-2."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmem.errors import GmemError
from gmem.models.family import causal_lm, family_of, sizes, tiny_config
from gmem.models.hooks import DecoderHook

SIZES = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
             num_attention_heads=2, max_position_embeddings=64)


class AddVector(nn.Module):
    """x + w * value: a hook block with a parameter (zero-initialised: identity at init)."""

    @nn.compact
    def __call__(self, x_BLD, value_BD):
        w = self.param("w", nn.initializers.zeros_init(), ())
        return x_BLD + w * value_BD[:, None, :]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("where", ["pre", "post_attn"])
def test_hooks_run_where_placed_and_only_when_fed(family, where):
    cfg = tiny_config(family, **SIZES)
    assert family_of(cfg) == family and sizes(cfg)["hidden_size"] == 16 and sizes(cfg)["num_hidden_layers"] == 3
    hook = DecoderHook(block=functools.partial(AddVector), layers=(1,), where=where, input="vec", name="adder")
    plain, hooked = causal_lm(cfg), causal_lm(cfg, (hook,))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 7)), jnp.int32)
    vec = jax.random.normal(jax.random.PRNGKey(3), (2, 16))   # not constant: LayerNorm removes a constant shift
    p_plain = plain.init(jax.random.PRNGKey(0), ids)["params"]
    p_hooked = hooked.init(jax.random.PRNGKey(0), ids, hook_inputs={"vec": vec})["params"]
    layers = "model" if family == "llama" else "transformer"
    layer1 = p_hooked[layers]["layers_1" if family == "llama" else "h_1"]
    assert "adder" in layer1 and "adder" not in p_hooked[layers]["layers_0" if family == "llama" else "h_0"]
    want = plain.apply({"params": p_plain}, ids)[0]
    # Gate 0, or no input given: exactly the plain model.
    np.testing.assert_array_equal(np.asarray(hooked.apply({"params": p_hooked}, ids, hook_inputs={"vec": vec})[0]),
                                  np.asarray(want))
    np.testing.assert_array_equal(np.asarray(hooked.apply({"params": p_hooked}, ids)[0]), np.asarray(want))
    layer1["adder"]["w"] = jnp.asarray(0.5)
    moved = hooked.apply({"params": p_hooked}, ids, hook_inputs={"vec": vec})[0]
    assert float(jnp.abs(moved - want).max()) > 1e-3


def test_hook_and_family_errors():
    cfg = tiny_config("llama", **SIZES)
    bad = DecoderHook(block=AddVector, layers=(5,), input="vec", name="adder")
    with pytest.raises(GmemError, match="layer 5 is outside 0..2"):
        causal_lm(cfg, (bad,)).init(jax.random.PRNGKey(0), jnp.zeros((1, 3), jnp.int32))
    with pytest.raises(GmemError, match="where='middle'"):
        DecoderHook(block=AddVector, layers=(0,), where="middle")
    with pytest.raises(GmemError, match="not a decoder"):
        causal_lm(tiny_config("bert", **SIZES))
    with pytest.raises(GmemError, match="model.family: 'rnn'"):
        tiny_config("rnn", **SIZES)
