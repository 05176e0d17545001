"""Tokenizers for gmem models: from HF folders, GGUF files, GPT-2 BPE files or asset names.

    from gmem.hf.tokenizer import load_tokenizer
    tok = load_tokenizer("smollm2-135m-instruct")     # an embedded asset name (gmem.assets)
    tok = load_tokenizer("path/model.gguf")           # vocab, merges, specials, chat template
    tok = load_tokenizer("path/hf_folder")            # tokenizer.json (+ chat template)
    tok = load_tokenizer(gmem.assets.path("gpt2-bpe"))  # encoder.json + vocab.bpe (GPT-2)

All return a transformers fast tokenizer (no torch needed): `tok(text).input_ids`,
`tok.decode(ids, skip_special_tokens=True)`, `tok.eos_token_id`, `tok.pad_token_id`, and
`tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)` -> list[int]
(transformers v5 returns a BatchEncoding unless return_dict=False).

GGUF: byte-level BPE ("gpt2" tokenizer model) is built with the `tokenizers` library from the
file's tokens and merges; tokens the file marks CONTROL become special tokens, USER_DEFINED ones
plain added tokens (as transformers does). The pre-tokenizer follows `tokenizer.ggml.pre`:
"smollm" splits digits one by one before GPT-2's byte-level regex, as SmolLM2's tokenizer.json.
"""

from __future__ import annotations

import pathlib

from gmem.errors import GmemError

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_CONTROL, _USER_DEFINED = 3, 4


def _pre_tokenizer(pre: str | None):
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact"):  # digits split singly, then GPT-2 regex
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3"):
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return byte_level  # "gpt2", "default" and unknown: GPT-2's regex


def _strings(reader, key: str) -> list[str]:
    f = reader.fields.get(key)
    if f is None:
        return []
    return [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]


def _ints(reader, key: str) -> list[int]:
    f = reader.fields.get(key)
    return [] if f is None else [int(f.parts[i][0]) for i in f.data]


def _scalar(reader, key: str):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def tokenizer_from_gguf_reader(reader, where: str = "GGUF"):
    """A transformers fast tokenizer from an open gguf.GGUFReader (byte-level BPE files)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    kind = _scalar(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise GmemError(f"{where}: tokenizer.ggml.model={kind!r} is not supported (gmem builds "
                        f"byte-level BPE 'gpt2' tokenizers; use an HF folder's tokenizer.json)")
    tokens = _strings(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _strings(reader, "tokenizer.ggml.merges")]
    types = _ints(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    try:
        tk = Tokenizer(models.BPE(vocab, merges, continuing_subword_prefix="",
                                  end_of_word_suffix="", fuse_unk=False))
    except Exception as e:  # tokenizers raises a bare Exception on a merge outside the vocab
        raise GmemError(f"{where}: tokenizer.ggml.tokens/merges are inconsistent ({e})") from None
    tk.pre_tokenizer = _pre_tokenizer(_scalar(reader, "tokenizer.ggml.pre"))
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(tokens, types) if ty == _CONTROL])
    tk.add_tokens([AddedToken(t, special=False, normalized=False)
                   for t, ty in zip(tokens, types) if ty == _USER_DEFINED])

    def token(key):
        i = _scalar(reader, f"tokenizer.ggml.{key}")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    bos = token("bos_token_id")
    if _scalar(reader, "tokenizer.ggml.add_bos_token") and bos is not None:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])
    specials = {k: token(f"{k}_id") for k in ("bos_token", "eos_token", "unknown_token",
                                               "padding_token")}
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=specials["bos_token"], eos_token=specials["eos_token"],
        unk_token=specials["unknown_token"], pad_token=specials["padding_token"],
        chat_template=_scalar(reader, "tokenizer.chat_template"),
        add_bos_token=bool(_scalar(reader, "tokenizer.ggml.add_bos_token")),
        clean_up_tokenization_spaces=False)


def _gpt2_bpe(folder: pathlib.Path):
    """GPT-2 from OpenAI's encoder.json + vocab.bpe (the gpt2-bpe asset)."""
    import json

    from transformers import GPT2Tokenizer  # v5: the tokenizers-backed class

    vocab = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
    lines = (folder / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    return GPT2Tokenizer(vocab=vocab, merges=merges)


_SKIP_CONFIG = ("added_tokens_decoder", "tokenizer_class", "auto_map", "backend", "name_or_path",
                "tokenizer_file")


def _from_tokenizer_json(folder: pathlib.Path):
    """tokenizer.json + tokenizer_config.json (+ chat_template.jinja) without from_pretrained.

    tokenizer.json fully defines a fast tokenizer (added tokens included). from_pretrained and
    AutoTokenizer also read config.json, which imports torch (10+ s on a busy 2-core box).
    """
    import json

    from transformers import PreTrainedTokenizerFast

    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    kwargs = {}
    for k, v in cfg.items():
        if k in _SKIP_CONFIG:
            continue
        if isinstance(v, dict) and "content" in v:  # a serialised AddedToken
            v = v["content"]
        kwargs[k] = v
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        kwargs["chat_template"] = jinja.read_text()
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **kwargs)


def load_tokenizer(source):
    """Tokenizer from an asset name, a .gguf file, an HF folder or a GPT-2 BPE folder."""
    from gmem import assets

    if isinstance(source, str) and source in assets.ASSETS:
        source = assets.path(source)
    p = pathlib.Path(source)
    if p.suffix == ".gguf":
        from gmem.hf.gguf import converted_folder

        # The converted folder holds tokenizer.json: building from the GGUF once is enough.
        return load_tokenizer(converted_folder(p))
    if p.is_dir() and (p / "encoder.json").exists() and (p / "vocab.bpe").exists():
        return _gpt2_bpe(p)
    if p.is_dir() and ((p / "tokenizer.json").exists() or (p / "tokenizer_config.json").exists()):
        try:
            if (p / "tokenizer.json").exists():
                return _from_tokenizer_json(p)
            from transformers import AutoTokenizer  # imports torch: only when needed

            return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError) as e:
            raise GmemError(f"{p}: tokenizer files cannot be loaded ({e})") from None
    raise GmemError(f"{source}: no tokenizer found (expected an asset name, a .gguf file, an "
                    f"HF folder with tokenizer.json, or encoder.json + vocab.bpe)")
