"""GIFT against the original code: savadikarc/gift's own GIFTWrapper* modules, not a formula.

    GMEM_ORIGINAL_GIFT=/path/to/gift python -m pytest tests/parity/test_gift_original.py -q -ra

GMEM_ORIGINAL_GIFT is a checkout of the original repository (its root, which holds
gift/gift/modeling_gift.py). Its code is imported from there at test time and never copied
into gmem. Without the variable the module is skipped, and -ra prints why. The original needs
torch, transformers and timm (timm through tests/timm_shim.py); it was read at f0cb80c.

Each case builds a tiny random backbone in torch, wraps it in the original's wrapper, gives
every GIFT parameter non-zero values (psi is zero at init), runs the original forward, saves
the checkpoint the way the original's scripts save it, and loads that file into gmem through
gmem's public loaders, with the settings stored beside the weights applied by gmem, not
restated here. Logits are compared in the activation form and merged into the kernels.
Tolerance 1e-4 absolute on fp32 logits of size 0.4 to 5.6; the worst case measured is in README.md.
"""

import argparse
import contextlib
import os
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.environ.get("GMEM_ORIGINAL_GIFT")
if not ROOT:
    pytest.skip("GMEM_ORIGINAL_GIFT is not set: point it at a checkout of the original GIFT "
                "repository (savadikarc/gift) to compare gmem with its GIFTWrapper* code",
                allow_module_level=True)
if not os.path.isfile(os.path.join(ROOT, "gift", "gift", "modeling_gift.py")):
    raise RuntimeError(f"GMEM_ORIGINAL_GIFT={ROOT}: no gift/gift/modeling_gift.py under it; "
                       "give the repository root")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from timm_shim import import_timm  # noqa: E402

timm = import_timm()               # the original's hypernet module imports timm.layers
sys.path.insert(0, ROOT)
from gift.gift import (GIFTConfig, GIFTWrapperForCausalLM,  # noqa: E402
                       GIFTWrapperForSeqClassification)
from gift.gift.hypernet.hypernet import SimpleBlock  # noqa: E402

# The vision scripts' model builder (build_gift: args -> GIFTConfig + wrapper) imports loralib
# for its LoRA baseline; the harness does not run LoRA, so an empty stand-in serves the import.
_had_loralib = "loralib" in sys.modules
sys.modules.setdefault("loralib", types.ModuleType("loralib"))
from gift.model_builder import build_gift  # noqa: E402
if not _had_loralib:
    del sys.modules["loralib"]

from gmem.adapters import adapter_collection, merge  # noqa: E402
from gmem.adapters.gift_io import (gift_spec_from_checkpoint, load_gift_checkpoint,  # noqa: E402
                                original_act, read_gift_file)
from gmem.errors import GmemError  # noqa: E402
from gmem.hf.keymap import apply_transform, hf_to_gmem  # noqa: E402
from gmem.tree import unflatten  # noqa: E402
from gmem.hf.keymaps import bert as bert_keys  # noqa: E402
from gmem.hf.keymaps import llama as llama_keys  # noqa: E402
from gmem.hf.keymaps import vit as vit_keys  # noqa: E402
from gmem.hf.timm import load_timm_vit  # noqa: E402
from gmem.models import bert  # noqa: E402
from gmem.models.llama import LlamaConfig, LlamaForCausalLM  # noqa: E402
from gmem.systems.gift import uses as gsys  # noqa: E402

pytestmark = pytest.mark.original
TOL = 1e-4
ERRORS = {}      # case -> max abs error, printed at the end (README's table)


def _block(act="identity"):
    return {"block_type": "simple_block", "act_layer": act}


