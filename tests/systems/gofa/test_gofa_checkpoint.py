"""GOFA's and ICAE's original checkpoint layouts (spec A2, A14.2), written here the way the
originals write them at small dims: a torch ModuleList `g_layers` of modules with GOFAGNNConv's
attribute names plus a PEFT LoRA named `default` on a transformers LLaMA (save_partial's
selection: the g_layers state dict and every parameter whose name holds "default"), and ICAE's
`memory_token_embed` + PEFT LoRA `default` in a safetensors file. Imported with every value in
place; every missing, unexpected and mis-shaped key in one error."""

import pathlib

import numpy as np
import peft
import pytest
import torch
import transformers
from safetensors.torch import save_file

from gmem import config as gconfig
from gmem.errors import GmemError
from gmem.systems.gofa import GOFACompressorSystem, GOFASystem

CONFIGS = pathlib.Path(__file__).resolve().parents[3] / "configs"
D, K, LAYERS = 32, 4, 2


class RMS(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(d))


class GP(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lins = torch.nn.ModuleList([torch.nn.Linear(d, 2 * d), torch.nn.Linear(2 * d, d)])
        self.norms = torch.nn.ModuleList([RMS(2 * d)])


class Conv(torch.nn.Module):
    """GOFAGNNConv's parameters under the original's attribute names (spec A5)."""

    def __init__(self, d):
        super().__init__()
        self.lin_qkv = torch.nn.Linear(d, 3 * d, bias=False)
        self.e_proj = torch.nn.Linear(d, 2 * d, bias=False)
        self.o_proj = torch.nn.Linear(d, d, bias=False)
        for n in ("x_norm", "xe_norm", "layer_norm_ek", "layer_norm_ev", "post_gnn_norm"):
            setattr(self, n, RMS(d))
        self.ff = GP(d)
        self.attn_gate = torch.nn.Parameter(torch.randn(1))
        self.ff_gate = torch.nn.Parameter(torch.randn(1))


# GOFA name -> (gmem path under trainable["gnn"]["layers_i"], transposed)
NAMES = {"lin_qkv.weight": ("lin_qkv/kernel", True), "e_proj.weight": ("e_proj/kernel", True),
         "o_proj.weight": ("o_proj/kernel", True), "x_norm.weight": ("x_norm/scale", False),
         "xe_norm.weight": ("xe_norm/scale", False), "layer_norm_ek.weight": ("layer_norm_ek/scale", False),
         "layer_norm_ev.weight": ("layer_norm_ev/scale", False),
         "post_gnn_norm.weight": ("post_gnn_norm/scale", False), "ff.lins.0.weight": ("ff/lins_0/kernel", True),
         "ff.lins.0.bias": ("ff/lins_0/bias", False), "ff.norms.0.weight": ("ff/norms_0/scale", False),
         "ff.lins.1.weight": ("ff/lins_1/kernel", True), "ff.lins.1.bias": ("ff/lins_1/bias", False),
         "attn_gate": ("attn_gate", False), "ff_gate": ("ff_gate", False)}


def _peft_llama(r):
    cfg = transformers.LlamaConfig(vocab_size=260, hidden_size=D, intermediate_size=64, num_hidden_layers=LAYERS,
                                   num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = peft.get_peft_model(transformers.LlamaForCausalLM(cfg), peft.LoraConfig(
        r=r, lora_alpha=r, target_modules=["q_proj", "v_proj"]), adapter_name="default")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_()
    return model


def save_partial(path, n_layers, lora_rank=None):
    """What GOFA's save_partial writes (torch.save of a plain state dict)."""
    torch.manual_seed(1)
    g_layers = torch.nn.ModuleList([Conv(D) for _ in range(n_layers)])
    sd = dict(g_layers.state_dict())
    if lora_rank:
        full = _peft_llama(lora_rank).get_base_model().state_dict()
        sd.update({k: v for k, v in full.items() if "default" in k})
    torch.save(sd, path)
    return sd


def _gofa(tmp_path, *over):
    cfg = gconfig.load_config(CONFIGS / "gofa_tiny.yaml", [f"train.run_dir={tmp_path}/run", "system.gnn_layers=2",
                                                           *over])
    return GOFASystem(gconfig.to_object(cfg), load_data=False)


def _leaf(tree, path):
    for k in path.split("/"):
        tree = tree[k]
    return np.asarray(tree)


def _import(system):
    base = system.load_base()
    import jax
    return system.init_trainable(base, jax.random.PRNGKey(0))


def test_gofa_instruct_checkpoint_imports_every_value(tmp_path):
    f = tmp_path / "nb_instruct.pth"
    sd = save_partial(f, 2, lora_rank=4)
    s = _gofa(tmp_path, f"system.import_gofa={f}", "system.phase=instruct",
              "adapters=[{name: encadapt, rank: 4, alpha: 8.0}, {name: default, rank: 4, alpha: 4.0}]")
    t = _import(s)
    for g in range(2):
        for name, (path, tr) in NAMES.items():
            want = sd[f"{g}.{name}"].numpy()
            np.testing.assert_array_equal(_leaf(t["gnn"][f"layers_{g}"], path), want.T if tr else want, err_msg=name)
    for i in range(LAYERS):
        for proj in ("q_proj", "v_proj"):
            for ab in ("lora_A", "lora_B"):
                want = sd[f"model.layers.{i}.self_attn.{proj}.{ab}.default.weight"].numpy()
                np.testing.assert_array_equal(_leaf(t["default"], f"model/layers_{i}/self_attn/{proj}/{ab}"), want.T)


def test_gofa_pretrained_checkpoint_keeps_a_fresh_decoder_lora(tmp_path):
    f = tmp_path / "mistral_qamag03_best_ckpt.pth"
    sd = save_partial(f, 2)
    s = _gofa(tmp_path, f"system.import_gofa={f}")
    t = _import(s)
    np.testing.assert_array_equal(_leaf(t["gnn"]["layers_1"], "ff/lins_1/bias"), sd["1.ff.lins.1.bias"].numpy())
    assert "default" not in t


def test_gofa_checkpoint_errors_list_every_key_in_one_line(tmp_path):
    f = tmp_path / "five_of_six.pth"
    sd = save_partial(f, 1, lora_rank=4)          # one layer short, and a decoder LoRA
    sd["0.extra.weight"] = torch.zeros(3)
    sd["0.o_proj.weight"] = torch.zeros(D, D + 1)
    torch.save(sd, f)
    with pytest.raises(GmemError) as e:
        _import(_gofa(tmp_path, f"system.import_gofa={f}"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"system.import_gofa='{f}': does not fit this model (2 GNN layers)")
    assert all(f"missing g_layers.1.{n}" in msg for n in NAMES)
    assert "unexpected g_layers.0.extra.weight" in msg
    assert f"g_layers.0.o_proj.weight: shape ({D}, {D + 1}), expected ({D}, {D})" in msg
    assert "unexpected decoder LoRA (8 keys" in msg and "no adapter named 'default'" in msg


def test_gofa_checkpoint_refuses_pickled_code(tmp_path):
    f = tmp_path / "evil.pth"
    torch.save({"0.attn_gate": torch.zeros(1), "x": transformers.LlamaConfig()}, f)
    with pytest.raises(GmemError, match=r"refused by torch.load\(weights_only=True\)"):
        _import(_gofa(tmp_path, f"system.import_gofa={f}"))


def _icae_file(path, rows, prefix="icae.base_model.model."):
    model = _peft_llama(4)
    sd = {prefix + k.replace("base_model.model.", ""): v.contiguous() for k, v in model.state_dict().items()
          if "default" in k}
    sd["memory_token_embed.weight"] = torch.randn(rows, D)
    save_file(sd, str(path))
    return sd


def test_icae_checkpoint_imports_as_encadapt(tmp_path):
    f = tmp_path / "tiny_icae.safetensors"
    sd = _icae_file(f, K + 3)
    cfg = gconfig.load_config(CONFIGS / "gofa_compressor_tiny.yaml", [f"system.import_icae={f}"])
    s = GOFACompressorSystem(gconfig.to_object(cfg), load_data=False)
    t = _import(s)
    np.testing.assert_array_equal(np.asarray(t["memory_table"]), sd["memory_token_embed.weight"].numpy())
    key = "icae.base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"
    np.testing.assert_array_equal(_leaf(t["encadapt"], "model/layers_1/self_attn/v_proj/lora_B"), sd[key].numpy().T)
    # The same file as GOFA's frozen compressor.
    g = _gofa(tmp_path, f"system.import_icae={f}")
    np.testing.assert_array_equal(np.asarray(g.load_base()["memory_table"]), sd["memory_token_embed.weight"].numpy())


def test_icae_checkpoint_with_other_k_is_refused(tmp_path):
    f = tmp_path / "k128.safetensors"
    _icae_file(f, 131)
    cfg = gconfig.load_config(CONFIGS / "gofa_compressor_tiny.yaml", [f"system.import_icae={f}"])
    with pytest.raises(GmemError, match=r"memory_token_embed.weight: shape \(131, 32\), expected \(7, 32\) .*"
                                        r"system.num_memory_tokens=4"):
        _import(GOFACompressorSystem(gconfig.to_object(cfg), load_data=False))
