"""Original GIFT checkpoints as the original writes them: timm training checkpoints whose `args`
is an argparse.Namespace (the released vision files), and the causal LM's checkpoint.pth
beside config/config.json. What the file states is applied or a contradicting spec refused;
activation names mean what the original's mean; anything but the allowed classes is refused.
Numbers: tiny random LLaMA, fp32, logits against a numpy formula reference to 1e-5."""

import argparse
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gmem.adapters import AdapterSpec, adapter_collection, placements  # noqa: E402
from gmem.adapters.gift import _NP_ACTS  # noqa: E402
from gmem.adapters.gift_io import (ORIGINAL_ACTS, gift_spec_from_checkpoint,  # noqa: E402
                                   load_gift_checkpoint, original_act, read_gift_file)
from gmem.errors import GmemError  # noqa: E402
from gmem.nn.projection import _GIFT_ACTS, GIFT_ACT_NAMES  # noqa: E402


def _proj_state(targets, d_in=32, rank=4, seed=0, head=True):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for t in targets:
        state[f"in_projections.{t}.weight"] = torch.rand(rank, d_in, generator=g) * 0.4 - 0.2
        state[f"out_projections.{t}.weight"] = 0.3 * torch.randn(d_in, rank, generator=g)
    if head:
        state["backbone.head.weight"] = torch.randn(5, d_in, generator=g)
        state["backbone.head.bias"] = torch.randn(5, generator=g)
    return state


def _timm_args(**gift):
    """A Namespace shaped like the original's timm train.py command line (a few of its ~170
    fields, the GIFT ones as given)."""
    base = dict(model="vit_base_patch16_224.augreg_in21k", num_classes=5, lr=1e-4, epochs=100,
                opt_betas=[0.9, 0.999], model_kwargs={}, dataopts=["DATA.NAME", "CUB"],
                rank=0, world_size=1, device="cuda:0", method="gift", evaluate=True)
    base.update(gift)
    return argparse.Namespace(**base)


def _timm_checkpoint(path, state, args):
    """Saved as timm's CheckpointSaver saves: epoch, arch, state_dict, optimizer, version, args,
    metric."""
    opt = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4, 32)}},
           "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.0, "params": [0]}]}
    torch.save({"epoch": 99, "arch": "vit_base_patch16_224.augreg_in21k", "state_dict": state,
                "optimizer": opt, "version": 2, "args": args, "metric": 89.71}, path)
    return str(path)


def test_timm_training_checkpoint_with_namespace_args_loads(tmp_path):
    state = _proj_state(["attn:proj"])
    path = _timm_checkpoint(tmp_path / "last.pth.tar", state, _timm_args(
        gift_rank=4, gift_target_modules=["attn:proj"], gift_block_block_type="simple_block",
        gift_block_act_layer="gelu", gift_dtype="float32"))
    gf = read_gift_file(path)
    assert gf.backbone == "vit_base_patch16_224.augreg_in21k" and gf.dtype == "float32"
    assert gf.settings == {"rank": 4, "targets": ("attn:proj",), "share_projections": False,
                           "gift_act": "gelu", "in_projection_bias": False,
                           "out_projection_bias": False, "layers_to_transform": None}
    spec = gift_spec_from_checkpoint(path)
    assert (spec.rank, spec.targets, spec.gift_act, spec.name) == (4, ("attn:proj",), "gelu", "gift")
    tree, rest = load_gift_checkpoint(path, spec)
    np.testing.assert_array_equal(np.asarray(tree["attn:proj"]["phi"]),
                                  state["in_projections.attn:proj.weight"].numpy().T)
    assert set(rest) == {"backbone.head.weight", "backbone.head.bias"}


def test_older_hypernet_names_and_the_distributed_rank(tmp_path):
    # The released files name the GIFT fields hypernet_*; their rank is hypernet_embed_dim,
    # and args.rank is the process rank (0), not GIFT's.
    path = _timm_checkpoint(tmp_path / "last.pth.tar", _proj_state(["attn:proj"]), _timm_args(
        hypernet_embed_dim=4, hypernet_dtype="float32", hypernet_in_projection_bias=False,
        hypernet_out_projection_bias=False, hypernet_target_modules=["attn:proj"],
        hypernet_block_block_type="simple_block", hypernet_block_num_blocks=1,
        hypernet_block_norm_layer="l2", hypernet_checkpoint=""))
    spec = gift_spec_from_checkpoint(path)
    assert (spec.rank, spec.targets, spec.gift_act) == (4, ("attn:proj",), "identity")
    load_gift_checkpoint(path, spec)


class _Custom:
    """Any class but argparse.Namespace."""

    def __init__(self):
        self.x = 1


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.mark.parametrize("extra, named", [
    (lambda tmp: _Custom(), "_Custom"),
    (lambda tmp: __import__("pathlib").PurePosixPath("/x"), "PurePosixPath"),
    (lambda tmp: _Payload(str(tmp / "ran")), "makedirs"),
])
def test_other_classes_are_refused_on_one_line(tmp_path, extra, named):
    path = tmp_path / "last.pth.tar"
    torch.save({"state_dict": _proj_state(["attn:proj"]), "args": _timm_args(gift_rank=4),
                "extra": extra(tmp_path)}, path)
    with pytest.raises(GmemError) as e:
        read_gift_file(str(path))
    msg = str(e.value)
    assert "\n" not in msg and named in msg and "weights_only" in msg and str(path) in msg
    assert not (tmp_path / "ran").exists()


