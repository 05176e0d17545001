"""BERT and RoBERTa against transformers on tiny random configs (fp32, max abs 1e-4):
last hidden state and pooled output of the base models, logits of the classifiers, on padded
batches with token types."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gmem.hf.keymap import apply_transform, gmem_to_hf, hf_to_gmem, unflatten  # noqa: E402
from gmem.hf.keymaps import bert as keys  # noqa: E402
from gmem.models import bert  # noqa: E402

TOL = 1e-4
SMALL = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=48, max_position_embeddings=40, type_vocab_size=2,
             attn_implementation="eager")

CASES = {
    "BertModel": (transformers.BertConfig, transformers.BertModel, bert.BertModel, keys.BERT_MODEL),
    "BertForSequenceClassification": (transformers.BertConfig, transformers.BertForSequenceClassification,
                                      bert.BertForSequenceClassification, keys.BERT_SEQUENCE_CLASSIFICATION),
    "RobertaModel": (transformers.RobertaConfig, transformers.RobertaModel, bert.RobertaModel, keys.ROBERTA_MODEL),
    "RobertaForSequenceClassification": (transformers.RobertaConfig, transformers.RobertaForSequenceClassification,
                                         bert.RobertaForSequenceClassification, keys.ROBERTA_SEQUENCE_CLASSIFICATION),
}


def _convert(hf, rules):
    flat = {}
    for k, v in hf.state_dict().items():
        hit = hf_to_gmem(k, rules)
        assert hit is not None, k
        flat[hit[0]] = jnp.asarray(apply_transform(v.numpy(), hit[1]))
    return {"params": unflatten(flat)}


def _setup(arch, **kw):
    hf_cfg_cls, hf_cls, gm_cls, rules = CASES[arch]
    torch.manual_seed(0)
    hf = hf_cls(hf_cfg_cls(**dict(SMALL, num_labels=3, architectures=[arch], **kw))).eval()
    cfg = bert.BertConfig.from_hf(hf.config)
    return hf, gm_cls(cfg), _convert(hf, rules), rules


def _batch(pad_id):
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 61, size=(3, 12))
    mask = np.ones((3, 12), np.int64)
    mask[1, 8:] = 0   # right padding
    mask[2, 3:] = 0   # short row
    ids = np.where(mask > 0, ids, pad_id)
    types = np.zeros_like(ids)
    types[:, 6:] = 1
    return ids, mask, types


def _hf(hf, ids, mask, types):
    with torch.no_grad():
        return hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  token_type_ids=torch.tensor(types))


@pytest.mark.parametrize("arch", ["BertModel", "RobertaModel"])
def test_base_model_hidden_and_pooled_match_hf(arch):
    hf, model, params, _ = _setup(arch)
    ids, mask, types = _batch(hf.config.pad_token_id)
    ref = _hf(hf, ids, mask, types)
    hid, pooled = jax.jit(model.apply)(params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    real = mask.astype(bool)
    err_h = np.abs(np.asarray(hid)[real] - ref.last_hidden_state.numpy()[real]).max()
    err_p = np.abs(np.asarray(pooled) - ref.pooler_output.numpy()).max()
    assert err_h <= TOL and err_p <= TOL, (err_h, err_p)


@pytest.mark.parametrize("arch", ["BertForSequenceClassification", "RobertaForSequenceClassification"])
def test_sequence_classification_logits_match_hf(arch):
    hf, model, params, _ = _setup(arch)
    ids, mask, types = _batch(hf.config.pad_token_id)
    ref = _hf(hf, ids, mask, types).logits.numpy()
    got = jax.jit(model.apply)(params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    assert got.shape == (3, 3) and got.dtype == jnp.float32
    err = np.abs(np.asarray(got) - ref).max()
    assert err <= TOL, err


def test_roberta_positions_skip_pads():
    cfg = bert.BertConfig(model_type="roberta", pad_token_id=1)
    ids = jnp.array([[0, 5, 6, 1, 1], [1, 1, 0, 7, 2]])
    got = np.asarray(bert.position_ids(cfg, ids, 2, 5))
    ref = transformers.models.roberta.modeling_roberta.RobertaEmbeddings.create_position_ids_from_input_ids(
        torch.tensor(np.asarray(ids)), 1).numpy()
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got[0], [2, 3, 4, 1, 1])


@pytest.mark.parametrize("arch", list(CASES))
def test_key_map_round_trip_and_config(arch):
    hf, _, params, rules = _setup(arch)
    for k in hf.state_dict():
        path, _ = hf_to_gmem(k, rules)
        assert gmem_to_hf(path, rules)[0] == k
    cfg = bert.BertConfig.from_hf(hf.config)
    assert cfg.architecture == arch and cfg.num_labels == 3
    again = bert.BertConfig.from_hf(type(hf.config)(**cfg.to_hf()))
    assert again == cfg


def test_base_model_imports_prefixed_files():
    # BertModel weights inside a BertForSequenceClassification file load into BertModel paths.
    path, t = hf_to_gmem("bert.encoder.layer.1.attention.self.key.weight", keys.BERT_MODEL)
    assert (path, t) == ("encoder/layer_1/attention/self/key/kernel", "T")


def test_bf16_smoke_close_to_fp32():
    hf, model, params, _ = _setup("BertForSequenceClassification")
    ids, mask, types = _batch(0)
    ref = jax.jit(model.apply)(params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    bf = bert.BertForSequenceClassification(bert.BertConfig.from_hf(hf.config, dtype="bfloat16"))
    got = jax.jit(bf.apply)(params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    assert got.dtype == jnp.float32 and np.isfinite(np.asarray(got)).all()
    # bf16 keeps ~3 significant digits; logits of this tiny model are O(0.1): 3e-2 absolute.
    assert np.abs(np.asarray(got) - np.asarray(ref)).max() <= 3e-2


def test_remat_same_output_and_grads():
    hf, model, params, _ = _setup("RobertaForSequenceClassification")
    remat = bert.RobertaForSequenceClassification(bert.BertConfig.from_hf(hf.config, remat=True))
    ids, mask, _ = _batch(1)

    def loss(p, m):
        return jnp.mean(m.apply(p, jnp.asarray(ids), jnp.asarray(mask)) ** 2)

    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    l0, g0 = grad(params, model)
    l1, g1 = grad(params, remat)
    assert abs(float(l0) - float(l1)) <= 1e-6
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_dropout_only_with_rng():
    hf, model, params, _ = _setup("BertForSequenceClassification", hidden_dropout_prob=0.5)
    ids, mask, types = _batch(0)
    args = (params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    a = model.apply(*args)
    b = model.apply(*args)
    c = model.apply(*args, rngs={"dropout": jax.random.PRNGKey(0)})
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-4
