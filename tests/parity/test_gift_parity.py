"""GIFT against a PyTorch reference written here from the formula (fp32, max abs <= 1e-4).

Reference, per targeted torch Linear with weight W [D_out, D_in] (the original's
GIFTWrapper._gift_forward with the simple_block hypernet):
    dW = act(W A^T + a) B^T + 1 c^T,   W' = W + dW          (= W (I + phi psi) for no bias/act)
with A = in_projections.<t>.weight [r, D_in], a its bias, B = out_projections.<t>.weight
[D_in, r], c its bias. The torch model gets W' written into its weights; gmem gets the same
projections through the original checkpoint key layout and runs them in activation form.
"""

import importlib

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gmem.adapters import AdapterSpec, adapter_collection, merge  # noqa: E402
from gmem.adapters.gift_io import (from_gift_state_dict, load_gift_checkpoint,  # noqa: E402
                                to_gift_state_dict)
from gmem.errors import GmemError  # noqa: E402
from gmem.hf.keymap import apply_transform, hf_to_gmem  # noqa: E402
from gmem.tree import unflatten  # noqa: E402
from gmem.hf.keymaps.llama import RULES as LLAMA_RULES  # noqa: E402
from gmem.models.llama import LlamaConfig, LlamaForCausalLM  # noqa: E402

TOL = 1e-4
TORCH_ACTS = {"identity": lambda h: h, "gelu": torch.nn.functional.gelu, "tanh": torch.tanh}


def _convert(hf, rules):
    flat = {}
    for k, v in hf.state_dict().items():
        hit = hf_to_gmem(k, rules)
        if hit is not None:
            flat[hit[0]] = jnp.asarray(apply_transform(v.float().numpy(), hit[1]))
    return unflatten(flat)


def _gift_state(model, targets, rank, spec, seed=0):
    """A state dict with the original's names and shapes (psi random, not zero)."""
    g = torch.Generator().manual_seed(seed)
    keys = ["shared_projection"] if spec.share_projections else list(targets)
    state = {"backbone.head.weight": torch.zeros(3, 4)}   # left over for the caller
    for t in keys:
        first = next(m for n, m in model.named_modules() if _matches(n, t if t in targets else targets[0]))
        d_in = first.in_features
        state[f"in_projections.{t}.weight"] = torch.rand(rank, d_in, generator=g) * 2 / d_in ** 0.5 - 1 / d_in ** 0.5
        state[f"out_projections.{t}.weight"] = 0.3 * torch.randn(d_in, rank, generator=g)
        if spec.in_projection_bias:
            state[f"in_projections.{t}.bias"] = 0.1 * torch.randn(rank, generator=g)
        if spec.out_projection_bias:
            state[f"out_projections.{t}.bias"] = 0.01 * torch.randn(d_in, generator=g)
    return state


def _matches(name, target, alias=None):
    return name.endswith("." + (alias or {}).get(target, target.replace(":", ".")))


def _reference(model, state, spec, alias=None):
    """Write W' = W + act(W A^T + a) B^T + 1 c^T into every targeted torch Linear."""
    act = TORCH_ACTS[spec.gift_act]
    n_hit = 0
    with torch.no_grad():
        for name, mod in model.named_modules():
            if not isinstance(mod, torch.nn.Linear):
                continue
            for t in spec.targets:
                if _matches(name, t, alias):
                    k = "shared_projection" if spec.share_projections else t
                    w = mod.weight
                    c = w @ state[f"in_projections.{k}.weight"].T
                    if f"in_projections.{k}.bias" in state:
                        c = c + state[f"in_projections.{k}.bias"]
                    dw = act(c) @ state[f"out_projections.{k}.weight"].T
                    if f"out_projections.{k}.bias" in state:
                        dw = dw + state[f"out_projections.{k}.bias"][None, :]
                    mod.weight.add_(dw)
                    n_hit += 1
                    break
    assert n_hit > 0
    return model


LLAMA_SPECS = [
    AdapterSpec(kind="gift", targets=("q_proj", "v_proj"), rank=4),
    AdapterSpec(kind="gift", targets=("q_proj", "v_proj"), rank=4, gift_act="gelu",
                in_projection_bias=True, out_projection_bias=True),
    AdapterSpec(kind="gift", targets=("q_proj", "o_proj"), rank=3, share_projections=True,
                gift_act="tanh", in_projection_bias=True),
]


def _llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, attn_implementation="eager")
    hf = transformers.LlamaForCausalLM(cfg).eval()
    return hf, LlamaForCausalLM(LlamaConfig.from_hf(cfg)), _convert(hf, LLAMA_RULES)


@pytest.mark.parametrize("spec", LLAMA_SPECS, ids=["plain", "gelu-biases", "shared-tanh"])
def test_gift_llama_matches_torch_reference(spec, tmp_path):
    hf, model, params = _llama()
    state = _gift_state(hf, spec.targets, spec.rank, spec)
    ids = np.random.RandomState(0).randint(3, 97, size=(2, 9))
    with torch.no_grad():
        base = hf(input_ids=torch.tensor(ids)).logits.numpy()
        want = _reference(hf, state, spec)(input_ids=torch.tensor(ids)).logits.numpy()
    assert np.abs(want - base).max() > 1e-2
    path = str(tmp_path / "last.pth.tar")
    torch.save({"state_dict": state}, path)
    tree, rest = load_gift_checkpoint(path, spec)
    assert set(rest) == {"backbone.head.weight"}
    coll = adapter_collection([spec], tree, params)
    got = np.asarray(model.apply({"params": params, "adapter": coll}, jnp.asarray(ids))[0])
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    merged = merge([spec], params, tree)
    got_m = np.asarray(model.apply({"params": merged}, jnp.asarray(ids))[0])
    np.testing.assert_allclose(got_m, want, atol=TOL, rtol=0)
    # export writes the original layout back, bit for bit
    back = to_gift_state_dict(tree)
    for k, v in back.items():
        np.testing.assert_array_equal(v, state[k].numpy())