def test_other_training_method_is_refused(tmp_path):
    path = _timm_checkpoint(tmp_path / "last.pth.tar", {}, _timm_args(method="lora", gift_rank=4))
    with pytest.raises(GmemError, match="method='lora'"):
        read_gift_file(path)


def _save_causal_lm(tmp_path, state, **cfg):
    """What GIFTWrapperForCausalLM.save writes: <dir>/config/config.json + <dir>/checkpoint.pth."""
    d = tmp_path / "run"
    (d / "config").mkdir(parents=True)
    full = {"model_type": "gift", "rank": 4, "dtype": "bfloat16",
            "gift_parameters": {"block_type": "simple_block", "act_layer": "identity"},
            "in_projection_bias": False, "out_projection_bias": False,
            "target_modules": ["v_proj", "q_proj"], "enable_gift": None,
            "share_projections": False, "layers_to_transform": None, "layers_pattern": None,
            "transformers_version": "4.40.2"}
    full.update(cfg)
    (d / "config" / "config.json").write_text(json.dumps(full))
    torch.save(state, d / "checkpoint.pth")
    return str(d / "checkpoint.pth")


def _reference(model, params, ids, state, act, layers, targets=("q_proj", "v_proj")):
    """Logits with W' = W + act(W A^T) B^T written (numpy, float64) into the targeted kernels."""
    ref = jax.tree_util.tree_map(np.asarray, params)
    f = _NP_ACTS[act][0]
    for i in layers:
        for t in targets:
            node = ref["model"][f"layers_{i}"]["self_attn"][t]
            w = node["kernel"].T.astype(np.float64)
            a = state[f"in_projections.{t}.weight"].double().numpy()
            b = state[f"out_projections.{t}.weight"].double().numpy()
            node["kernel"] = (w + f(w @ a.T) @ b.T).T.astype(np.float32)
    return np.asarray(model.apply({"params": ref}, ids)[0])


def test_causal_lm_config_json_is_applied_or_refused(tmp_path, tiny_llama):
    model, params, ids = tiny_llama
    state = _proj_state(["q_proj", "v_proj"], head=False)
    path = _save_causal_lm(tmp_path, state, gift_parameters={"block_type": "simple_block",
                                                               "act_layer": "gelu"},
                           layers_to_transform=[1], layers_pattern="layers")
    gf = read_gift_file(path)
    assert gf.source.endswith(os.path.join("config", "config.json")) and gf.dtype == "bfloat16"
    spec = gift_spec_from_checkpoint(path)
    assert spec.targets == ("q_proj", "v_proj")          # sorted, as GIFTConfig sorts them
    assert (spec.gift_act, spec.layers_to_transform) == ("gelu", (1,))
    tree, _ = load_gift_checkpoint(path, spec)
    got = np.asarray(model.apply({"params": params, "adapter": adapter_collection([spec], tree, params)},
                                 ids)[0])
    want = _reference(model, params, ids, state, "gelu", [1])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # left at gmem's defaults (identity, every layer) the same weights compute something else,
    # so a spec that says otherwise is refused, every difference named on one line
    wrong = _reference(model, params, ids, state, "identity", [0, 1])
    assert np.abs(wrong - want).max() > 1e-2
    with pytest.raises(GmemError) as e:
        load_gift_checkpoint(path, AdapterSpec(kind="gift", targets=("q_proj", "v_proj"), rank=4))
    msg = str(e.value)
    assert "\n" not in msg and "gift_act: the file has 'gelu'" in msg
    assert "layers_to_transform: the file has (1,)" in msg
    # an override that contradicts the file is refused as well
    with pytest.raises(GmemError, match="rank: the file has 4"):
        gift_spec_from_checkpoint(path, rank=8)


def test_settings_gmem_cannot_reproduce_are_refused(tmp_path):
    state = _proj_state(["q_proj", "v_proj"], head=False)
    cases = [
        (dict(gift_parameters={"block_type": "mlp", "mlp_ratio": 2.0}), "block_type='mlp'"),
        (dict(gift_parameters={"block_type": "simple_block", "act_layer": "softmax"}), "size 1"),
        (dict(target_modules="q_proj"), "character by character"),
        (dict(layers_to_transform=[0], layers_pattern="decoder_blocks"), "layers_pattern"),
        (dict(target_modules=["qkv"], enable_gift={"qkv": [True, False, True]}), "ModuleList"),
    ]
    for i, (cfg, expect) in enumerate(cases):
        path = _save_causal_lm(tmp_path / str(i), state, **cfg)
        with pytest.raises(GmemError, match=expect):
            read_gift_file(path)


