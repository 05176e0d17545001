"""The adapter API on a tiny LLaMA: LoRA init and scaling, grads only on the adapter tree,
merge/unmerge, several named sets, spec errors. Tolerances: fp32, 1e-5 absolute on logits."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmem.adapters import (AdapterSpec, adapter_collection, count_params, init_adapters, merge,
                           unmerge)
from gmem.errors import GmemError


def _logits(model, params, ids, adapter=None, **kw):
    v = {"params": params}
    if adapter is not None:
        v["adapter"] = adapter
    return np.asarray(model.apply(v, ids, **kw)[0])


def test_lora_init_as_peft_and_starts_at_base(tiny_llama):
    model, params, ids = tiny_llama
    spec = AdapterSpec(targets=("q_proj", "v_proj"), rank=8, alpha=16.0)
    tr = init_adapters([spec], params, jax.random.PRNGKey(0))
    q = tr["default"]["model"]["layers_0"]["self_attn"]["q_proj"]
    assert q["lora_A"].shape == (32, 8) and q["lora_B"].shape == (8, 32)
    a = np.asarray(q["lora_A"])
    assert np.abs(a).max() <= 1 / np.sqrt(32) and np.abs(a).max() > 0.8 / np.sqrt(32)
    assert not np.any(np.asarray(q["lora_B"]))
    # 2 layers x (q: 32*8 + 8*32, v: 32*8 + 8*16)
    assert count_params(tr) == 2 * (512 + 384)
    np.testing.assert_array_equal(_logits(model, params, ids, adapter_collection([spec], tr)),
                                  _logits(model, params, ids))


@pytest.mark.parametrize("rs, want", [(False, 16.0 / 4), (True, 16.0 / 2)])
def test_lora_scale_and_rslora(tiny_llama, randomise, rs, want):
    model, params, ids = tiny_llama
    spec = AdapterSpec(targets=("o_proj",), rank=4, alpha=16.0, use_rslora=rs)
    tr = randomise(init_adapters([spec], params, jax.random.PRNGKey(0)))
    coll = adapter_collection([spec], tr)
    e = coll["model"]["layers_1"]["self_attn"]["o_proj"]
    assert float(e["lora_scale"]) == want == spec.scale
    # the scale is what the forward uses: scaling B by s/want equals the spec's output
    direct = dict(e, lora_scale=jnp.float32(1.0), lora_B=e["lora_B"] * want)
    coll2 = jax.tree_util.tree_map(lambda x: x, coll)
    coll2["model"]["layers_1"]["self_attn"]["o_proj"] = direct
    np.testing.assert_allclose(_logits(model, params, ids, coll), _logits(model, params, ids, coll2),
                               atol=1e-5)


def _dot_output_shapes(fn, *args):
    """Shapes of every dot_general result in fn's jaxpr, sub-jaxprs (pjit, remat) included."""
    shapes = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                shapes.append(tuple(eqn.outvars[0].aval.shape))
            for v in eqn.params.values():
                for sub in (v if isinstance(v, (tuple, list)) else [v]):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)
    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return shapes


@pytest.mark.parametrize("kind", ["lora", "gift"])
def test_grads_only_on_adapter_tree(tiny_llama, kind):
    model, params, ids = tiny_llama
    spec = AdapterSpec(kind=kind, targets=("q_proj", "v_proj"), rank=4)
    tr = init_adapters([spec], params, jax.random.PRNGKey(0))

    def loss(t):
        logits, _ = model.apply({"params": params, "adapter": adapter_collection([spec], t, params)}, ids)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3])

    g = jax.grad(loss)(tr)
    assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(tr)
    # at step 0 only the zero-initialised side learns (dL/dA is proportional to B = 0)
    first, second = ("lora_A", "lora_B") if kind == "lora" else ("phi", "psi")
    leaves = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(g)}
    assert all(not v.any() for k, v in leaves.items() if first in k)
    assert all(np.abs(v).max() > 0 for k, v in leaves.items() if second in k)
    # no weight gradient of a frozen matrix is ever formed: the MLP kernels are [32, 48] and
    # [48, 32]; no matmul in the backward pass produces either shape.
    shapes = _dot_output_shapes(jax.grad(loss), tr)
    assert (32, 4) in shapes or (4, 32) in shapes          # the adapter's own weight grads
    assert not {(32, 48), (48, 32), (32, 61), (61, 32)} & set(shapes)


