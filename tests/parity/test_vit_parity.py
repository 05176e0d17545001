"""ViT against transformers' ViTForImageClassification / ViTModel on tiny random configs
(fp32, max abs 1e-4), through a save_pretrained folder (the file spelling of the keys)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file  # noqa: E402

from gmem.hf.convert import load_pretrained  # noqa: E402
from gmem.hf.keymap import apply_transform, gmem_to_hf, hf_to_gmem  # noqa: E402
from gmem.tree import flatten, unflatten  # noqa: E402
from gmem.hf.writer import save_pretrained  # noqa: E402
from gmem.hf.keymaps import vit as keys  # noqa: E402
from gmem.models import vit  # noqa: E402
from dropout_helpers import gmem_masks, torch_replaying  # noqa: E402

TOL = 1e-4
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
             image_size=16, patch_size=4, num_channels=3, num_labels=5, attn_implementation="eager")


def _convert(state: dict, rules):
    flat = {}
    for k, v in state.items():
        hit = hf_to_gmem(k, rules)
        assert hit is not None, k
        flat[hit[0]] = jnp.asarray(apply_transform(np.asarray(v), hit[1]))
    return {"params": unflatten(flat)}


def _saved_hf(cls, config: dict, seed: int, folder):
    """A random HF ViT of `cls` (seeded), in eval mode, saved to folder with save_pretrained."""
    torch.manual_seed(seed)
    hf = cls(transformers.ViTConfig(**config)).eval()
    hf.save_pretrained(folder)
    return hf


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit")
    return _saved_hf(transformers.ViTForImageClassification, SMALL, 0, folder), folder


def _pixels(b=3):
    return np.random.RandomState(0).randn(b, 3, 16, 16).astype(np.float32)


def test_classifier_logits_match_hf_from_saved_files(classifier):
    hf, folder = classifier
    state = load_file(str(folder / "model.safetensors"))
    assert any(k.startswith("vit.encoder.layer.") for k in state)  # the file spelling
    model, cfg, params = load_pretrained(folder)
    assert isinstance(model, vit.ViTForImageClassification)
    px = _pixels()
    with torch.no_grad():
        ref = hf(pixel_values=torch.tensor(px)).logits.numpy()
    got = jax.jit(model.apply)({"params": params}, jnp.asarray(px))
    assert got.shape == (3, 5) and got.dtype == jnp.float32
    err = np.abs(np.asarray(got) - ref).max()
    assert err <= TOL, err


def test_in_memory_v5_names_load_too(classifier):
    hf, _ = classifier
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    assert any(k.startswith("vit.layers.") for k in state)
    params = _convert(state, keys.VIT_IMAGE_CLASSIFICATION)
    model = vit.ViTForImageClassification(vit.ViTConfig.from_hf(hf.config))
    px = _pixels(2)
    with torch.no_grad():
        ref = hf(pixel_values=torch.tensor(px)).logits.numpy()
    assert np.abs(np.asarray(jax.jit(model.apply)(params, jnp.asarray(px))) - ref).max() <= TOL


def test_vit_model_hidden_and_pooled_match_hf():
    torch.manual_seed(1)
    hf = transformers.ViTModel(transformers.ViTConfig(**dict(SMALL, pooler_act="tanh"))).eval()
    params = _convert({k: v.numpy() for k, v in hf.state_dict().items()}, keys.VIT_MODEL)
    model = vit.ViTModel(vit.ViTConfig.from_hf(hf.config))
    px = _pixels(2)
    with torch.no_grad():
        ref = hf(pixel_values=torch.tensor(px))
    hid, pooled = jax.jit(model.apply)(params, jnp.asarray(px))
    assert hid.shape == (2, 17, 32)
    assert np.abs(np.asarray(hid) - ref.last_hidden_state.numpy()).max() <= TOL
    assert np.abs(np.asarray(pooled) - ref.pooler_output.numpy()).max() <= TOL


def test_export_writes_file_spelling_and_round_trips(classifier):
    hf, folder = classifier
    state = load_file(str(folder / "model.safetensors"))
    params = _convert(state, keys.VIT_IMAGE_CLASSIFICATION)
    for path, leaf in flatten(params["params"]).items():
        key, t = gmem_to_hf(path, keys.VIT_IMAGE_CLASSIFICATION)
        np.testing.assert_array_equal(apply_transform(np.asarray(leaf), t), state[key])
    assert len(flatten(params["params"])) == len(state)
    cfg = vit.ViTConfig.from_hf(hf.config)
    assert vit.ViTConfig.from_hf(transformers.ViTConfig(**cfg.to_hf())) == cfg


def test_wrong_image_size_is_a_user_error(classifier):
    from gmem.errors import GmemError
    hf, _ = classifier
    model = vit.ViTForImageClassification(vit.ViTConfig.from_hf(hf.config))
    with pytest.raises(GmemError, match="interpolate_pos_encoding"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 3, 32, 32)))


def test_bf16_smoke_close_to_fp32(classifier):
    hf, folder = classifier
    model, cfg, params = load_pretrained(folder)
    px = jnp.asarray(_pixels(2))
    ref = jax.jit(model.apply)({"params": params}, px)
    bf_model = vit.ViTForImageClassification(vit.ViTConfig.from_hf(hf.config, dtype="bfloat16"))
    bf = jax.jit(bf_model.apply)({"params": params}, px)
    assert bf.dtype == jnp.float32 and np.isfinite(np.asarray(bf)).all()
    # bf16 keeps ~3 significant digits; logits here are O(0.1-1): 5e-2 absolute.
    assert np.abs(np.asarray(bf) - np.asarray(ref)).max() <= 5e-2


def test_remat_grads_match_torch(classifier):
    """Gradients of a remat model equal torch autograd's on the HF model: max abs 1e-5."""
    hf, folder = classifier
    model, cfg, params = load_pretrained(folder, remat=True)
    assert cfg.remat
    px = _pixels(2)

    def loss(p):
        return jnp.mean(model.apply({"params": p}, jnp.asarray(px)) ** 2)

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    hf.zero_grad()
    ref = hf(pixel_values=torch.tensor(px)).logits.pow(2).mean()
    ref.backward()
    assert abs(float(value) - ref.item()) <= 1e-6
    # The in-memory module uses v5 names; map them to the file names the rules export.
    state_v5 = dict(hf.named_parameters())
    torch_grads = {}
    for k, v in state_v5.items():
        path = hf_to_gmem(k, keys.VIT_IMAGE_CLASSIFICATION)[0]
        torch_grads[path] = v.grad.numpy()
    for path, g in flatten(grads).items():
        _, t = gmem_to_hf(path, keys.VIT_IMAGE_CLASSIFICATION)
        np.testing.assert_allclose(apply_transform(np.asarray(g), t), torch_grads[path], atol=1e-5, err_msg=path)


