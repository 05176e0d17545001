"""GPT-2 module: parameter tree, logical axis names, shapes, config errors, sharded forward."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmem.errors import GmemError
from gmem.models.gpt2 import GPT2Config, GPT2LMHeadModel
from gmem.train.sharding import RULES, make_mesh, mesh_shardings

CFG = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4)


def _abstract(cfg=CFG):
    return jax.eval_shape(GPT2LMHeadModel(cfg).init, jax.random.PRNGKey(0), jnp.ones((2, 5), jnp.int32))


def _flat(tree):
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in leaves}


def test_every_param_is_named_with_logical_axes():
    params = _flat(_abstract()["params"])
    specs = _flat(nn.get_partition_spec(_abstract())["params"])
    assert all(isinstance(v, nn.LogicallyPartitioned) for v in params.values())
    expect = {
        "transformer/wte/embedding": (("vocab", "embed"), (64, 32)),
        "transformer/wpe/embedding": ((None, "embed"), (32, 32)),
        "transformer/h_1/attn/c_attn/kernel": (("embed", "heads"), (32, 96)),
        "transformer/h_1/attn/c_attn/bias": (("heads",), (96,)),
        "transformer/h_1/attn/c_proj/kernel": (("heads", "embed"), (32, 32)),
        "transformer/h_1/mlp/c_fc/kernel": (("embed", "mlp"), (32, 128)),
        "transformer/h_1/mlp/c_proj/kernel": (("mlp", "embed"), (128, 32)),
        "transformer/h_0/ln_1/scale": (("embed",), (32,)),
        "transformer/ln_f/bias": (("embed",), (32,)),
    }
    for path, (names, shape) in expect.items():
        assert tuple(specs[path]) == names, path
        assert params[path].value.shape == shape, path
    assert "lm_head/kernel" not in params  # tied
    assert len(params) == 2 + 2 * 12 + 2
    for path, spec in specs.items():
        assert len(spec) == params[path].value.ndim, path
    # Every spec maps onto a (data, fsdp, tensor) mesh with the one rules table.
    mesh_shardings(nn.get_partition_spec(_abstract()), make_mesh(2, 2, 2))


def test_untied_head_has_its_own_kernel():
    specs = _flat(nn.get_partition_spec(_abstract(GPT2Config(**{**CFG.__dict__, "tie_word_embeddings": False}))))
    assert tuple(specs["params/lm_head/kernel"]) == ("embed", "vocab")


def test_output_shapes_and_cache():
    model = GPT2LMHeadModel(CFG)
    abstract = _abstract()
    logits, cache = jax.eval_shape(model.apply, abstract, jnp.ones((2, 5), jnp.int32))
    assert logits.shape == (2, 5, 64) and logits.dtype == jnp.float32 and cache is None
    cache = model.init_cache(2, 9)
    assert len(cache.keys) == 2 and cache.keys[0].shape == (2, 9, 4, 8)
    logits, new = jax.eval_shape(model.apply, abstract, jnp.ones((2, 5), jnp.int32), cache=cache)
    assert logits.shape == (2, 5, 64) and new.keys[1].shape == (2, 9, 4, 8)
    h = jax.eval_shape(lambda v, x: model.apply(v, inputs_embeds_BLD=x, return_hidden=True)[2],
                       abstract, jnp.ones((2, 5, 32)))
    assert h.shape == (2, 5, 32)


def test_config_errors_name_the_field():
    d = CFG.__dict__.copy()
    hf = {"vocab_size": 10, "n_embd": 8, "n_layer": 1, "n_head": 2}
    with pytest.raises(GmemError, match="activation_function"):
        GPT2Config.from_hf(dict(hf, activation_function="nope"))
    with pytest.raises(GmemError, match="n_head"):
        GPT2Config.from_hf({k: v for k, v in hf.items() if k != "n_head"})
    with pytest.raises(GmemError, match="dtype"):
        jax.eval_shape(GPT2LMHeadModel(GPT2Config(**dict(d, dtype="float7"))).init,
                       jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32))


def test_sharded_forward_matches_single_device():
    model = GPT2LMHeadModel(CFG)
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 64, size=(4, 6)))
    boxed = jax.jit(model.init)(jax.random.PRNGKey(0), ids)
    params = nn.meta.unbox(boxed)
    ref, _ = jax.jit(model.apply)(params, ids)
    mesh = make_mesh(2, 2, 2)
    sharded = jax.device_put(params, mesh_shardings(nn.get_partition_spec(boxed), mesh))
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        got, _ = jax.jit(model.apply)(sharded, ids)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5)
