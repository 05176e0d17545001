"""timm VisionTransformer weights in gmem's ViT (gmem.hf.timm) against timm itself, on random
tiny models built offline (weights perturbed so norms and biases are not at their init).
Tolerance: logits within 1e-4 absolute, fp32 (logits are O(1); measured up to 1.9e-6 on the
tiny models, 3.3e-6 on the ViT-B/16 architecture)."""

import numpy as np
import jax.numpy as jnp
import pytest

torch = pytest.importorskip("torch")
from timm_shim import import_timm  # noqa: E402  (tests/ is on sys.path via its conftest)

from gmem.errors import GmemError  # noqa: E402
from gmem.hf.timm import load_timm_vit, to_timm_state_dict  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def timm():
    return import_timm()


def _vit(timm, seed=0, **kw):
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5)
    args.update(kw)
    m = VisionTransformer(**args).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if m.num_classes:
            m.head.weight.normal_(0, 0.5)      # unit-scale logits
    return m


def _pixels(h=32, w=32, seed=0):
    return np.random.RandomState(seed).randn(2, 3, h, w).astype(np.float32)


def _compare(m, module, params, x):
    with torch.no_grad():
        want = m(torch.tensor(x)).numpy() if m.num_classes else m.forward_features(torch.tensor(x)).numpy()
    out = module.apply({"params": params}, jnp.asarray(x))
    got = np.asarray(out[0] if isinstance(out, tuple) else out)
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    return np.abs(got - want).max()


@pytest.mark.parametrize("kw", [{}, {"qkv_bias": False}, {"img_size": (32, 16)},
                                {"embed_dim": 48, "num_heads": 3, "mlp_ratio": 2.0, "depth": 3}],
                         ids=["plain", "no-qkv-bias", "non-square", "wider"])
def test_logits_match_timm(timm, kw):
    m = _vit(timm, **kw)
    size = kw.get("img_size", (32, 32))
    size = size if isinstance(size, tuple) else (size, size)
    module, cfg, params = load_timm_vit(m.state_dict(), num_heads=kw.get("num_heads", 4),
                                        image_size=size if size[0] != size[1] else None)
    assert cfg.layer_norm_eps == 1e-6 and cfg.num_labels == 5 and tuple(cfg.image_size) == size
    _compare(m, module, params, _pixels(*size))
    # back to timm's names and fused qkv, bit for bit
    back = to_timm_state_dict(params, cfg)
    sd = m.state_dict()
    assert set(back) == set(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k], v.numpy())


def test_headless_model_gives_the_features(timm):
    m = _vit(timm, num_classes=0)
    module, cfg, params = load_timm_vit(m.state_dict(), num_heads=4)
    assert cfg.architecture == "ViTModel" and "classifier" not in params
    _compare(m, module, params, _pixels())


def test_files_and_wrappers(timm, tmp_path):
    from safetensors.torch import save_file
    m = _vit(timm)
    sd = m.state_dict()
    x = _pixels()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, tmp_path / "ck.pth.tar")
    (tmp_path / "config.json").write_text('{"architecture": "vit_tiny_patch16_224", "num_classes": 5, '
                                          '"global_pool": "token"}')
    for src, kw in ((tmp_path / "model.safetensors", {"num_heads": 4}),
                    (tmp_path / "ck.pth.tar", {"num_heads": 4})):
        module, _, params = load_timm_vit(str(src), **kw)
        _compare(m, module, params, x)
    # a folder: timm's config.json names the architecture, whose head count (3) does not
    # divide... the tiny model's 4 heads are not vit_tiny's 3: refused, not run wrong
    with pytest.raises(GmemError, match="num_heads=4 contradicts"):
        load_timm_vit(str(tmp_path), num_heads=4)
    module, cfg, params = load_timm_vit(str(tmp_path), num_heads=4, model_name="my_vit")
    _compare(m, module, params, x)