SPECS = [
    AdapterSpec(kind="lora", targets=("q_proj", "down_proj"), rank=4, alpha=8.0),
    AdapterSpec(kind="gift", targets=("q_proj", "v_proj"), rank=4),
    AdapterSpec(kind="gift", targets=("k_proj", "o_proj"), rank=3, gift_act="gelu",
                in_projection_bias=True, out_projection_bias=True),
    AdapterSpec(kind="gift", targets=("q_proj", "o_proj", "up_proj"), rank=3, gift_act="tanh",
                share_projections=True, in_projection_bias=True),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{s.gift_act}-{s.share_projections}")
def test_merge_matches_activation_form_and_unmerge_roundtrips(tiny_llama, randomise, spec):
    model, params, ids = tiny_llama
    tr = randomise(init_adapters([spec], params, jax.random.PRNGKey(0)), scale=0.1)
    live = _logits(model, params, ids, adapter_collection([spec], tr, params))
    assert np.abs(live - _logits(model, params, ids)).max() > 1e-3
    merged = merge([spec], params, tr)
    np.testing.assert_allclose(_logits(model, merged, ids), live, atol=1e-5)
    back = unmerge([spec], merged, tr)
    chex.assert_trees_all_close(back, params, atol=1e-6)


def test_several_named_sets_on_one_base(tiny_llama, randomise):
    model, params, ids = tiny_llama
    enc = AdapterSpec(targets=("q_proj", "v_proj"), rank=4, name="encoder")
    dec = AdapterSpec(targets=("q_proj", "v_proj"), rank=2, name="decoder")
    gift = AdapterSpec(kind="gift", targets=("q_proj",), rank=2, name="gift")
    tr = randomise(init_adapters([enc, dec, gift], params, jax.random.PRNGKey(0)))
    assert set(tr) == {"encoder", "decoder", "gift"}
    y_enc = _logits(model, params, ids, adapter_collection([enc], tr))
    y_dec = _logits(model, params, ids, adapter_collection([dec], tr))
    assert np.abs(y_enc - y_dec).max() > 1e-3
    np.testing.assert_allclose(y_enc, _logits(model, merge([enc], params, tr), ids), atol=1e-5)
    # one LoRA and one GIFT on the same module add, computed from the frozen kernel
    both = adapter_collection([enc, gift], tr, params)
    np.testing.assert_allclose(_logits(model, params, ids, both),
                               _logits(model, merge([enc, gift], params, tr), ids), atol=1e-5)
    with pytest.raises(GmemError, match="both put lora"):
        adapter_collection([enc, dec], tr)


def test_lora_dropout_needs_rng_and_changes_output(tiny_llama, randomise):
    model, params, ids = tiny_llama
    spec = AdapterSpec(targets=("q_proj",), rank=4, dropout=0.5)
    tr = randomise(init_adapters([spec], params, jax.random.PRNGKey(0)))
    coll = adapter_collection([spec], tr)
    merged = _logits(model, merge([spec], params, tr), ids)
    np.testing.assert_allclose(_logits(model, params, ids, coll), merged, atol=1e-5)  # eval: off
    train = _logits(model, params, ids, coll, rngs={"dropout": jax.random.PRNGKey(3)})
    assert np.abs(train - merged).max() > 1e-4


def test_spec_errors(tiny_llama):
    _, params, _ = tiny_llama
    with pytest.raises(GmemError, match="kind='dora'.*rank=0"):
        AdapterSpec(kind="dora", rank=0)
    with pytest.raises(GmemError, match="block_type='mlp'"):
        AdapterSpec(kind="gift", block_type="mlp")
    with pytest.raises(GmemError, match="used twice"):
        init_adapters([AdapterSpec(), AdapterSpec()], params, jax.random.PRNGKey(0))
    with pytest.raises(GmemError, match="match no linear module"):
        init_adapters([AdapterSpec(targets=("query",))], params, jax.random.PRNGKey(0))
    # one shared GIFT pair needs one input width: q_proj is 32 wide, down_proj 48
    with pytest.raises(GmemError, match="input width"):
        init_adapters([AdapterSpec(kind="gift", targets=("q_proj", "down_proj"), share_projections=True)],
                      params, jax.random.PRNGKey(0))
    assert AdapterSpec(targets=["q_proj"], layers_to_transform=[0]).targets == ("q_proj",)