def test_export_loads_in_transformers(classifier, tmp_path):
    hf, folder = classifier
    model, cfg, params = load_pretrained(folder)
    save_pretrained(tmp_path / "out", cfg, params)
    back = transformers.ViTForImageClassification.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    px = torch.tensor(_pixels(2))
    with torch.no_grad():
        np.testing.assert_allclose(back(pixel_values=px).logits.numpy(), hf(pixel_values=px).logits.numpy(), atol=1e-6)


def test_attention_dropout_read_written_and_matches_hf_in_both_modes(monkeypatch):
    """attention_probs_dropout_prob comes in from the HF config and goes back out (default 0.0
    as HF's). Eval (no "dropout" rng) matches HF's eval mode; train mode with attention dropout
    only matches HF's train mode when torch replays gmem's keep masks (ViTModel hidden states)."""
    torch.manual_seed(2)
    hf = transformers.ViTModel(transformers.ViTConfig(
        **dict(SMALL, attention_probs_dropout_prob=0.3, hidden_dropout_prob=0.0))).eval()
    cfg = vit.ViTConfig.from_hf(hf.config)
    assert cfg.attention_probs_dropout_prob == 0.3 and cfg.to_hf()["attention_probs_dropout_prob"] == 0.3
    assert transformers.ViTConfig(**cfg.to_hf()).attention_probs_dropout_prob == 0.3
    assert vit.ViTConfig.from_hf(SMALL).attention_probs_dropout_prob == 0.0
    params = _convert({k: v.numpy() for k, v in hf.state_dict().items()}, keys.VIT_MODEL)
    model = vit.ViTModel(cfg)
    px = torch.tensor(_pixels(2))
    plain = np.asarray(jax.jit(model.apply)(params, jnp.asarray(px.numpy()))[0])
    with torch.no_grad():
        assert np.abs(plain - hf(pixel_values=px).last_hidden_state.numpy()).max() <= TOL
    got, masks = gmem_masks(monkeypatch, lambda: np.asarray(
        model.apply(params, jnp.asarray(px.numpy()), rngs={"dropout": jax.random.PRNGKey(0)})[0]))
    assert len(masks) == 2 and masks[0].shape == (2, 4, 17, 17)
    hf.train()
    with torch_replaying(monkeypatch, 0.3, masks), torch.no_grad():
        ref = hf(pixel_values=px).last_hidden_state.numpy()
    assert np.abs(got - ref).max() <= TOL
    assert np.abs(got - plain).max() > 100 * TOL  # the dropout did act


