"""Import llama.cpp GGUF files (LLaMA architecture, e.g. the embedded SmolLM2-135M-Instruct).

API (all you need to run the default model):

    import gmem.assets
    from gmem.hf.gguf import load_gguf
    from gmem.hf.tokenizer import load_tokenizer

    path = gmem.assets.path("smollm2-135m-instruct")          # the pinned .gguf
    module, config, params = load_gguf(path)                    # gmem LlamaForCausalLM, fp32
    tok = load_tokenizer(path)                                  # transformers fast tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}],
                                  add_generation_prompt=True, return_dict=False)  # list[int]
    logits_BLV, _ = module.apply({"params": params}, jnp.asarray([ids]))
    text = tok.decode(new_ids, skip_special_tokens=True)

    load_gguf(path, dtype=jnp.bfloat16, shardings=tree)         # like load_pretrained
    load_gguf(path, cache=False)                                # no converted copy on disk

How: gguf.GGUFReader + gguf.quants.dequantize give float32 numpy tensors in HF layout once
llama.cpp's rotary permutation of the Q and K rows is undone; GGUF tensor names map to HF keys
(GGUF_RULES, data), and from there the usual LLaMA key map and checks of gmem.hf.convert apply.
The config comes from the GGUF metadata; a file without output.weight ties the head to the
embedding. Parsing the metadata of a GGUF with a 49k vocabulary takes gguf's reader 10-20 s,
so by default the first load writes a plain HF folder (config.json, model.safetensors fp32,
tokenizer.json) under $GMEM_CACHE/gguf/ and later loads read that (about 1 s).
"""

from __future__ import annotations

import hashlib
import pathlib

import gguf
import numpy as np

from gmem.assets import _lock, cache_dir
from gmem.errors import GmemError
from gmem.hf.convert import load_params, load_pretrained
from gmem.hf.gguf_tokenizer import tokenizer_from_gguf_reader
from gmem.hf.keymap import Rule, hf_to_gmem
from gmem.hf.registry import family_for
from gmem.hf.writer import save_pretrained

