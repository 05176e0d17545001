"""LoRA interop with PEFT on transformers models: PEFT -> gmem and gmem -> PEFT give the same
logits (fp32, max abs <= 1e-4), on tiny random LLaMA (and BERT / ViT when those families exist).

Both directions use non-zero lora_B, so a dropped or mis-transposed adapter shows up.
"""

import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from gmem.adapters import AdapterSpec, adapter_collection, init_adapters, merge  # noqa: E402
from gmem.adapters.peft_io import load_peft, save_peft  # noqa: E402
from gmem.errors import GmemError  # noqa: E402
from gmem.hf.keymap import apply_transform, hf_to_gmem  # noqa: E402
from gmem.tree import unflatten  # noqa: E402
from gmem.hf.keymaps.llama import RULES as LLAMA_RULES  # noqa: E402
from gmem.models.llama import LlamaConfig, LlamaForCausalLM  # noqa: E402
from tolerance import assert_close_to_scale  # noqa: E402

TOL = 1e-4


def _convert(hf, rules):
    """HF state dict -> gmem params via the family's key map (buffers without a rule skipped)."""
    flat = {}
    for k, v in hf.state_dict().items():
        hit = hf_to_gmem(k, rules)
        if hit is None:
            continue
        flat[hit[0]] = jnp.asarray(apply_transform(v.float().numpy(), hit[1]))
    return unflatten(flat)


def _llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, attn_implementation="eager")
    hf = transformers.LlamaForCausalLM(cfg).eval()
    ids = np.random.RandomState(0).randint(3, 97, size=(2, 9))
    return hf, LlamaForCausalLM(LlamaConfig.from_hf(cfg)), _convert(hf, LLAMA_RULES), LLAMA_RULES, \
        {"input_ids": ids}


def _bert():
    bert = _family("gmem.models.bert", "BertForSequenceClassification")
    keys = importlib.import_module("gmem.hf.keymaps.bert")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=61, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=48,
                                  max_position_embeddings=40, num_labels=3, attn_implementation="eager")
    hf = transformers.BertForSequenceClassification(cfg).eval()
    _widen_head(hf)
    cfg_cls = _family("gmem.models.bert", "BertConfig")
    ids = np.random.RandomState(0).randint(3, 61, size=(2, 10))
    rules = keys.BERT_SEQUENCE_CLASSIFICATION
    return hf, bert(cfg_cls.from_hf(hf.config)), _convert(hf, rules), rules, {"input_ids": ids}


def _widen_head(hf):
    # HF initialises the classifier with std 0.02, so logits are ~1e-2 and a 1e-4 tolerance
    # would hide little; unit-scale head weights make the comparison meaningful.
    with torch.no_grad():
        hf.classifier.weight.normal_(0, 1.0)


def _vit():
    vit = _family("gmem.models.vit", "ViTForImageClassification")
    keys = importlib.import_module("gmem.hf.keymaps.vit")
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=48, image_size=16, patch_size=4, num_labels=3,
                                 attn_implementation="eager")
    hf = transformers.ViTForImageClassification(cfg).eval()
    _widen_head(hf)
    cfg_cls = _family("gmem.models.vit", "ViTConfig")
    x = np.random.RandomState(0).randn(2, 3, 16, 16).astype(np.float32)
    rules = keys.VIT_IMAGE_CLASSIFICATION
    return hf, vit(cfg_cls.from_hf(hf.config)), _convert(hf, rules), rules, {"pixel_values": x}


def _gpt2():
    gpt2 = _family("gmem.models.gpt2", "GPT2LMHeadModel")
    keys = importlib.import_module("gmem.hf.keymaps.gpt2")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                  attn_implementation="eager")
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    cfg_cls = _family("gmem.models.gpt2", "GPT2Config")
    config = cfg_cls.from_hf(hf.config)
    params = _convert(hf, keys.RULES)
    if config.tie_word_embeddings:
        params.pop("lm_head", None)
    ids = np.random.RandomState(0).randint(3, 97, size=(2, 9))
    return hf, gpt2(config), params, keys.RULES, {"input_ids": ids}


def _family(module, cls):
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        return None


# family -> (builder, PEFT targets on the transformers model, gmem targets as users write them)
FAMILIES = {
    "llama": (_llama, ["q_proj", "v_proj", "down_proj"], ("self_attn:o_proj", "re:.*mlp\\.up_proj")),
    "bert": (_bert, ["query", "value"], ("query", "attention.output.dense")),
    "vit": (_vit, ["q_proj", "v_proj", "fc1"], ("query", "value", "mlp:fc2")),
    # Conv1D layers: PEFT switches fan_in_fan_out on; lora_A/lora_B keep the Linear layout
    "gpt2": (_gpt2, ["c_attn", "c_fc"], ("attn.c_proj", "re:.*mlp\\.c_proj")),
}
AVAILABLE = {"llama": True, "bert": _family("gmem.models.bert", "BertForSequenceClassification"),
             "vit": _family("gmem.models.vit", "ViTForImageClassification"),
             "gpt2": _family("gmem.models.gpt2", "GPT2LMHeadModel")}