def test_fused_qkv_targets(tmp_path):
    # target "qkv" (timm's fused attn.qkv) is one pair on gmem's q, k and v projections
    from gmem.models import vit
    import flax.linen as nn
    cfg = vit.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, image_size=(16, 16), patch_size=(4, 4), num_labels=5)
    x = jnp.zeros((1, 3, 16, 16))
    params = nn.unbox(vit.ViTForImageClassification(cfg).init(jax.random.PRNGKey(0), x)["params"])
    path = _timm_checkpoint(tmp_path / "a.pth.tar", _proj_state(["qkv"]),
                            _timm_args(gift_rank=4, gift_target_modules=["qkv"]))
    spec = gift_spec_from_checkpoint(path)
    tree, _ = load_gift_checkpoint(path, spec)
    assert set(tree) == {"qkv"}
    got = sorted(placements(spec, params)["qkv"])
    assert got == sorted(f"vit/layers_{i}/attention/{p}_proj" for i in range(2) for p in "qkv")
    # enable_gift q, v with shared projections: the shared pair on q and v only
    path = _timm_checkpoint(tmp_path / "b.pth.tar", _proj_state(["shared_projection"]), _timm_args(
        gift_rank=4, gift_target_modules=["qkv"], gift_enable_gift=["q", "v"],
        gift_share_projections=True))
    with pytest.warns(UserWarning, match="enable_gift"):
        spec = gift_spec_from_checkpoint(path)
    assert spec.targets == ("q_proj", "v_proj") and spec.share_projections
    load_gift_checkpoint(path, spec)
    assert {p.split("/")[-1] for ps in placements(spec, params).values() for p in ps} == {"q_proj", "v_proj"}


# ---- activation names -------------------------------------------------------------------

# What the original's act_layer names compute (its ACTIVATION_LAYERS table, torch modules;
# any other name is nn.Identity).
TORCH_ORIGINAL = {
    "gelu": torch.nn.GELU(), "sigmoid": torch.nn.Sigmoid(), "standard_sigmoid": torch.nn.Sigmoid(),
    "hsigmoid": lambda h: torch.nn.functional.relu6(h + 3.0) / 6.0,
}
NAMES = ("identity", "gelu", "sigmoid", "standard_sigmoid", "hsigmoid", "relu", "tanh", "silu",
         "gelu_tanh", "swish", "Identity")


@pytest.mark.parametrize("name", NAMES)
def test_activation_names_mean_what_the_original_ran(name):
    h = torch.linspace(-5, 5, 101, dtype=torch.float64)
    want = TORCH_ORIGINAL.get(name, lambda z: z)(h).numpy()      # unknown -> nn.Identity
    act = original_act(name)
    assert act in GIFT_ACT_NAMES
    code = GIFT_ACT_NAMES.index(act)
    np.testing.assert_allclose(np.asarray(_GIFT_ACTS[code](jnp.asarray(h.numpy(), jnp.float32))),
                               want, atol=2e-6)
    np.testing.assert_allclose(_NP_ACTS[act][0](h.numpy()), want, atol=1e-12)


def test_gmem_only_activation_names_are_not_silently_identity(tmp_path):
    # gmem's relu/tanh/silu/gelu_tanh are real activations; the original ran those names as
    # identity. A file naming one loads as identity (with a warning), and a spec asking for the
    # real one is refused.
    assert set(ORIGINAL_ACTS) == {"gelu", "sigmoid", "standard_sigmoid", "hsigmoid"}
    path = _save_causal_lm(tmp_path, _proj_state(["q_proj", "v_proj"], head=False),
                           gift_parameters={"block_type": "simple_block", "act_layer": "relu"})
    with pytest.warns(UserWarning, match="ran as identity"):
        assert gift_spec_from_checkpoint(path).gift_act == "identity"
    with pytest.raises(GmemError, match="act_layer='relu', which the original ran as 'identity'"):
        load_gift_checkpoint(path, AdapterSpec(kind="gift", targets=("q_proj", "v_proj"), rank=4,
                                               gift_act="relu"))
    with pytest.raises(GmemError, match="softmax.*size 1"):
        AdapterSpec(kind="gift", gift_act="softmax")
    with pytest.raises(GmemError, match="gift_act='swish'"):
        AdapterSpec(kind="gift", gift_act="swish")


@pytest.mark.parametrize("act", ["hsigmoid", "standard_sigmoid"])
def test_new_activations_merge_and_unmerge(tiny_llama, randomise, act):
    from gmem.adapters import init_adapters, merge, unmerge
    model, params, ids = tiny_llama
    spec = AdapterSpec(kind="gift", targets=("q_proj", "o_proj"), rank=3, gift_act=act,
                       in_projection_bias=True)
    tr = randomise(init_adapters([spec], params, jax.random.PRNGKey(0)), scale=0.3)
    live = np.asarray(model.apply({"params": params, "adapter": adapter_collection([spec], tr, params)}, ids)[0])
    base = np.asarray(model.apply({"params": params}, ids)[0])
    assert np.abs(live - base).max() > 1e-3
    merged = merge([spec], params, tr)
    np.testing.assert_allclose(np.asarray(model.apply({"params": merged}, ids)[0]), live, atol=1e-5)
    back = unmerge([spec], merged, tr)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert math.isfinite(float(np.abs(live).max()))
