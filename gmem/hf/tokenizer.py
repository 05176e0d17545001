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

GGUF files: see gmem.hf.gguf_tokenizer.
"""

from __future__ import annotations

import json
import pathlib

from gmem import assets
from gmem.errors import GmemError
from gmem.hf.gguf import converted_folder


def _gpt2_bpe(folder: pathlib.Path):
    """GPT-2 from OpenAI's encoder.json + vocab.bpe (the gpt2-bpe asset)."""
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
    from transformers import PreTrainedTokenizerFast  # slow to import (~2 s): only when a tokenizer is loaded

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
    if isinstance(source, str) and source in assets.ASSETS:
        source = assets.path(source)
    p = pathlib.Path(source)
    if p.suffix == ".gguf":
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