FAMILY_PARAMS = [pytest.param(f, marks=pytest.mark.skipif(not AVAILABLE[f], reason=f"gmem {f} family not available"))
                 for f in FAMILIES]


def _hf_logits(model, inputs):
    with torch.no_grad():
        return model(**{k: torch.tensor(v) for k, v in inputs.items()}).logits.float().numpy()


def _gmem_logits(model, params, adapter, inputs):
    variables = {"params": params}
    if adapter is not None:
        variables["adapter"] = adapter
    out = model.apply(variables, *[jnp.asarray(v) for v in inputs.values()])
    return np.asarray(out[0] if isinstance(out, tuple) else out)


def _randomise(tree, seed):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_peft_adapter_imports_into_gmem(tmp_path, family):
    build, peft_targets, _ = FAMILIES[family]
    hf, model, params, rules, inputs = build()
    rs = family != "bert"
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=peft_targets, use_rslora=rs,
                          layers_to_transform=[1] if family == "llama" else None)
    pm = peft.get_peft_model(hf, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)   # PEFT initialises B to zero; make the adapter matter
    pm.save_pretrained(str(tmp_path))
    want = _hf_logits(pm, inputs)
    spec, tree = load_peft(str(tmp_path), rules, params)
    assert spec.use_rslora == rs and spec.rank == 4
    got = _gmem_logits(model, params, adapter_collection([spec], tree), inputs)
    base = _gmem_logits(model, params, None, inputs)
    assert np.abs(want - base).max() > 1e-3            # the adapter changes the output
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    # merged kernels give the same function
    got_m = _gmem_logits(model, merge([spec], params, tree), None, inputs)
    np.testing.assert_allclose(got_m, want, atol=TOL, rtol=0)


@pytest.mark.parametrize("family", FAMILY_PARAMS)
@pytest.mark.parametrize("plain", [True, False], ids=["plain-targets", "gmem-notation"])
def test_gmem_adapter_exports_to_peft(tmp_path, family, plain):
    build, peft_targets, gmem_targets = FAMILIES[family]
    hf, model, params, rules, inputs = build()
    targets = tuple(peft_targets) if plain else gmem_targets
    spec = AdapterSpec(kind="lora", targets=targets, rank=4, alpha=12.0)
    tree = _randomise(init_adapters([spec], params, jax.random.PRNGKey(0), rules)["default"], 1)
    save_peft(str(tmp_path), spec, tree, rules, base_params=params)
    cfg = json.load(open(os.path.join(tmp_path, "adapter_config.json")))
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4
    if plain:
        assert cfg["target_modules"] == list(peft_targets)   # written as the user wrote them
    got = _gmem_logits(model, params, adapter_collection([spec], tree), inputs)
    pm = peft.PeftModel.from_pretrained(hf, str(tmp_path)).eval()
    want = _hf_logits(pm, inputs)
    assert np.abs(want - _gmem_logits(model, params, None, inputs)).max() > 1e-3
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    # and back: gmem reads its own export
    spec2, tree2 = load_peft(str(tmp_path), rules, params)
    got2 = _gmem_logits(model, params, adapter_collection([spec2], tree2), inputs)
    assert_close_to_scale(got2, got, rel=1e-6)   # logits up to ~8: atol 1e-6 was below one float32 ulp


def test_peft_import_rejects_dora_and_shape_mismatch(tmp_path):
    hf, model, params, _, _ = _llama()
    spec = AdapterSpec(kind="lora", targets=("q_proj",), rank=2)
    tree = init_adapters([spec], params, jax.random.PRNGKey(0))["default"]
    save_peft(str(tmp_path), spec, tree, LLAMA_RULES)
    cfg_path = os.path.join(tmp_path, "adapter_config.json")
    cfg = json.load(open(cfg_path))
    json.dump(dict(cfg, use_dora=True), open(cfg_path, "w"))
    with pytest.raises(GmemError, match="use_dora"):
        load_peft(str(tmp_path), LLAMA_RULES, params)
    json.dump(cfg, open(cfg_path, "w"))
    other = jax.tree_util.tree_map(lambda x: x, params)
    other["model"]["layers_0"]["self_attn"]["q_proj"]["kernel"] = jnp.zeros((16, 32))
    with pytest.raises(GmemError, match="does not fit"):
        load_peft(str(tmp_path), LLAMA_RULES, other)

