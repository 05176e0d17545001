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
from gmem.hf.keymap import apply_transform, hf_to_gmem, unflatten  # noqa: E402
from gmem.hf.keymaps.llama import RULES as LLAMA_RULES  # noqa: E402
from gmem.models.llama import LlamaConfig, LlamaForCausalLM  # noqa: E402

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
    return hf, LlamaForCausalLM(LlamaConfig.from_hf(cfg)), _convert(hf, LLAMA_RULES)


def _ids():
    return np.random.RandomState(0).randint(3, 97, size=(2, 9))


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits.float().numpy()


def _gmem_logits(model, params, adapter, ids):
    variables = {"params": params}
    if adapter is not None:
        variables["adapter"] = adapter
    out = model.apply(variables, jnp.asarray(ids))
    return np.asarray(out[0] if isinstance(out, tuple) else out)


def _randomise(tree, seed):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("use_rslora", [False, True])
def test_peft_adapter_imports_into_gmem(tmp_path, use_rslora):
    hf, model, params = _llama()
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                          use_rslora=use_rslora, layers_to_transform=[1] if use_rslora else None)
    pm = peft.get_peft_model(hf, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)   # PEFT initialises B to zero; make the adapter matter
    pm.save_pretrained(str(tmp_path))
    ids = _ids()
    want = _hf_logits(pm, ids)
    spec, tree = load_peft(str(tmp_path), LLAMA_RULES, params)
    assert spec.use_rslora == use_rslora and spec.rank == 4
    got = _gmem_logits(model, params, adapter_collection([spec], tree), ids)
    base = _gmem_logits(model, params, None, ids)
    assert np.abs(want - base).max() > 1e-2            # the adapter changes the output
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    # merged kernels give the same function
    got_m = _gmem_logits(model, merge([spec], params, tree), None, ids)
    np.testing.assert_allclose(got_m, want, atol=TOL, rtol=0)


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ("self_attn:o_proj", "re:.*mlp\\.up_proj")])
def test_gmem_adapter_exports_to_peft(tmp_path, targets):
    hf, model, params = _llama()
    spec = AdapterSpec(kind="lora", targets=targets, rank=4, alpha=12.0)
    tree = _randomise(init_adapters([spec], params, jax.random.PRNGKey(0))["default"], 1)
    save_peft(str(tmp_path), spec, tree, LLAMA_RULES)
    cfg = json.load(open(os.path.join(tmp_path, "adapter_config.json")))
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4
    ids = _ids()
    got = _gmem_logits(model, params, adapter_collection([spec], tree), ids)
    pm = peft.PeftModel.from_pretrained(hf, str(tmp_path)).eval()
    want = _hf_logits(pm, ids)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    # and back: gmem reads its own export
    spec2, tree2 = load_peft(str(tmp_path), LLAMA_RULES, params)
    got2 = _gmem_logits(model, params, adapter_collection([spec2], tree2), ids)
    np.testing.assert_allclose(got2, got, atol=1e-6, rtol=0)


def test_peft_import_rejects_dora_and_shape_mismatch(tmp_path):
    hf, model, params = _llama()
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


def _family(module, cls):
    try:
        mod = importlib.import_module(module)
        return getattr(mod, cls)
    except (ImportError, AttributeError):
        return None