def _fill(wrapper, seed=0):
    """Non-zero values for every GIFT parameter (U(+-1/sqrt(d_in)) for phi, N(0, 0.3) for psi)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in wrapper.named_parameters():
            if "backbone" in name:
                continue
            if name.startswith("in_projections"):
                b = 1.0 / p.shape[-1] ** 0.5
                p.copy_(torch.rand(p.shape, generator=g) * 2 * b - b)
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def _convert(state, rules, skip=()):
    flat = {}
    for k, v in state.items():
        hit = hf_to_gmem(k, rules)
        if hit is not None and not any(k.startswith(s) for s in skip):
            flat[hit[0]] = jnp.asarray(apply_transform(v.detach().float().numpy(), hit[1]))
    return unflatten(flat)


def _check(case, got, want):
    err = float(np.abs(np.asarray(got) - want).max())
    ERRORS[case] = max(err, ERRORS.get(case, 0.0))
    np.testing.assert_allclose(np.asarray(got), want, atol=TOL, rtol=0)


# ---- sequence classification: RoBERTa, query + value, the GLUE wrapper ---------------------

@pytest.mark.parametrize("act, bias", [("identity", False), ("gelu", True)])
def test_roberta_seq_classification(tmp_path, act, bias):
    torch.manual_seed(0)
    cfg = transformers.RobertaConfig(vocab_size=61, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=48,
                                     max_position_embeddings=40, num_labels=3,
                                     attn_implementation="eager")
    backbone = transformers.RobertaForSequenceClassification(cfg).eval()
    with torch.no_grad():
        backbone.classifier.out_proj.weight.normal_(0, 1.0)
    base_state = {k: v.clone() for k, v in backbone.state_dict().items()}
    wrapper = GIFTWrapperForSeqClassification(GIFTConfig(
        rank=4, target_modules=["query", "value"], gift_parameters=_block(act),
        in_projection_bias=bias, out_projection_bias=bias), backbone).eval()
    _fill(wrapper)
    with torch.no_grad():     # the classifier trains too: move it off the base
        for p in backbone.classifier.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ids = np.random.RandomState(0).randint(3, 61, size=(2, 9))
    with torch.no_grad():
        want = wrapper(input_ids=torch.tensor(ids)).logits.numpy()
    path = str(tmp_path / "gift.pth")
    torch.save(wrapper.state_dict(), path)        # the GLUE script's bare state dict
    rules = bert_keys.ROBERTA_SEQUENCE_CLASSIFICATION
    params = _convert(base_state, rules)
    model = bert.RobertaForSequenceClassification(bert.BertConfig.from_hf(cfg))
    use = gsys.GiftUse.make("sequence_classification", rank=4, gift_act=act,
                            in_projection_bias=bias, out_projection_bias=bias)
    tr = gsys.load_original(path, use, params, rules)
    _check(f"RoBERTa q,v {act}{' +bias' if bias else ''}",
           model.apply(gsys.variables(use, tr, params, rules), jnp.asarray(ids)), want)
    merged = merge([use.spec], dict(params, **tr["head"]), tr["gift"], rules)
    _check(f"RoBERTa q,v {act}{' +bias' if bias else ''} (merged)",
           model.apply({"params": merged}, jnp.asarray(ids)), want)


# ---- causal LM: LLaMA, save() writes config/config.json beside checkpoint.pth -------------

@pytest.mark.parametrize("kw", [
    dict(target_modules=["q_proj", "v_proj"], gift_parameters=_block("gelu"), layers_to_transform=[1]),
    dict(target_modules=["q_proj", "o_proj"], gift_parameters=_block("sigmoid"), share_projections=True),
    dict(target_modules=["v_proj", "q_proj"], gift_parameters=_block("relu")),   # ran as identity
], ids=["gelu-layer1", "shared-sigmoid", "relu-is-identity"])
def test_llama_causal_lm_saved_with_its_config(tmp_path, kw):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, attn_implementation="eager")
    backbone = transformers.LlamaForCausalLM(cfg).eval()
    base_state = {k: v.clone() for k, v in backbone.state_dict().items()}
    wrapper = GIFTWrapperForCausalLM(GIFTConfig(rank=4, **kw), backbone).eval()
    _fill(wrapper)
    ids = np.random.RandomState(0).randint(3, 97, size=(2, 9))
    with torch.no_grad():
        want = wrapper(input_ids=torch.tensor(ids)).logits.numpy()
        base = backbone.__class__(cfg).eval()
        base.load_state_dict(base_state)
        assert np.abs(base(input_ids=torch.tensor(ids)).logits.numpy() - want).max() > 1e-2
    wrapper.save(str(tmp_path / "run"))
    path = str(tmp_path / "run" / "checkpoint.pth")
    with pytest.warns(UserWarning) if "relu" in str(kw) else contextlib.nullcontext():
        spec = gift_spec_from_checkpoint(path)
    tree, _ = load_gift_checkpoint(path, spec)
    params = _convert(base_state, llama_keys.RULES)
    model = LlamaForCausalLM(LlamaConfig.from_hf(cfg))
    coll = adapter_collection([spec], tree, params)
    case = "LLaMA " + "-".join(kw["target_modules"]) + f" {kw['gift_parameters']['act_layer']}"
    _check(case, model.apply({"params": params, "adapter": coll}, jnp.asarray(ids))[0], want)
    _check(case + " (merged)", model.apply({"params": merge([spec], params, tree)}, jnp.asarray(ids))[0], want)


# ---- image classification: timm ViT, timm training checkpoints with args ------------------

def _tiny_timm_vit():
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                          num_classes=5).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        m.head.weight.normal_(0, 0.5)
    return m


def _vision_args(**gift):
    """The GIFT part of the original's timm train.py command line, as its argparse stores it."""
    a = dict(method="gift", model="vit_tiny_test", num_classes=5, rank=0, gift_rank=4,
             gift_dtype="float32", gift_in_projection_bias=False, gift_out_projection_bias=False,
             gift_target_modules=["attn:proj"], gift_enable_gift=None, gift_share_projections=False,
             gift_block_block_type="simple_block", gift_block_num_blocks=1,
             gift_block_act_layer="identity", reset_classifier=False)
    a.update(gift)
    return argparse.Namespace(**a)