# Position-embedding interpolation (HF's interpolate_pos_encoding=True): a 32x32-trained tiny
# model with 8x8 patches (a 4x4 grid) on larger and non-square images. Limit 1e-5 max abs on
# last_hidden_state (fp32).
INTERP_TOL = 1e-5
INTERP = dict(SMALL, image_size=32, patch_size=8)


@pytest.fixture(scope="module")
def interp_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit_interp")
    hf = _saved_hf(transformers.ViTModel, INTERP, 3, folder)
    model, cfg, params = load_pretrained(folder)
    assert isinstance(model, vit.ViTModel) and cfg.grid == (4, 4)
    return hf, model, params


def _run(model, params, px, interp):
    fn = jax.jit(functools.partial(model.apply, interpolate_pos_encoding=interp))
    return fn({"params": params}, jnp.asarray(px))


@pytest.mark.parametrize("hw", [(48, 64), (64, 64), (16, 24), (16, 64)])
def test_interpolate_pos_encoding_matches_hf(interp_model, hw):
    hf, model, params = interp_model
    px = np.random.RandomState(1).randn(2, 3, *hw).astype(np.float32)
    with torch.no_grad():
        ref = hf(pixel_values=torch.tensor(px), interpolate_pos_encoding=True)
    hid, pooled = _run(model, params, px, True)
    n = (hw[0] // 8) * (hw[1] // 8) + 1
    assert hid.shape == (2, n, 32)
    err = np.abs(np.asarray(hid) - ref.last_hidden_state.numpy()).max()
    assert err <= INTERP_TOL, err
    assert np.abs(np.asarray(pooled) - ref.pooler_output.numpy()).max() <= INTERP_TOL


def test_interpolate_pos_encoding_at_trained_size_is_a_no_op(interp_model):
    hf, model, params = interp_model
    px = np.random.RandomState(2).randn(2, 3, 32, 32).astype(np.float32)
    on, off = _run(model, params, px, True), _run(model, params, px, False)
    np.testing.assert_array_equal(np.asarray(on[0]), np.asarray(off[0]))
    with torch.no_grad():
        ref = hf(pixel_values=torch.tensor(px), interpolate_pos_encoding=True).last_hidden_state.numpy()
    assert np.abs(np.asarray(on[0]) - ref).max() <= INTERP_TOL


def test_interpolate_pos_encoding_classifier_and_errors(interp_model, classifier):
    from gmem.errors import GmemError
    _, model, params = interp_model
    with pytest.raises(GmemError, match="interpolate_pos_encoding=True"):
        _run(model, params, np.zeros((1, 3, 48, 64), np.float32), False)
    with pytest.raises(GmemError, match="not a multiple of the patch size"):
        _run(model, params, np.zeros((1, 3, 36, 64), np.float32), True)
    hf, folder = classifier  # the classifier threads the flag to its encoder
    clf, _, cparams = load_pretrained(folder)
    px = np.random.RandomState(3).randn(2, 3, 24, 20).astype(np.float32)
    with torch.no_grad():
        ref = hf(pixel_values=torch.tensor(px), interpolate_pos_encoding=True).logits.numpy()
    got = jax.jit(functools.partial(clf.apply, interpolate_pos_encoding=True))({"params": cparams}, jnp.asarray(px))
    assert np.abs(np.asarray(got) - ref).max() <= INTERP_TOL


@pytest.mark.parametrize("src,dst", [((4, 5), (6, 8)), ((4, 4), (3, 2)), ((4, 5), (9, 13)), ((3, 3), (1, 1))])
def test_bicubic_matrix_matches_torch_interpolate(src, dst):
    """torch F.interpolate(bicubic, align_corners=False): float64 exact to 1e-6 (in fact ~1e-14);
    the float32 jnp path to 1e-5 (float32 rounding on O(1) values)."""
    from gmem.nn.resize import bicubic_matrix, resize_bicubic_hw
    x = np.random.RandomState(4).randn(*src, 7)
    ref = torch.nn.functional.interpolate(torch.tensor(x).permute(2, 0, 1)[None], size=dst, mode="bicubic",
                                          align_corners=False)[0].permute(1, 2, 0).numpy()
    got = np.einsum("pw,owd->opd", bicubic_matrix(src[1], dst[1]), np.einsum("oh,hwd->owd", bicubic_matrix(src[0], dst[0]), x))
    assert np.abs(got - ref).max() <= 1e-6
    got32 = np.asarray(resize_bicubic_hw(jnp.asarray(x, jnp.float32), dst))
    assert np.abs(got32 - ref).max() <= 1e-5
