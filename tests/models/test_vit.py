"""ViT modules: parameter trees, logical axis names, shapes, patch embedding = conv."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmem.errors import GmemError
from gmem.models import vit
from gmem.train.sharding import make_mesh, mesh_shardings

CFG = vit.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                    image_size=(16, 8), patch_size=(4, 2), num_channels=3, num_labels=5)
PX = jnp.zeros((2, 3, 16, 8))


def _flat(tree):
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in leaves}


@pytest.mark.parametrize("module,prefix", [(vit.ViTModel(CFG), ""),
                                           (vit.ViTForImageClassification(CFG), "vit/")])
def test_every_param_is_named_with_logical_axes(module, prefix):
    abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), PX)
    params = _flat(abstract["params"])
    specs = _flat(nn.get_partition_spec(abstract)["params"])
    assert all(isinstance(v, nn.LogicallyPartitioned) for v in params.values())
    n = CFG.num_patches + 1  # 4 x 4 patches + CLS
    expect = {
        "embeddings/cls_token": ((None, None, "embed"), (1, 1, 32)),
        "embeddings/position_embeddings": ((None, None, "embed"), (1, n, 32)),
        "embeddings/patch_embeddings/projection/kernel": ((None, None, None, "embed"), (2, 4, 3, 32)),
        "embeddings/patch_embeddings/projection/bias": (("embed",), (32,)),
        "layers_1/layernorm_before/scale": (("embed",), (32,)),
        "layers_1/attention/q_proj/kernel": (("embed", "heads"), (32, 32)),
        "layers_1/attention/o_proj/kernel": (("heads", "embed"), (32, 32)),
        "layers_1/mlp/fc1/kernel": (("embed", "mlp"), (32, 48)),
        "layers_1/mlp/fc2/bias": (("embed",), (32,)),
        "layernorm/bias": (("embed",), (32,)),
    }
    expect = {prefix + k: v for k, v in expect.items()}
    if prefix:
        expect["classifier/kernel"] = (("embed", None), (32, 5))
    else:
        expect["pooler/dense/kernel"] = (("embed", "mlp"), (32, 32))
    for path, (names, shape) in expect.items():
        assert tuple(specs[path]) == names, path
        assert params[path].value.shape == shape, path
    assert len(params) == 4 + 16 * 2 + 2 + 2
    mesh_shardings(nn.get_partition_spec(abstract), make_mesh(2, 2, 2))


def test_output_shapes():
    m = vit.ViTModel(CFG)
    v = jax.eval_shape(m.init, jax.random.PRNGKey(0), PX)
    hid, pooled = jax.eval_shape(m.apply, v, PX)
    assert hid.shape == (2, 17, 32) and pooled.shape == (2, 32)
    c = vit.ViTForImageClassification(CFG)
    logits = jax.eval_shape(c.apply, jax.eval_shape(c.init, jax.random.PRNGKey(0), PX), PX)
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32
    assert vit.example_inputs(CFG)[0].shape == (1, 3, 16, 8)


def test_patch_embedding_equals_strided_conv():
    """The patch matmul is HF's Conv2d(kernel = stride = patch), non-square patches included."""
    rng = np.random.RandomState(0)
    px = rng.randn(2, 3, 16, 8).astype(np.float32)
    w = rng.randn(32, 3, 4, 2).astype(np.float32)       # torch Conv2d weight [D, C, ph, pw]
    b = rng.randn(32).astype(np.float32)
    params = {"params": {"kernel": jnp.asarray(w.T), "bias": jnp.asarray(b)}}  # "T" rule
    got = vit.ViTPatchProjection(CFG).apply(params, jnp.asarray(px))
    ref = jax.lax.conv_general_dilated(jnp.asarray(px), jnp.asarray(w), (4, 2), "VALID",
                                       dimension_numbers=("NCHW", "OIHW", "NCHW"))
    ref = np.asarray(ref).reshape(2, 32, -1).transpose(0, 2, 1) + b   # HF: flatten(2).transpose(1, 2)
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-4)


def test_config_from_hf_and_errors():
    hf = {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
          "image_size": 32, "patch_size": 8, "id2label": {"1": "dog", "0": "cat"}}
    cfg = vit.ViTConfig.from_hf(hf)
    assert cfg.image_size == (32, 32) and cfg.labels == ("cat", "dog") and cfg.num_labels == 2
    assert vit.ViTConfig.from_hf(cfg.to_hf()) == cfg
    with pytest.raises(GmemError, match="hidden_act"):
        vit.ViTConfig.from_hf(dict(hf, hidden_act="nope"))
    with pytest.raises(GmemError, match="hidden_size"):
        vit.ViTConfig.from_hf({k: v for k, v in hf.items() if k != "hidden_size"})