@pytest.mark.parametrize("gift", [
    dict(),
    dict(gift_block_act_layer="gelu", gift_in_projection_bias=True, gift_out_projection_bias=True),
    dict(gift_target_modules=["qkv"]),
    dict(gift_target_modules=["qkv"], gift_enable_gift=["q", "v"], gift_share_projections=True),
    dict(gift_target_modules=["attn:proj", "mlp:fc2"], gift_block_act_layer="hsigmoid"),
], ids=["attn-proj", "gelu-biases", "fused-qkv", "qkv-enable-q-v-shared", "proj-fc2-hsigmoid"])
def test_timm_vit_image_classification(tmp_path, gift):
    backbone = _tiny_timm_vit()
    base_state = {k: v.clone() for k, v in backbone.state_dict().items()}
    args = _vision_args(**gift)
    wrapper = build_gift(backbone, args).eval()     # the original's own builder
    _fill(wrapper)
    x = np.random.RandomState(0).randn(2, 3, 32, 32).astype(np.float32)
    with torch.no_grad():
        want = wrapper(torch.tensor(x)).numpy()
    path = str(tmp_path / "last.pth.tar")
    torch.save({"epoch": 99, "arch": args.model, "state_dict": wrapper.state_dict(),
                "optimizer": {"state": {}, "param_groups": []}, "version": 2, "args": args,
                "metric": 50.0}, path)
    module, _, params = load_timm_vit(base_state, num_heads=4)
    with pytest.warns(UserWarning) if "enable" in str(gift) else contextlib.nullcontext():
        spec = gift_spec_from_checkpoint(path)
    use = gsys.GiftUse(spec, ("classifier",))
    rules = vit_keys.VIT_IMAGE_CLASSIFICATION
    tr = gsys.load_original(path, use, params, rules)
    case = "timm ViT " + "-".join(args.gift_target_modules) + f" {args.gift_block_act_layer}" + \
        (" q,v shared" if args.gift_enable_gift else "") + (" +bias" if args.gift_in_projection_bias else "")
    _check(case, module.apply(gsys.variables(use, tr, params, rules), jnp.asarray(x)), want)
    merged = merge([spec], dict(params, **tr["head"]), tr["gift"], rules)
    _check(case + " (merged)", module.apply({"params": merged}, jnp.asarray(x)), want)


# ---- the released checkpoints (artifacts/*/gift/final/final/last.pth.tar) ----------------

RELEASED = sorted(d for d in ("CUB", "OxfordFlowers", "StanfordCars", "StanfordDogs", "nabirds")
                  if os.path.isfile(os.path.join(ROOT, "artifacts", d, "gift", "final", "final",
                                                 "last.pth.tar")))