def test_the_papers_backbone_architecture(timm):
    # vit_base_patch16_224.augreg_in21k (GIFT's vision backbone), random weights at 32 px: the
    # head count comes from the name, as a GIFT checkpoint's args.model gives it.
    torch.manual_seed(0)
    m = timm.create_model("vit_base_patch16_224.augreg_in21k", pretrained=False, num_classes=5,
                          img_size=32).eval()
    with torch.no_grad():
        m.head.weight.normal_(0, 0.05)
    module, cfg, params = load_timm_vit(m.state_dict(), model_name="vit_base_patch16_224.augreg_in21k")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == \
        (768, 12, 12, 3072)
    _compare(m, module, params, _pixels())


@pytest.mark.parametrize("kw, expect", [
    ({"init_values": 1e-5}, "ls1.gamma"),            # LayerScale
    ({"reg_tokens": 2}, "reg_token"),
    ({"global_pool": "avg"}, "fc_norm"),
    ({"qk_norm": True}, "q_norm"),
    ({"class_token": False, "global_pool": "avg", "fc_norm": False}, "class token"),
])
def test_variants_gmem_does_not_build_are_refused(timm, kw, expect):
    m = _vit(timm, **kw)
    with pytest.raises(GmemError, match=expect):
        load_timm_vit(m.state_dict(), num_heads=4)


def test_head_count_is_required(timm):
    with pytest.raises(GmemError, match="num_heads= or model_name="):
        load_timm_vit(_vit(timm).state_dict())
    with pytest.raises(GmemError, match="not a timm ViT name"):
        load_timm_vit(_vit(timm).state_dict(), model_name="resnet50")


@pytest.mark.parametrize("target, module", [("attn:proj", "attn.proj"), ("qkv", "attn.qkv")])
def test_gift_checkpoint_of_a_timm_vit_runs_in_gmem(timm, tmp_path, target, module):
    """A GIFT vision checkpoint (timm training file with args) on a timm-loaded backbone, against
    timm with the checkpoint applied in torch: W' = W + W A^T B^T on every targeted timm Linear
    (the fused [3D, D] qkv weight as one matrix) and timm's head replaced by the file's."""
    import argparse
    from gmem.adapters.gift_io import gift_spec_from_checkpoint
    from gmem.hf.keymaps.vit import VIT_IMAGE_CLASSIFICATION as RULES
    from gmem.systems.gift import uses as gift
    m = _vit(timm)
    module_, _, params = load_timm_vit(m.state_dict(), num_heads=4)
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(4, 32, generator=g) * 0.4 - 0.2, 0.3 * torch.randn(32, 4, generator=g)
    head_w, head_b = torch.randn(5, 32, generator=g) * 0.5, torch.randn(5, generator=g)
    path = tmp_path / "last.pth.tar"
    torch.save({"epoch": 9, "state_dict": {f"in_projections.{target}.weight": a,
                                           f"out_projections.{target}.weight": b,
                                           "backbone.head.weight": head_w, "backbone.head.bias": head_b},
                "args": argparse.Namespace(method="gift", model="tiny", rank=0, gift_rank=4,
                                           gift_target_modules=[target])}, path)
    use = gift.GiftUse(gift_spec_from_checkpoint(str(path)), ("classifier",))
    tr = gift.load_original(str(path), use, params, RULES)
    x = _pixels()
    got = np.asarray(module_.apply(gift.variables(use, tr, params, RULES), jnp.asarray(x)))
    with torch.no_grad():
        m.head.weight.copy_(head_w)
        m.head.bias.copy_(head_b)
        head_only = m(torch.tensor(x)).numpy()
        for blk in m.blocks:
            lin = blk.attn.proj if module == "attn.proj" else blk.attn.qkv
            lin.weight.add_(lin.weight @ a.T @ b.T)
        want = m(torch.tensor(x)).numpy()
    assert np.abs(want - head_only).max() > 1e-2      # the residual matters at this tolerance
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
