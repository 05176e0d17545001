"""gmem.systems.gift: the classification uses (GIFT + trainable head), loading the original
checkpoints with their head keys, and the cluster maps. Tiny random ViT / RoBERTa, fp32."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gmem.errors import GmemError
from gmem.hf.keymaps import bert as bert_keys
from gmem.hf.keymaps import vit as vit_keys
from gmem.models import bert, vit
from gmem.systems.gift import uses as gift

VIT_RULES = vit_keys.VIT_IMAGE_CLASSIFICATION


@pytest.fixture(scope="module")
def tiny_vit():
    cfg = vit.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                        image_size=(16, 16), patch_size=(4, 4), num_labels=3)
    model = vit.ViTForImageClassification(cfg)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 3, 16, 16))
    params = nn.unbox(model.init(jax.random.PRNGKey(0), x)["params"])
    return model, params, x


def test_image_use_starts_at_base_and_trains(tiny_vit):
    model, params, x = tiny_vit
    use = gift.GiftUse.make("image_classification", rank=4)
    tr = gift.init_trainable(use, params, jax.random.PRNGKey(2), VIT_RULES)
    assert set(tr) == {"gift", "head"} and set(tr["gift"]) == {"attn:proj"}
    assert gift.num_trainable_parameters(tr) == 2 * 32 * 4          # phi + psi, no head
    assert gift.num_trainable_parameters(tr, with_head=True) == 2 * 32 * 4 + 32 * 3 + 3
    base = model.apply({"params": params}, x)
    np.testing.assert_array_equal(model.apply(gift.variables(use, tr, params, VIT_RULES), x), base)
    labels = jnp.array([0, 1, 2, 1])

    def loss(t):
        logits = model.apply(gift.variables(use, t, params, VIT_RULES), x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    opt = optax.adam(1e-2)
    state = opt.init(tr)
    step = jax.jit(lambda t, s: (lambda l, g: (l, *opt.update(g, s, t)))(*jax.value_and_grad(loss)(t)))
    first = None
    for _ in range(15):
        l, upd, state = step(tr, state)
        tr = optax.apply_updates(tr, upd)
        first = l if first is None else first
    assert float(l) < 0.5 * float(first)
    assert np.abs(np.asarray(tr["gift"]["attn:proj"]["psi"])).max() > 0   # the shared pair learned


def _torch_style_checkpoint(tmp_path, state):
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "last.pth.tar")
    torch.save({k: torch.tensor(np.asarray(v)) for k, v in state.items()}, path)
    return path


def test_load_original_vit_checkpoint_with_timm_head(tiny_vit, tmp_path):
    model, params, x = tiny_vit
    use = gift.GiftUse.make("image_classification", rank=4)
    rng = np.random.RandomState(0)
    a, b = rng.randn(4, 32).astype(np.float32) * 0.2, rng.randn(32, 4).astype(np.float32) * 0.2
    head_w, head_b = rng.randn(3, 32).astype(np.float32), rng.randn(3).astype(np.float32)
    path = _torch_style_checkpoint(tmp_path, {
        "in_projections.attn:proj.weight": a, "out_projections.attn:proj.weight": b,
        "backbone.head.weight": head_w, "backbone.head.bias": head_b})
    tr = gift.load_original(path, use, params, VIT_RULES)
    got = np.asarray(model.apply(gift.variables(use, tr, params, VIT_RULES), x))
    # reference: W' = W (I + phi psi) written into every attention output kernel, head replaced
    ref = jax.tree_util.tree_map(np.asarray, params)
    for i in range(2):
        k = ref["vit"][f"layers_{i}"]["attention"]["o_proj"]["kernel"]       # K = W^T
        w = k.T
        ref["vit"][f"layers_{i}"]["attention"]["o_proj"]["kernel"] = (w @ (np.eye(32) + a.T @ b.T)).T
    ref["classifier"] = {"kernel": head_w.T, "bias": head_b}
    want = np.asarray(model.apply({"params": ref}, x))
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_load_original_roberta_checkpoint_with_classifier(tmp_path):
    """The loaded checkpoint computes what it says: logits against torch's RoBERTa with the
    checkpoint applied in torch, W' = W (I + phi psi) = W + W A^T B^T on every query and value
    weight and the classifier replaced by the file's, independently of gmem's GIFT code."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from gmem.hf.keymap import apply_transform, hf_to_gmem
    from gmem.tree import unflatten
    torch.manual_seed(0)
    hf_cfg = transformers.RobertaConfig(vocab_size=61, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=48,
                                        max_position_embeddings=40, num_labels=2,
                                        attn_implementation="eager")
    ref = transformers.RobertaForSequenceClassification(hf_cfg).eval()
    rules = bert_keys.ROBERTA_SEQUENCE_CLASSIFICATION
    flat = {}
    for k, v in ref.state_dict().items():
        hit = hf_to_gmem(k, rules)
        if hit is not None:
            flat[hit[0]] = jnp.asarray(apply_transform(v.numpy(), hit[1]))
    params = unflatten(flat)
    model = bert.RobertaForSequenceClassification(bert.BertConfig.from_hf(hf_cfg))
    ids = np.random.RandomState(0).randint(3, 61, size=(2, 7))
    use = gift.GiftUse.make("sequence_classification", rank=2)
    rng = np.random.RandomState(1)
    state = {f"{side}_projections.{t}.weight": rng.randn(*shape).astype(np.float32) * 0.3
             for t in ("query", "value") for side, shape in (("in", (2, 32)), ("out", (32, 2)))}
    state.update({"backbone.classifier.dense.weight": rng.randn(32, 32) * 0.3,
                  "backbone.classifier.dense.bias": rng.randn(32),
                  "backbone.classifier.out_proj.weight": rng.randn(2, 32),
                  "backbone.classifier.out_proj.bias": rng.randn(2)})
    tr = gift.load_original(_torch_style_checkpoint(tmp_path, state), use, params, rules)
    got = np.asarray(model.apply(gift.variables(use, tr, params, rules), jnp.asarray(ids)))
    with torch.no_grad():
        base = ref(input_ids=torch.tensor(ids)).logits.numpy()
        for layer in ref.roberta.encoder.layer:
            for t in ("query", "value"):
                lin = getattr(layer.attention.self, t)
                a = torch.tensor(state[f"in_projections.{t}.weight"])
                b = torch.tensor(state[f"out_projections.{t}.weight"])
                lin.weight.add_(lin.weight @ a.T @ b.T)
        for name, p in ref.classifier.named_parameters():
            p.copy_(torch.tensor(np.asarray(state[f"backbone.classifier.{name}"], np.float32)))
        want = ref(input_ids=torch.tensor(ids)).logits.numpy()
    assert np.abs(want - base).max() > 0.1 and np.abs(want).max() > 0.5
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    bad = dict(state, **{"backbone.classifier.out_proj.weight": np.zeros((5, 32))})
    with pytest.raises(GmemError, match="shape"):
        gift.load_original(_torch_style_checkpoint(tmp_path, bad), use, params, rules)


