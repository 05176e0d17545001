"""Entry-point shape checks (gmem.nn.checks and the chex lines at the models' __call__): a wrong
rank or a mismatched batch fails while tracing, with nothing computed; the checks read shapes
only (they pass on abstract ShapeDtypeStructs) and add nothing to the traced program."""

import chex
import jax
import jax.numpy as jnp
import pytest

from gmem.models.bert import BertConfig, BertModel
from gmem.models.gpt2 import GPT2Config, GPT2LMHeadModel
from gmem.models.llama import LlamaConfig, LlamaForCausalLM
from gmem.models.vit import ViTConfig, ViTModel
from gmem.nn.checks import check_token_inputs

LLAMA = LlamaForCausalLM(LlamaConfig(vocab_size=61, hidden_size=16, intermediate_size=32,
                                     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                     max_position_embeddings=32))
GPT2 = GPT2LMHeadModel(GPT2Config(vocab_size=61, n_positions=32, n_embd=16, n_layer=1, n_head=2))
BERT = BertModel(BertConfig(vocab_size=61, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=32))
VIT = ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         image_size=(8, 8), patch_size=(4, 4), num_channels=3))
S = jax.ShapeDtypeStruct
IDS = S((2, 5), jnp.int32)


def _init_shapes(model, *args, **kw):
    return jax.eval_shape(lambda *a, **k: model.init(jax.random.key(0), *a, **k), *args, **kw)


@pytest.mark.parametrize("model", [LLAMA, GPT2, BERT], ids=["llama", "gpt2", "bert"])
def test_token_models_check_inputs_at_trace_time(model):
    _init_shapes(model, IDS, S((2, 5), jnp.int32))                  # abstract inputs: shapes only
    with pytest.raises(AssertionError, match="rank"):
        _init_shapes(model, S((5,), jnp.int32))                       # ids without a batch axis
    with pytest.raises(AssertionError, match="shape"):
        _init_shapes(model, IDS, S((2, 4), jnp.int32))                # mask of another length
    with pytest.raises(AssertionError, match="type"):
        _init_shapes(model, S((2, 5), jnp.float32))                   # float ids
    with pytest.raises(AssertionError, match="rank"):
        _init_shapes(model, inputs_embeds_BLD=S((2, 16), jnp.float32))


def test_kv_cache_batch_is_checked():
    cache = LLAMA.init_cache(3, 8)
    with pytest.raises(AssertionError, match="dimension"):
        _init_shapes(LLAMA, IDS, cache=cache)


def test_vit_checks_rank():
    _init_shapes(VIT, S((1, 3, 8, 8), jnp.float32))
    with pytest.raises(AssertionError, match="rank"):
        _init_shapes(VIT, S((3, 8, 8), jnp.float32))


def test_checks_add_nothing_to_the_program():
    variables = jax.jit(LLAMA.init)(jax.random.key(0), jnp.ones((2, 5), jnp.int32))
    fwd = lambda v, ids: LLAMA.apply(v, ids)[0]
    ids = jnp.ones((2, 5), jnp.int32)
    with_checks = str(jax.make_jaxpr(fwd)(variables, ids))
    chex.disable_asserts()
    try:
        without = str(jax.make_jaxpr(fwd)(variables, ids))
        check_token_inputs(S((5,), jnp.float32))                      # disabled: no error
    finally:
        chex.enable_asserts()
    assert with_checks == without
    with pytest.raises(AssertionError):
        check_token_inputs(S((5,), jnp.float32))


def test_helper_needs_ids_or_embeddings():
    with pytest.raises(AssertionError, match="neither"):
        check_token_inputs(None, None, S((2, 5), jnp.int32))
    check_token_inputs(None, S((2, 5, 8), jnp.float32), S((2, 5), jnp.int32), None)
