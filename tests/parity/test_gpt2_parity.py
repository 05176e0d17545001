"""GPT-2 against transformers' GPT2LMHeadModel on tiny random configs (fp32, max abs 1e-4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gmem.hf.convert import load_pretrained  # noqa: E402
from gmem.hf.keymap import apply_transform, gmem_to_hf, hf_to_gmem  # noqa: E402
from gmem.tree import flatten  # noqa: E402
from gmem.hf.keymaps.gpt2 import RULES  # noqa: E402
from gmem.hf.writer import save_pretrained  # noqa: E402
from gmem.models.gpt2 import GPT2Config, GPT2LMHeadModel  # noqa: E402
from dropout_helpers import gmem_masks, torch_replaying  # noqa: E402

TOL = 1e-4


def _hf_model(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, n_positions=320, n_embd=32, n_layer=2, n_head=4,
               bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    cfg.update(kw)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg)).eval()


def _hf_logits(hf, ids, mask=None, pos=None):
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask),
                 position_ids=None if pos is None else torch.tensor(pos))
    return out.logits.numpy()


def _positions(mask):
    return np.where(mask > 0, np.cumsum(mask, -1) - 1, 1)


def _setup(tmp_path, remat=False, **kw):
    """HF model -> save_pretrained folder -> gmem.hf.convert.load_pretrained."""
    hf = _hf_model(**kw)
    hf.save_pretrained(tmp_path / "hf")
    model, cfg, params = load_pretrained(tmp_path / "hf", remat=remat)
    assert isinstance(model, GPT2LMHeadModel) and cfg == GPT2Config.from_hf(hf.config, remat=remat)
    return hf, model, {"params": params}


def _jit(model):
    # One compilation per shape is far faster than op-by-op dispatch on a busy CPU.
    return jax.jit(model.apply)


def test_padded_batch_left_and_right_matches_hf(tmp_path):
    hf, model, params = _setup(tmp_path)
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 97, size=(3, 11))
    mask = np.ones((3, 11), np.int64)
    mask[0, :4] = 0   # left padding
    mask[1, 7:] = 0   # right padding
    ids = np.where(mask > 0, ids, 0)
    # HF's forward counts positions 0..L-1 whatever the mask; generate passes these explicitly.
    ref = _hf_logits(hf, ids, mask, _positions(mask))
    got, _ = _jit(model)(params, jnp.asarray(ids), jnp.asarray(mask))
    real = mask.astype(bool)
    err = np.abs(np.asarray(got)[real] - ref[real]).max()
    assert err <= TOL, err


def test_long_prompt_matches_hf(tmp_path):
    hf, model, params = _setup(tmp_path)
    ids = np.random.RandomState(1).randint(0, 97, size=(1, 300))
    ref = _hf_logits(hf, ids)
    got, _ = _jit(model)(params, jnp.asarray(ids))
    err = np.abs(np.asarray(got) - ref).max()
    assert err <= TOL, err


def test_options_untied_head_layer_scaling_relu_match_hf(tmp_path):
    hf, model, params = _setup(tmp_path, tie_word_embeddings=False, scale_attn_by_inverse_layer_idx=True,
                               activation_function="relu", n_inner=48)
    assert not model.config.tie_word_embeddings and "lm_head" in params["params"]
    ids = np.random.RandomState(2).randint(0, 97, size=(2, 9))
    err = np.abs(np.asarray(_jit(model)(params, jnp.asarray(ids))[0]) - _hf_logits(hf, ids)).max()
    assert err <= TOL, err


def test_cached_decode_matches_full_forward(tmp_path):
    """Prefill a left-padded prompt into the cache, then decode token by token: the logits of
    each step equal the full forward over the whole sequence."""
    hf, model, params = _setup(tmp_path)
    rng = np.random.RandomState(3)
    ids = rng.randint(3, 97, size=(2, 10))
    mask = np.ones((2, 10), np.int64)
    mask[1, :3] = 0
    apply = _jit(model)
    full, _ = apply(params, jnp.asarray(ids), jnp.asarray(mask))
    cache = model.init_cache(2, 10)
    logits, cache = apply(params, jnp.asarray(ids[:, :6]), jnp.asarray(mask[:, :6]), cache=cache)
    steps = [logits]
    for t in range(6, 10):
        lg, cache = apply(params, jnp.asarray(ids[:, t:t + 1]), jnp.asarray(mask[:, t:t + 1]), cache=cache)
        steps.append(lg)
    got = np.concatenate([np.asarray(s) for s in steps], axis=1)
    real = mask.astype(bool)
    assert np.abs(got[real] - np.asarray(full)[real]).max() <= 1e-5
    # And the cache path agrees with HF's padded forward as well.
    ref = _hf_logits(hf, ids, mask, _positions(mask))
    assert np.abs(got[real] - ref[real]).max() <= TOL


def test_config_round_trip_and_export_keys():
    hf = _hf_model()
    cfg = GPT2Config.from_hf(hf.config)
    again = GPT2Config.from_hf(transformers.GPT2Config(**cfg.to_hf()))
    assert again == cfg
    # Every HF key maps to a gmem path and back to itself.
    for k in hf.state_dict():
        path, _ = hf_to_gmem(k, RULES)
        assert gmem_to_hf(path, RULES)[0] == k
    # Files without the "transformer." prefix import to the same paths.
    assert hf_to_gmem("h.3.attn.c_attn.weight", RULES)[0] == "transformer/h_3/attn/c_attn/kernel"
    assert hf_to_gmem("h.3.attn.bias", RULES) is None


def test_bf16_smoke_close_to_fp32(tmp_path):
    hf, model, params = _setup(tmp_path)
    ids = np.random.RandomState(4).randint(0, 97, size=(2, 16))
    ref, _ = _jit(model)(params, jnp.asarray(ids))
    bf = GPT2LMHeadModel(GPT2Config.from_hf(hf.config, dtype="bfloat16"))
    got, _ = _jit(bf)(params, jnp.asarray(ids))
    assert got.dtype == jnp.float32 and np.isfinite(np.asarray(got)).all()
    # bf16 has an 8-bit mantissa; logits of this tiny model are O(0.1-1): 5e-2 absolute.
    assert np.abs(np.asarray(got) - np.asarray(ref)).max() <= 5e-2


def test_remat_grads_match_torch(tmp_path):
    """Gradients of a remat model equal torch autograd's on the HF model (so remat changes
    nothing, and the backward pass is at parity too): max abs 1e-5 per parameter."""
    hf, model, params = _setup(tmp_path, remat=True)
    assert model.config.remat
    ids = np.random.RandomState(5).randint(0, 97, size=(2, 8))

    def loss(p):
        return jnp.mean(model.apply(p, jnp.asarray(ids))[0] ** 2)

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    ref = hf(input_ids=torch.tensor(ids)).logits.pow(2).mean()
    ref.backward()
    assert abs(float(value) - ref.item()) <= 1e-6
    torch_grads = {k: v.grad.numpy() for k, v in hf.named_parameters()}
    for path, g in flatten(grads["params"]).items():
        key, t = gmem_to_hf(path, RULES)
        np.testing.assert_allclose(apply_transform(np.asarray(g), t), torch_grads[key], atol=1e-5, err_msg=path)


def test_export_loads_in_transformers(tmp_path):
    """gmem params -> gmem.hf.writer.save_pretrained -> transformers from_pretrained: same logits."""
    hf, model, params = _setup(tmp_path)
    save_pretrained(tmp_path / "out", model.config, params["params"])
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    ids = np.random.RandomState(6).randint(0, 97, size=(1, 12))
    np.testing.assert_allclose(_hf_logits(back, ids), _hf_logits(hf, ids), atol=1e-6)


def test_attn_pdrop_read_written_and_eval_matches_hf(tmp_path):
    """attn_pdrop comes in from the HF config and goes back out; without a "dropout" rng the
    model is deterministic and matches HF's eval mode."""
    hf, model, params = _setup(tmp_path, attn_pdrop=0.3)
    assert model.config.attn_pdrop == 0.3 and model.config.to_hf()["attn_pdrop"] == 0.3
    assert transformers.GPT2Config(**model.config.to_hf()).attn_pdrop == 0.3
    assert GPT2Config.from_hf({k: v for k, v in hf.config.to_dict().items() if k != "attn_pdrop"}).attn_pdrop == 0.1
    ids = np.random.RandomState(7).randint(0, 97, size=(2, 9))
    got, _ = _jit(model)(params, jnp.asarray(ids))
    assert np.abs(np.asarray(got) - _hf_logits(hf, ids)).max() <= TOL