def test_cluster_maps(tiny_vit):
    model, params, x = tiny_vit
    use = gift.GiftUse.make("image_classification", rank=3)
    tr = gift.init_trainable(use, params, jax.random.PRNGKey(2), VIT_RULES)
    tr["gift"]["attn:proj"]["psi"] = 0.3 * jax.random.normal(jax.random.PRNGKey(5), (3, 32))
    maps = gift.cluster_maps(model, use, tr, params, x, layer=1, rules=VIT_RULES)
    assert maps["pre"].shape == maps["post"].shape == (4, 3, 16, 16)
    assert maps["scores_post"].shape == (4, 3, 4, 4)
    for m in (np.asarray(maps["pre"]), np.asarray(maps["post"])):
        assert ((m == 0) | ((m >= 0.5) & (m <= 1.0 + 1e-6))).all() and np.isclose(m.max(), 1.0)
    # scores = (W phi)^T Y^T with Y the layer's full output, captured independently by flax
    _, inter = model.apply(gift.variables(use, tr, params, VIT_RULES), x, capture_intermediates=True,
                           mutable=["intermediates"])
    y = inter["intermediates"]["vit"]["layers_1"]["attention"]["o_proj"]["__call__"][0]
    c = params["vit"]["layers_1"]["attention"]["o_proj"]["kernel"].T @ tr["gift"]["attn:proj"]["phi"]
    want = np.einsum("bnd,dr->brn", np.asarray(y)[:, 1:], np.asarray(c)).reshape(4, 3, 4, 4)
    np.testing.assert_allclose(np.asarray(maps["scores_post"]), want, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(maps["scores_pre"]) - want).max() > 1e-4   # pre-delta differs
    with pytest.raises(GmemError, match="layer=5"):
        gift.cluster_maps(model, use, tr, params, x, layer=5, rules=VIT_RULES)


def test_train_system_from_tiny_config():
    from gmem import config as gconfig
    from gmem.train.system import build_system as build
    cfg = gconfig.load_config(gconfig.CONFIG_DIR / "gift_tiny.yaml",
                              ["system.max_examples=80", "data.batch_size=4"])
    system = build(cfg)
    assert len(system.label_names) == 12 and system.specs[0].targets == ("query", "value")
    base = system.load_base()
    tr = system.init_trainable(base, jax.random.PRNGKey(0))
    batch = {k: jnp.asarray(v) for k, v in system.batch(0).items()}
    assert {k: v.shape for k, v in batch.items()} == {k: s.shape for k, s in system.batch_shapes().items()}
    (loss, aux), g = jax.value_and_grad(system.loss, has_aux=True)(tr, base, batch, None)
    assert np.isfinite(float(loss)) and set(g) == {"gift", "head"}
    assert np.abs(np.asarray(g["gift"]["query"]["psi"])).max() > 0
    ev = system.evaluate(tr, base)
    assert 0.0 <= ev["eval/accuracy"] <= 1.0 and np.isfinite(ev["eval/loss"])
    with pytest.raises(GmemError, match=r"system\.rnak: Key 'rnak' not in 'GiftOptions'"):
        gconfig.load_config(gconfig.CONFIG_DIR / "gift_tiny.yaml", ["system.rnak=4"])
