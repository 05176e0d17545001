"""gmem.hf import/export mechanics: error reporting, sharded loading, GGUF import, atomic writes.

Tiny random LLaMA models; PyTorch (transformers) is the reference. Tolerance 1e-4 max abs fp32.
"""

import json

import flax.linen as nn
import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from jax.sharding import AxisType, NamedSharding
from safetensors.numpy import load_file, save_file

from gmem.errors import GmemError
from gmem.hf.convert import abstract_params, load_pretrained
from gmem.hf.gguf import load_gguf
from gmem.hf.registry import FAMILIES
from gmem.hf.gguf_tokenizer import tokenizer_from_gguf_reader
from gmem.hf.writer import save_pretrained

TOL = 1e-4
HEADS, KV, HD, VOCAB = 4, 2, 8, 96


def _model(tie=False, vocab=VOCAB):
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=HEADS * HD, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=HEADS,
                                   num_key_value_heads=KV, head_dim=HD, rms_norm_eps=1e-5,
                                   rope_theta=10000.0, tie_word_embeddings=tie)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _ref(model, ids):
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.numpy()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    model = _model()
    folder = tmp_path_factory.mktemp("hf") / "llama"
    model.save_pretrained(folder)
    return model, folder


def test_all_key_problems_in_one_error(hf_folder, tmp_path):
    _, folder = hf_folder
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((folder / "config.json").read_text())
    sd = load_file(str(folder / "model.safetensors"))
    del sd["model.layers.1.mlp.up_proj.weight"]                          # missing
    sd["model.layers.0.self_attn.q_norm.weight"] = np.ones(8, np.float32)  # unexpected
    sd["model.extra.weight"] = np.ones(3, np.float32)                      # unexpected, no rule
    sd["model.layers.0.mlp.down_proj.weight"] = np.ones((5, 7), np.float32)  # mis-shaped
    save_file(sd, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(GmemError) as e:
        load_pretrained(bad)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg
    assert "1 missing, 2 unexpected, 1 mis-shaped" in msg
    assert "missing model.layers.1.mlp.up_proj.weight (-> model/layers_1/mlp/up_proj/kernel)" in msg
    assert "unexpected model.extra.weight" in msg
    assert "unexpected model.layers.0.self_attn.q_norm.weight" in msg
    assert "mis-shaped model.layers.0.mlp.down_proj.weight has shape [5, 7], expected [32, 64]" in msg


def test_missing_files_and_unknown_architecture(tmp_path, hf_folder):
    with pytest.raises(GmemError, match="config.json: not found"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["FooForBar"],
                                                      "model_type": "foo"}))
    with pytest.raises(GmemError, match="FooForBar.*not supported"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((hf_folder[1] / "config.json").read_text())
    with pytest.raises(GmemError, match="no weights found"):
        load_pretrained(tmp_path)


def test_load_onto_named_shardings(hf_folder):
    model, folder = hf_folder
    mesh = jax.make_mesh((2, 4), ("data", "tensor"), axis_types=(AxisType.Auto,) * 2)
    rules = (("vocab", "tensor"), ("mlp", "tensor"), ("heads", "tensor"), ("kv_heads", "tensor"),
             ("embed", None), ("head_dim", None))
    fam = FAMILIES[0]
    config = fam.config_cls.from_hf(json.loads((folder / "config.json").read_text()))
    boxed = abstract_params(fam, config, boxed=True)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    module, _, params = load_pretrained(folder, shardings=shardings)
    flat_p = jax.tree_util.tree_leaves_with_path(params)
    flat_s = dict(jax.tree_util.tree_leaves_with_path(shardings))
    assert len(flat_p) == len(flat_s) == 2 * 9 + 3
    for path, arr in flat_p:
        assert isinstance(arr.sharding, NamedSharding)
        assert arr.sharding.is_equivalent_to(flat_s[path], arr.ndim), path
    up = params["model"]["layers_0"]["mlp"]["up_proj"]["kernel"]
    assert up.sharding.spec == jax.sharding.PartitionSpec(None, "tensor")
    assert len(up.addressable_shards) == 8 and up.addressable_shards[0].data.shape == (32, 16)
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, 9))
    got = jax.jit(module.apply)({"params": params}, jnp.asarray(ids))[0]
    assert np.abs(np.asarray(got) - _ref(model, ids)).max() < TOL