# GGUF tensor name -> HF key ("gmem" slot holds the HF key); transform says which rows to unpermute.
GGUF_RULES = (
    Rule("token_embd.weight", "model.embed_tokens.weight"),
    Rule("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    Rule("blk.{i}.attn_q.weight", "model.layers.{i}.self_attn.q_proj.weight", "unpermute_q"),
    Rule("blk.{i}.attn_k.weight", "model.layers.{i}.self_attn.k_proj.weight", "unpermute_k"),
    Rule("blk.{i}.attn_v.weight", "model.layers.{i}.self_attn.v_proj.weight"),
    Rule("blk.{i}.attn_output.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    Rule("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    Rule("blk.{i}.ffn_gate.weight", "model.layers.{i}.mlp.gate_proj.weight"),
    Rule("blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.up_proj.weight"),
    Rule("blk.{i}.ffn_down.weight", "model.layers.{i}.mlp.down_proj.weight"),
    Rule("output_norm.weight", "model.norm.weight"),
    Rule("output.weight", "lm_head.weight"),
)
# llama3 rope factors: recomputed from the config's rope scaling, not loaded.
GGUF_IGNORE = ("rope_freqs.weight",)
SUPPORTED_ARCHS = ("llama",)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert-time permutation of Q/K rows (interleaved -> rotate_half).

    w: [n_head * head_dim, in] -> same shape, rows back in HF order.
    """
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def open_reader(path):
    path = pathlib.Path(path)
    if not path.is_file():
        raise GmemError(f"{path}: GGUF file not found")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # gguf raises ValueError/struct errors on bad files
        raise GmemError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def metadata(reader, skip_arrays=("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                  "tokenizer.ggml.token_type", "tokenizer.ggml.scores")) -> dict:
    """The GGUF key/value metadata as Python values (the big tokenizer arrays left out)."""
    out = {}
    for key, field in reader.fields.items():
        if key in skip_arrays:
            continue
        try:
            out[key] = field.contents()
        except Exception:  # an exotic value type: not needed by gmem
            continue
    return out


def hf_config_from_gguf(meta: dict, n_tensors_named_output: bool, where: str) -> dict:
    """A config.json-style dict for LlamaConfig.from_hf, from GGUF metadata."""
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise GmemError(f"{where}: general.architecture={arch!r} is not supported; gmem imports "
                        f"GGUF for {list(SUPPORTED_ARCHS)} (use an HF folder otherwise)")

    def need(key):
        k = f"{arch}.{key}"
        if k not in meta:
            raise GmemError(f"{where}: GGUF metadata lacks {k!r}")
        return meta[k]

    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    vocab = meta.get(f"{arch}.vocab_size")
    if vocab is None:
        raise GmemError(f"{where}: GGUF metadata lacks {arch}.vocab_size")
    d = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": int(vocab), "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        "head_dim": int(meta.get(f"{arch}.attention.key_length",
                                 meta.get(f"{arch}.rope.dimension_count", hidden // heads))),
        "rms_norm_eps": float(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(meta.get(f"{arch}.context_length", 2048)),
        "tie_word_embeddings": not n_tensors_named_output,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }
    kind = meta.get(f"{arch}.rope.scaling.type")
    if kind == "linear":
        d["rope_scaling"] = {"rope_type": "linear",
                             "factor": float(meta[f"{arch}.rope.scaling.factor"])}
    elif kind not in (None, "none"):
        raise GmemError(f"{where}: rope scaling {kind!r} in GGUF metadata is not supported")
    return d


class GGUFSource:
    """A TensorSource over a GGUF file: HF keys, HF shapes, dequantised float32 tensors."""

    def __init__(self, path, reader=None):
        self.where = str(path)
        self.reader = reader if reader is not None else open_reader(path)
        self.meta = metadata(self.reader)
        names = {t.name: t for t in self.reader.tensors}
        self.hf_config = hf_config_from_gguf(self.meta, "output.weight" in names, self.where)
        self._heads = {"unpermute_q": self.hf_config["num_attention_heads"],
                       "unpermute_k": self.hf_config["num_key_value_heads"]}
        self._tensors: dict[str, tuple[object, str]] = {}
        for name, t in names.items():
            if name in GGUF_IGNORE:
                continue
            hit = hf_to_gmem(name, GGUF_RULES)
            # Unknown GGUF tensors keep their name, so the importer reports them as unexpected.
            key, transform = hit if hit is not None else (name, "")
            self._tensors[key] = (t, transform)

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        t, _ = self._tensors[key]
        return tuple(int(x) for x in reversed(t.shape))  # ggml lists dims innermost first

    def get(self, key: str) -> np.ndarray:
        t, transform = self._tensors[key]
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        w = w.reshape(self.shape(key))
        if transform:
            w = unpermute(w, self._heads[transform])
        return w

    def close(self) -> None:
        self._tensors.clear()


# Bump when the conversion changes, so stale converted copies are not reused.
CONVERT_VERSION = 1


def _cache_folder(path: pathlib.Path) -> pathlib.Path:
    """$GMEM_CACHE/gguf/<stem>-<digest>: a converted copy's home. The digest covers the
    converter version, the file's size and mtime and its first 4 MiB (metadata and vocab), so
    a changed file gets a fresh copy without hashing the whole file on every load."""
    st = path.stat()
    h = hashlib.sha256(f"{CONVERT_VERSION} {st.st_size} {st.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        h.update(f.read(4 << 20))
    return cache_dir() / "gguf" / f"{path.stem}-{h.hexdigest()[:16]}"


def convert_gguf(path, folder) -> pathlib.Path:
    """Write the GGUF as a plain HF folder (config.json, model.safetensors fp32, tokenizer files)
    that transformers and gmem.hf.convert.load_pretrained read. Returns the folder."""
    path = pathlib.Path(path)
    source = GGUFSource(path)
    family = family_for(source.hf_config, str(path))
    config = family.config_cls.from_hf(source.hf_config)
    params = load_params(source, family, config, family.module(config))
    tok = tokenizer_from_gguf_reader(source.reader, str(path))
    source.close()
    return save_pretrained(folder, config, params, tokenizer=tok, family=family)


def converted_folder(path) -> pathlib.Path:
    """The cached HF folder for a GGUF file, converting it on first use (process-safe)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise GmemError(f"{path}: GGUF file not found")
    folder = _cache_folder(path)
    if (folder / "config.json").exists():  # folders appear by atomic rename only
        return folder
    with _lock(f"gguf-{folder.name}"):
        if not (folder / "config.json").exists():
            convert_gguf(path, folder)
    return folder


def load_gguf(path, *, dtype=None, shardings=None, cache: bool = True, **config_overrides):
    """Load a LLaMA-architecture GGUF into gmem: returns (module, config, params).

    Args:
      path: the .gguf file (e.g. gmem.assets.path("smollm2-135m-instruct")).
      dtype, shardings, **config_overrides: as gmem.hf.convert.load_pretrained.
      cache: read/write a converted HF copy under $GMEM_CACHE/gguf (fast reloads).
    """
    if cache:
        return load_pretrained(converted_folder(path), dtype=dtype, shardings=shardings,
                               **config_overrides)
    source = GGUFSource(path)
    try:
        family = family_for(source.hf_config, str(path))
        config = family.config_cls.from_hf(source.hf_config, **config_overrides)
        module = family.module(config)
        params = load_params(source, family, config, module, dtype=dtype, shardings=shardings)
    finally:
        source.close()
    return module, config, params