def test_gift_checkpoint_errors():
    spec = AdapterSpec(kind="gift", targets=("q_proj", "v_proj"), rank=4)
    ok = {"in_projections.q_proj.weight": np.zeros((4, 8)), "out_projections.q_proj.weight": np.zeros((8, 4)),
          "in_projections.v_proj.weight": np.zeros((4, 8)), "out_projections.v_proj.weight": np.zeros((8, 4))}
    from_gift_state_dict(ok, spec)
    bad = dict(ok, **{"in_projections.v_proj.weight": np.zeros((2, 8)),
                      "hypernets.q_proj.0.fc.weight": np.zeros((2, 2))})
    bad.pop("out_projections.q_proj.weight")
    with pytest.raises(GmemError) as e:
        from_gift_state_dict(bad, spec)
    msg = str(e.value)
    assert "hypernet" in msg and "q_proj: needs both" in msg and "v_proj: rank 2" in msg


def _bert_cases():
    try:
        from gmem.hf.keymaps import bert as keys
        from gmem.models import bert
    except ImportError:
        return None
    return bert, keys


@pytest.mark.skipif(_bert_cases() is None, reason="gmem.models.bert not available")
def test_gift_roberta_query_value_matches_torch_reference():
    bert, keys = _bert_cases()
    torch.manual_seed(0)
    cfg = transformers.RobertaConfig(vocab_size=61, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=48,
                                     max_position_embeddings=40, num_labels=3,
                                     attn_implementation="eager")
    hf = transformers.RobertaForSequenceClassification(cfg).eval()
    with torch.no_grad():
        hf.classifier.out_proj.weight.normal_(0, 1.0)   # unit-scale logits
    model = bert.RobertaForSequenceClassification(bert.BertConfig.from_hf(hf.config))
    params = _convert(hf, keys.ROBERTA_SEQUENCE_CLASSIFICATION)
    spec = AdapterSpec(kind="gift", targets=("query", "value"), rank=4, gift_act="gelu",
                       in_projection_bias=True, out_projection_bias=True)
    state = _gift_state(hf, spec.targets, spec.rank, spec)
    ids = np.random.RandomState(0).randint(3, 61, size=(2, 10))
    with torch.no_grad():
        base = hf(input_ids=torch.tensor(ids)).logits.numpy()
        want = _reference(hf, state, spec)(input_ids=torch.tensor(ids)).logits.numpy()
    assert np.abs(want - base).max() > 1e-2
    tree, _ = from_gift_state_dict(state, spec)
    coll = adapter_collection([spec], tree, params, rules=keys.ROBERTA_SEQUENCE_CLASSIFICATION)
    got = np.asarray(model.apply({"params": params, "adapter": coll}, jnp.asarray(ids)))
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def _vit():
    try:
        vit = importlib.import_module("gmem.models.vit")
        keys = importlib.import_module("gmem.hf.keymaps.vit")
        return vit, keys
    except ImportError:
        return None


@pytest.mark.skipif(_vit() is None, reason="gmem.models.vit not available")
def test_gift_vit_attn_proj_matches_torch_reference():
    vit, keys = _vit()
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=48, image_size=16, patch_size=4, num_labels=3,
                                 attn_implementation="eager")
    hf = transformers.ViTForImageClassification(cfg).eval()
    rules = keys.VIT_IMAGE_CLASSIFICATION
    with torch.no_grad():
        hf.classifier.weight.normal_(0, 1.0)   # unit-scale logits (HF's head std is 0.02)
    model = vit.ViTForImageClassification(vit.ViTConfig.from_hf(hf.config))
    params = _convert(hf, rules)
    spec = AdapterSpec(kind="gift", targets=("attn:proj",), rank=4)
    # timm's attn.proj is transformers v5's ViT attention.o_proj (file name attention.output.dense)
    alias = {"attn:proj": "attention.o_proj"}
    state = _gift_state(hf, ("attention.o_proj",), spec.rank, spec)
    state = {k.replace("attention.o_proj", "attn:proj"): v for k, v in state.items()}
    x = np.random.RandomState(0).randn(2, 3, 16, 16).astype(np.float32)
    with torch.no_grad():
        base = hf(pixel_values=torch.tensor(x)).logits.numpy()
        want = _reference(hf, state, spec, alias)(pixel_values=torch.tensor(x)).logits.numpy()
    assert np.abs(want - base).max() > 1e-2
    tree, _ = from_gift_state_dict(state, spec)
    coll = adapter_collection([spec], tree, params, rules=rules)
    out = model.apply({"params": params, "adapter": coll}, jnp.asarray(x))
    got = np.asarray(out[0] if isinstance(out, tuple) else out)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