def test_dtype_and_config_overrides(hf_folder):
    _, folder = hf_folder
    _, config, params = load_pretrained(folder, dtype=jnp.bfloat16, remat=True)
    assert config.remat
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(params))


def test_export_is_atomic(hf_folder, tmp_path):
    _, folder = hf_folder
    _, config, params = load_pretrained(folder)
    out = tmp_path / "out"
    save_pretrained(out, config, params)
    before = sorted(p.name for p in out.iterdir())
    broken = dict(params, stray={"kernel": jnp.ones((2, 2))})  # no HF key: fails before writing
    with pytest.raises(GmemError, match="no HF key for stray/kernel"):
        save_pretrained(out, config, broken)

    class Boom:
        def save_pretrained(self, d):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_pretrained(out, config, params, tokenizer=Boom())  # fails half way
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folders left


# --- GGUF: a tiny file written the way llama.cpp's converter does -------------------------

def _llama_cpp_permute(w, n_head):
    # convert_hf_to_gguf.py LlamaModel.permute: HF rotate_half rows -> interleaved pairs.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _byte_vocab():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he", "l l", "e ll", "Ġ w"]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + chars + [m.replace(" ", "") for m in merges]
    return tokens, merges


GGUF_VOCAB = 3 + 256 + 6  # specials, byte alphabet, merged tokens


def _write_gguf(model, path, quantize_embed=True):
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    c = model.config
    tokens, merges = _byte_vocab()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(128)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(HD)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    emb = sd["model.embed_tokens.weight"]
    if quantize_embed:  # Q8_0 blocks, as real files store them
        q = gguf.quants.quantize(emb, gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor("token_embd.weight", q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        emb = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)
    else:
        w.add_tensor("token_embd.weight", emb)
    for i in range(c.num_hidden_layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = _llama_cpp_permute(t, HEADS)
            elif gg == "attn_k":
                t = _llama_cpp_permute(t, KV)
            w.add_tensor(f"blk.{i}.{gg}.weight", np.ascontiguousarray(t))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return emb


def test_gguf_import_matches_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("GMEM_CACHE", str(tmp_path / "cache"))
    model = _model(tie=True, vocab=GGUF_VOCAB)
    path = tmp_path / "tiny.gguf"
    emb = _write_gguf(model, path)
    with torch.no_grad():  # the reference sees the same Q8_0-rounded embedding
        model.model.embed_tokens.weight.copy_(torch.as_tensor(emb))
    ids = np.random.default_rng(0).integers(0, GGUF_VOCAB, (1, 16))
    ref = _ref(model, ids)
    for cache in (False, True):
        module, config, params = load_gguf(path, cache=cache)
        assert config.tie_word_embeddings and config.num_key_value_heads == KV
        got = np.asarray(module.apply({"params": params}, jnp.asarray(ids))[0])
        assert np.abs(got - ref).max() < TOL
    assert len(list((tmp_path / "cache" / "gguf").iterdir())) == 1


def test_gguf_tokenizer_and_errors(tmp_path):
    model = _model(tie=True, vocab=GGUF_VOCAB)
    path = tmp_path / "tiny.gguf"
    _write_gguf(model, path, quantize_embed=False)
    tok = tokenizer_from_gguf_reader(gguf.GGUFReader(str(path)))
    ids = tok("the hell 12").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["t", "he", "Ġ", "he", "ll", "Ġ", "1", "2"]
    assert tok.decode(ids) == "the hell 12"
    assert tok("<|im_start|>x").input_ids[0] == 1  # control tokens stay whole
    assert tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|im_start|>hi<|im_end|>"
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(GmemError, match="junk.gguf: not a readable GGUF"):
        load_gguf(tmp_path / "junk.gguf", cache=False)
