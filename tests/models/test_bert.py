"""BERT/RoBERTa modules: parameter trees, logical axis names, shapes, config errors, sharding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmem.errors import GmemError
from gmem.models import bert
from gmem.train.sharding import RULES, make_mesh, mesh_shardings

CFG = bert.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=48, max_position_embeddings=16, num_labels=3)
IDS = jnp.ones((2, 5), jnp.int32)


def _flat(tree):
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in leaves}


def _abstract(module):
    return jax.eval_shape(module.init, jax.random.PRNGKey(0), IDS)


ENCODER = {
    "embeddings/word_embeddings/embedding": (("vocab", "embed"), (64, 32)),
    "embeddings/position_embeddings/embedding": ((None, "embed"), (16, 32)),
    "embeddings/token_type_embeddings/embedding": ((None, "embed"), (2, 32)),
    "embeddings/LayerNorm/scale": (("embed",), (32,)),
    "encoder/layer_1/attention/self/query/kernel": (("embed", "heads"), (32, 32)),
    "encoder/layer_1/attention/self/value/bias": (("heads",), (32,)),
    "encoder/layer_1/attention/output/dense/kernel": (("heads", "embed"), (32, 32)),
    "encoder/layer_1/attention/output/LayerNorm/bias": (("embed",), (32,)),
    "encoder/layer_1/intermediate/dense/kernel": (("embed", "mlp"), (32, 48)),
    "encoder/layer_1/output/dense/kernel": (("mlp", "embed"), (48, 32)),
    "encoder/layer_1/output/LayerNorm/scale": (("embed",), (32,)),
}


@pytest.mark.parametrize("module,prefix,head", [
    (bert.BertModel(CFG), "", {"pooler/dense/kernel": (("embed", "mlp"), (32, 32))}),
    (bert.BertForSequenceClassification(CFG), "bert/", {
        "bert/pooler/dense/kernel": (("embed", "mlp"), (32, 32)),
        "classifier/kernel": (("embed", None), (32, 3)), "classifier/bias": ((None,), (3,))}),
    (bert.RobertaForSequenceClassification(CFG), "roberta/", {
        "classifier/dense/kernel": (("embed", "mlp"), (32, 32)),
        "classifier/out_proj/kernel": (("mlp", None), (32, 3))}),
])
def test_every_param_is_named_with_logical_axes(module, prefix, head):
    abstract = _abstract(module)
    params = _flat(abstract["params"])
    specs = _flat(nn.get_partition_spec(abstract)["params"])
    assert all(isinstance(v, nn.LogicallyPartitioned) for v in params.values())
    expect = {prefix + k: v for k, v in ENCODER.items()} | head
    for path, (names, shape) in expect.items():
        assert tuple(specs[path]) == names, path
        assert params[path].value.shape == shape, path
    for path, spec in specs.items():
        assert len(spec) == params[path].value.ndim, path
    # 5 embedding params + 16 per layer (+ pooler 2, classifier 2 or 4).
    assert len(params) == 5 + 16 * 2 + {"": 2, "bert/": 4, "roberta/": 4}[prefix]
    assert (prefix + "pooler/dense/kernel" in params) == (prefix != "roberta/")
    mesh_shardings(nn.get_partition_spec(abstract), make_mesh(2, 2, 2))


def test_output_shapes_and_dtypes():
    hid, pooled = jax.eval_shape(bert.BertModel(CFG).apply, _abstract(bert.BertModel(CFG)), IDS)
    assert hid.shape == (2, 5, 32) and pooled.shape == (2, 32)
    bf = bert.BertConfig(**{**CFG.__dict__, "dtype": "bfloat16"})
    module = bert.BertForSequenceClassification(bf)
    logits = jax.eval_shape(module.apply, _abstract(module), IDS)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    hid, _ = jax.eval_shape(bert.BertModel(bf).apply, _abstract(bert.BertModel(bf)), IDS)
    assert hid.dtype == jnp.bfloat16
    # inputs_embeds instead of ids
    hid, _ = jax.eval_shape(lambda v, x: bert.BertModel(CFG).apply(v, inputs_embeds_BLD=x),
                            _abstract(bert.BertModel(CFG)), jnp.ones((2, 5, 32)))
    assert hid.shape == (2, 5, 32)


def test_config_errors_name_the_field():
    hf = {"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
          "intermediate_size": 16, "model_type": "bert"}
    with pytest.raises(GmemError, match="hidden_act"):
        bert.BertConfig.from_hf(dict(hf, hidden_act="nope"))
    with pytest.raises(GmemError, match="intermediate_size"):
        bert.BertConfig.from_hf({k: v for k, v in hf.items() if k != "intermediate_size"})
    with pytest.raises(GmemError, match="model_type"):
        bert.BertConfig.from_hf(dict(hf, model_type="gpt2"))
    with pytest.raises(GmemError, match="is_decoder"):
        bert.BertConfig.from_hf(dict(hf, is_decoder=True))
    cfg = bert.BertConfig.from_hf(dict(hf, model_type="roberta", id2label={"0": "neg", "1": "pos"}))
    assert cfg.pad_token_id == 1 and cfg.labels == ("neg", "pos") and cfg.num_labels == 2
    assert cfg.to_hf()["architectures"] == ["RobertaModel"]


def test_sharded_forward_matches_single_device():
    model = bert.BertForSequenceClassification(CFG)
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 64, size=(4, 6)))
    mask = jnp.asarray(np.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 6, [1] * 2 + [0] * 4]))
    boxed = jax.jit(model.init)(jax.random.PRNGKey(0), ids)
    params = nn.meta.unbox(boxed)
    ref = jax.jit(model.apply)(params, ids, mask)
    mesh = make_mesh(2, 2, 2)
    sharded = jax.device_put(params, mesh_shardings(nn.get_partition_spec(boxed), mesh))
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        got = jax.jit(model.apply)(sharded, ids, mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5)