def test_attn_dropout_in_training_matches_hf_with_the_same_masks(tmp_path, monkeypatch):
    """Train mode, attention dropout only: gmem's keep masks replayed in torch give the same
    logits, so the dropout sits where HF's does (after the softmax, before V, scaled 1/(1-p))."""
    hf, model, params = _setup(tmp_path, attn_pdrop=0.3, resid_pdrop=0.0, embd_pdrop=0.0)
    rng = np.random.RandomState(8)
    ids = rng.randint(3, 97, size=(2, 10))
    mask = np.ones((2, 10), np.int64)
    mask[1, :3] = 0
    got, masks = gmem_masks(monkeypatch, lambda: model.apply(
        params, jnp.asarray(ids), jnp.asarray(mask), rngs={"dropout": jax.random.PRNGKey(0)})[0])
    assert len(masks) == 2 and masks[0].shape == (2, 4, 10, 10) and 0 < masks[0].mean() < 1
    hf.train()
    with torch_replaying(monkeypatch, 0.3, masks):
        ref = _hf_logits(hf, ids, mask, _positions(mask))
    real = mask.astype(bool)
    assert np.abs(np.asarray(got)[real] - ref[real]).max() <= TOL
    plain, _ = _jit(model)(params, jnp.asarray(ids), jnp.asarray(mask))
    assert np.abs(np.asarray(got) - np.asarray(plain))[real].max() > 1e-2  # the dropout did act
