"""BERT and RoBERTa against transformers on tiny random configs (fp32, max abs 1e-4):
last hidden state and pooled output of the base models, logits of the classifiers, on padded
batches with token types."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gmem.hf.convert import load_pretrained  # noqa: E402
from gmem.hf.keymap import apply_transform, gmem_to_hf, hf_to_gmem  # noqa: E402
from gmem.tree import flatten  # noqa: E402
from gmem.hf.writer import save_pretrained  # noqa: E402
from gmem.hf.keymaps import bert as keys  # noqa: E402
from gmem.models import bert  # noqa: E402
from dropout_helpers import gmem_masks, torch_replaying  # noqa: E402

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


def _setup(tmp_path, arch, remat=False, **kw):
    """HF model -> save_pretrained folder -> gmem.hf.convert.load_pretrained."""
    hf_cfg_cls, hf_cls, gm_cls, rules = CASES[arch]
    torch.manual_seed(0)
    hf = hf_cls(hf_cfg_cls(**dict(SMALL, num_labels=3, **kw))).eval()
    hf.save_pretrained(tmp_path / "hf")
    model, cfg, params = load_pretrained(tmp_path / "hf", remat=remat)
    assert type(model) is gm_cls and cfg.architecture == arch
    return hf, model, {"params": params}, rules


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
def test_base_model_hidden_and_pooled_match_hf(tmp_path, arch):
    hf, model, params, _ = _setup(tmp_path, arch)
    ids, mask, types = _batch(hf.config.pad_token_id)
    ref = _hf(hf, ids, mask, types)
    hid, pooled = jax.jit(model.apply)(params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    real = mask.astype(bool)
    err_h = np.abs(np.asarray(hid)[real] - ref.last_hidden_state.numpy()[real]).max()
    err_p = np.abs(np.asarray(pooled) - ref.pooler_output.numpy()).max()
    assert err_h <= TOL and err_p <= TOL, (err_h, err_p)


@pytest.mark.parametrize("arch", ["BertForSequenceClassification", "RobertaForSequenceClassification"])
def test_sequence_classification_logits_match_hf(tmp_path, arch):
    hf, model, params, _ = _setup(tmp_path, arch)
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
def test_key_map_round_trip_and_config(tmp_path, arch):
    hf, _, params, rules = _setup(tmp_path, arch)
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


def test_bf16_smoke_close_to_fp32(tmp_path):
    hf, model, params, _ = _setup(tmp_path, "BertForSequenceClassification")
    ids, mask, types = _batch(0)
    ref = jax.jit(model.apply)(params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    bf = bert.BertForSequenceClassification(bert.BertConfig.from_hf(hf.config, dtype="bfloat16"))
    got = jax.jit(bf.apply)(params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    assert got.dtype == jnp.float32 and np.isfinite(np.asarray(got)).all()
    # bf16 keeps ~3 significant digits; logits of this tiny model are O(0.1): 3e-2 absolute.
    assert np.abs(np.asarray(got) - np.asarray(ref)).max() <= 3e-2


def test_remat_grads_match_torch(tmp_path):
    """Gradients of a remat model equal torch autograd's on the HF model (so remat changes
    nothing, and the backward pass is at parity too): max abs 1e-5 per parameter."""
    hf, model, params, rules = _setup(tmp_path, "RobertaForSequenceClassification", remat=True)
    assert model.config.remat
    ids, mask, _ = _batch(1)

    def loss(p):
        return jnp.mean(model.apply(p, jnp.asarray(ids), jnp.asarray(mask)) ** 2)

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.pow(2).mean()
    ref.backward()
    assert abs(float(value) - ref.item()) <= 1e-6
    torch_grads = {k: v.grad.numpy() for k, v in hf.named_parameters()}
    for path, g in flatten(grads["params"]).items():
        key, t = gmem_to_hf(path, rules)
        np.testing.assert_allclose(apply_transform(np.asarray(g), t), torch_grads[key], atol=1e-5, err_msg=path)


def test_dropout_only_with_rng(tmp_path):
    # Without a "dropout" rng there is none: the parity tests above run HF configs with
    # hidden_dropout_prob=0.1 and match eval mode. With one, rows change with the key.
    hf, model, params, _ = _setup(tmp_path, "BertForSequenceClassification", hidden_dropout_prob=0.5)
    ids, mask, types = _batch(0)
    apply = jax.jit(lambda p, key: model.apply(p, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types),
                                               rngs={"dropout": key}))
    a, b, c = (np.asarray(apply(params, jax.random.PRNGKey(k))) for k in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


@pytest.mark.parametrize("arch", ["BertForSequenceClassification", "RobertaForSequenceClassification"])
def test_export_loads_in_transformers(tmp_path, arch):
    """gmem params -> gmem.hf.writer.save_pretrained -> transformers from_pretrained: same logits."""
    hf, model, params, _ = _setup(tmp_path, arch)
    save_pretrained(tmp_path / "out", model.config, params["params"])
    back = CASES[arch][1].from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    ids, mask, types = _batch(hf.config.pad_token_id)
    np.testing.assert_allclose(_hf(back, ids, mask, types).logits.numpy(),
                               _hf(hf, ids, mask, types).logits.numpy(), atol=1e-6)


def test_masked_lm_file_loads_as_base_model(tmp_path):
    """A BertForMaskedLM folder (no pooler, "cls." head) picks the BERT family by model_type;
    its head is ignored by the key map's IGNORE data and the encoder matches HF's."""
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(transformers.BertConfig(**SMALL)).eval()
    hf.save_pretrained(tmp_path / "mlm")
    model, cfg, params = load_pretrained(tmp_path / "mlm", add_pooling_layer=False)
    assert type(model) is bert.BertModel and "pooler" not in params
    ids, mask, types = _batch(0)
    with torch.no_grad():
        ref = hf.bert(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
    hid, pooled = jax.jit(model.apply)({"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    real = mask.astype(bool)
    assert pooled is None and np.abs(np.asarray(hid)[real] - ref[real]).max() <= TOL


@pytest.mark.parametrize("arch", ["BertModel", "RobertaModel"])
def test_attention_dropout_read_written_and_matches_hf_in_both_modes(tmp_path, monkeypatch, arch):
    """attention_probs_dropout_prob comes in from the HF config and goes back out. Eval (no
    "dropout" rng) matches HF's eval mode; train mode with attention dropout only matches HF's
    train mode when torch replays gmem's keep masks (padded batch, last hidden states)."""
    hf, model, params, _ = _setup(tmp_path, arch, attention_probs_dropout_prob=0.3, hidden_dropout_prob=0.0)
    cfg = model.config
    assert cfg.attention_probs_dropout_prob == 0.3 and cfg.to_hf()["attention_probs_dropout_prob"] == 0.3
    assert type(hf.config)(**cfg.to_hf()).attention_probs_dropout_prob == 0.3
    d = {k: v for k, v in hf.config.to_dict().items() if k != "attention_probs_dropout_prob"}
    assert bert.BertConfig.from_hf(d).attention_probs_dropout_prob == 0.1   # HF's default
    ids, mask, types = _batch(hf.config.pad_token_id)
    args = (jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    real = mask.astype(bool)
    plain = np.asarray(jax.jit(model.apply)(params, *args)[0])
    assert np.abs(plain[real] - _hf(hf, ids, mask, types).last_hidden_state.numpy()[real]).max() <= TOL
    got, masks = gmem_masks(monkeypatch, lambda: np.asarray(
        model.apply(params, *args, rngs={"dropout": jax.random.PRNGKey(0)})[0]))
    assert len(masks) == 2 and masks[0].shape == (3, 4, 12, 12)
    hf.train()
    with torch_replaying(monkeypatch, 0.3, masks):
        ref = _hf(hf, ids, mask, types).last_hidden_state.numpy()
    assert np.abs(got[real] - ref[real]).max() <= TOL
    assert np.abs(got[real] - plain[real]).max() > 100 * TOL  # the dropout did act
