"""LLaMA/Mistral import and export against transformers (PyTorch), fp32, tiny random models.

Import: HF save_pretrained -> gmem load_pretrained -> logits within 1e-4 max abs on a right- and
a left-padded batch (same explicit position_ids on both sides, real positions compared) and on a
256-token prompt. Export: gmem save_pretrained -> transformers from_pretrained -> logits within
1e-5 of the original torch model.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from gmem.hf.convert import load_pretrained
from gmem.hf.writer import save_pretrained
from gmem.models.llama import LlamaConfig
from dropout_helpers import gmem_masks, torch_replaying

IMPORT_TOL = 1e-4
EXPORT_TOL = 1e-5
VOCAB = 96

CASES = {
    # name: (HF config class, kwargs)
    "mha_untied": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=4)),
    "gqa3_tied": ("LlamaConfig", dict(num_attention_heads=6, num_key_value_heads=2,
                                       tie_word_embeddings=True)),
    "gqa4_llama3_rope": ("LlamaConfig", dict(
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64})),
    "gqa2_linear_rope": ("LlamaConfig", dict(
        num_attention_heads=4, num_key_value_heads=2,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0})),
    "mistral_window": ("MistralConfig", dict(num_attention_heads=4, num_key_value_heads=2,
                                             sliding_window=16)),
}


def _hf_model(name, **extra):
    cls_name, kw = CASES[name]
    kw = dict(kw, **extra)
    heads = kw["num_attention_heads"]
    cfg = getattr(transformers, cls_name)(
        vocab_size=VOCAB, hidden_size=8 * heads, intermediate_size=80, num_hidden_layers=2,
        head_dim=8, rms_norm_eps=1e-5, attn_implementation="eager", initializer_range=0.25, **kw)
    torch.manual_seed(0)
    model = getattr(transformers, cls_name.replace("Config", "ForCausalLM"))(cfg).eval()
    # initializer_range 0.25 gives O(1) logits and peaked attention, so a missing window or rope
    # scaling costs ~10 in max abs logits (measured), far above the 1e-4 tolerance.
    with torch.no_grad():  # random (not all-ones) norms, so a wrong map shows up
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return model


def _torch_logits(model, ids, mask=None, pos=None):
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(ids),
                    attention_mask=None if mask is None else torch.as_tensor(mask),
                    position_ids=None if pos is None else torch.as_tensor(pos))
    return out.logits.numpy()


def _gmem_logits(module, params, ids, mask=None, pos=None):
    logits, _ = module.apply({"params": params}, jnp.asarray(ids),
                             None if mask is None else jnp.asarray(mask),
                             None if pos is None else jnp.asarray(pos))
    return np.asarray(logits)


def _padded_batch(rng, length=12):
    ids = rng.integers(0, VOCAB, (2, length))
    mask = np.ones((2, length), np.int64)
    mask[0, -4:] = 0                              # right padded
    mask[1, :5] = 0                               # left padded
    pos = np.clip(np.cumsum(mask, -1) - 1, 0, None)
    return ids, mask, pos


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    model = _hf_model(request.param)
    folder = tmp_path_factory.mktemp(request.param) / "hf"
    model.save_pretrained(folder)
    module, config, params = load_pretrained(folder)
    return request.param, model, module, config, params


def test_import_padded_batch(pair):
    _, model, module, _, params = pair
    ids, mask, pos = _padded_batch(np.random.default_rng(0))
    ref = _torch_logits(model, ids, mask, pos)
    got = _gmem_logits(module, params, ids, mask, pos)
    real = mask.astype(bool)
    assert np.abs(got[real] - ref[real]).max() < IMPORT_TOL


def test_import_long_prompt(pair):
    name, model, module, config, params = pair
    ids = np.random.default_rng(1).integers(0, VOCAB, (1, 256))
    if name == "mistral_window":  # the window really cuts the context
        assert config.sliding_window == 16 < ids.shape[1]
    ref = _torch_logits(model, ids)
    got = _gmem_logits(module, params, ids)
    assert np.abs(got - ref).max() < IMPORT_TOL


def test_config_round_trip(pair):
    name, model, _, config, params = pair
    assert config.tie_word_embeddings == ("lm_head" not in params)
    assert config.num_key_value_heads == model.config.num_key_value_heads


def test_export_reloads_in_transformers(pair, tmp_path):
    name, model, _, config, params = pair
    out = save_pretrained(tmp_path / "export", config, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        out, attn_implementation="eager").eval()
    assert type(reloaded) is type(model)
    ids, mask, pos = _padded_batch(np.random.default_rng(2))
    ref = _torch_logits(model, ids, mask, pos)
    got = _torch_logits(reloaded, ids, mask, pos)
    real = mask.astype(bool)
    assert np.abs(got[real] - ref[real]).max() < EXPORT_TOL
    if config.tie_word_embeddings:
        assert "lm_head.weight" not in json.dumps(sorted(_safetensor_keys(out)))


def _safetensor_keys(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="np") as f:
        return list(f.keys())


def test_sharded_safetensors_and_torch_bin(tmp_path):
    model = _hf_model("gqa3_tied")
    ids = np.random.default_rng(3).integers(0, VOCAB, (1, 20))
    ref = _torch_logits(model, ids)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    binary = tmp_path / "bin"
    binary.mkdir()
    model.config.save_pretrained(binary)
    # Older checkpoints: a pickled state dict, with a rotary buffer that must be ignored.
    sd = dict(model.state_dict(), **{"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(4)})
    torch.save(sd, binary / "pytorch_model.bin")
    for folder in (sharded, binary):
        module, _, params = load_pretrained(folder)
        assert np.abs(_gmem_logits(module, params, ids) - ref).max() < IMPORT_TOL


def test_export_sharded_reloads(tmp_path):
    model = _hf_model("mha_untied")
    module, config, params = load_pretrained(_saved(model, tmp_path / "src"))
    out = save_pretrained(tmp_path / "out", config, params, max_shard_bytes=30_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    # eager, as the source model: the default (sdpa) kernel alone moves logits of ~5 by 4.5e-6,
    # half of EXPORT_TOL; with the same kernel the exported weights give the same logits.
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = np.random.default_rng(4).integers(0, VOCAB, (1, 10))
    assert np.abs(_torch_logits(reloaded, ids) - _torch_logits(model, ids)).max() < EXPORT_TOL


def _saved(model, folder):
    model.save_pretrained(folder)
    return folder


def test_attention_dropout_read_written_and_matches_hf_in_both_modes(tmp_path, monkeypatch):
    """attention_dropout comes in from the HF config and goes back out (default 0.0 as HF's).
    Eval (no "dropout" rng) matches HF's eval mode; train mode matches HF's train mode when
    torch replays gmem's keep masks (GQA 6/2, so the mask's head layout is checked too)."""
    model = _hf_model("gqa3_tied", attention_dropout=0.3)
    module, config, params = load_pretrained(_saved(model, tmp_path / "hf"))
    assert config.attention_dropout == 0.3 and config.to_hf()["attention_dropout"] == 0.3
    assert transformers.LlamaConfig(**config.to_hf()).attention_dropout == 0.3
    d = {k: v for k, v in model.config.to_dict().items() if k != "attention_dropout"}
    assert LlamaConfig.from_hf(d).attention_dropout == 0.0
    ids, mask, pos = _padded_batch(np.random.default_rng(5))
    real = mask.astype(bool)
    plain = _gmem_logits(module, params, ids, mask, pos)
    assert np.abs(plain[real] - _torch_logits(model, ids, mask, pos)[real]).max() < IMPORT_TOL
    got, masks = gmem_masks(monkeypatch, lambda: np.asarray(module.apply(
        {"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pos),
        rngs={"dropout": jax.random.PRNGKey(0)})[0]))
    assert len(masks) == 2 and masks[0].shape == (2, 6, 12, 12)
    model.train()
    with torch_replaying(monkeypatch, 0.3, masks):
        ref = _torch_logits(model, ids, mask, pos)
    assert np.abs(got[real] - ref[real]).max() < IMPORT_TOL
    assert np.abs(got[real] - plain[real]).max() > 100 * IMPORT_TOL  # the dropout did act