@pytest.mark.slow
@pytest.mark.parametrize("dataset", RELEASED or ["none"])
def test_released_checkpoint_on_the_papers_backbone(dataset):
    """A released file as it is (timm training checkpoint, args of the hypernet_* era) on
    timm's vit_base_patch16_224.augreg_in21k with random backbone weights (the pretrained ones
    are not reachable offline): the original wrapper with the file loaded its way against gmem
    with the settings read from the file."""
    if dataset == "none":
        pytest.skip(f"no artifacts/*/gift/final/final/last.pth.tar under {ROOT}")
    path = os.path.join(ROOT, "artifacts", dataset, "gift", "final", "final", "last.pth.tar")
    spec = gift_spec_from_checkpoint(path)
    gf = read_gift_file(path)
    name, classes = gf.backbone, gf.state["backbone.head.weight"].shape[0]
    torch.manual_seed(0)
    backbone = timm.create_model(name, pretrained=False, num_classes=classes).eval()
    base_state = {k: v.clone() for k, v in backbone.state_dict().items()}
    wrapper = _build_gift_from_file(path, backbone)
    x = np.random.RandomState(0).randn(2, 3, 224, 224).astype(np.float32)
    with torch.no_grad():
        want = wrapper(torch.tensor(x)).numpy()
    module, _, params = load_timm_vit(base_state, model_name=name)
    use = gsys.GiftUse(spec, ("classifier",))
    rules = vit_keys.VIT_IMAGE_CLASSIFICATION
    tr = gsys.load_original(path, use, params, rules)
    _check(f"released {dataset} on {name}", module.apply(gsys.variables(use, tr, params, rules),
                                                          jnp.asarray(x)), want)


def _build_gift_from_file(path, backbone):
    """The original's wrapper with a released file loaded the original's way (its train.py
    --gift_checkpoint path: build_gift from the file's args, then load_state_dict)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        ck = torch.load(path, map_location="cpu", weights_only=True)
    a = vars(ck["args"])
    args = _vision_args(gift_rank=a["hypernet_embed_dim"], gift_target_modules=a["hypernet_target_modules"],
                        gift_in_projection_bias=a["hypernet_in_projection_bias"],
                        gift_out_projection_bias=a["hypernet_out_projection_bias"],
                        gift_block_block_type=a["hypernet_block_block_type"])
    wrapper = build_gift(backbone, args).eval()
    missing, unexpected = wrapper.load_state_dict(ck["state_dict"], strict=False)
    assert not unexpected and all(k.startswith("backbone.") and "head" not in k for k in missing)
    return wrapper


# ---- activation names: the original's SimpleBlock itself ---------------------------------

@pytest.mark.parametrize("name", ["identity", "gelu", "sigmoid", "standard_sigmoid", "hsigmoid",
                                  "relu", "tanh", "silu", "gelu_tanh", "anything"])
def test_activation_names_against_simple_block(name):
    from gmem.nn.projection import _GIFT_ACTS, GIFT_ACT_NAMES
    w = torch.randn(1, 7, 4, dtype=torch.float32) * 3     # [1, D_out, r], as Hypernet passes it
    with torch.no_grad():
        want = SimpleBlock(4, act_layer=name)(w).numpy()
    got = _GIFT_ACTS[GIFT_ACT_NAMES.index(original_act(name))](jnp.asarray(w.numpy()))
    _check("SimpleBlock activations", got, want)


def test_softmax_is_the_constant_one_and_refused():
    w = torch.randn(1, 7, 4)
    with torch.no_grad():
        out = SimpleBlock(4, act_layer="softmax")(w)
    np.testing.assert_array_equal(out.numpy(), np.ones((1, 7, 4), np.float32))
    with pytest.raises(GmemError, match="size 1"):
        original_act("softmax")


def test_report_max_errors():
    """Print the worst error per case (run last; -s shows it)."""
    for k, v in sorted(ERRORS.items()):
        print(f"{k}: {v:.2e}")
    assert not ERRORS or max(ERRORS.values()) <= TOL
