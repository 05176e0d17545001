"""A transformers fast tokenizer built from a GGUF file's tokenizer metadata.

GGUF: byte-level BPE ("gpt2" tokenizer model) is built with the `tokenizers` library from the
file's tokens and merges; tokens the file marks CONTROL become special tokens, USER_DEFINED ones
plain added tokens (as transformers does). The pre-tokenizer follows `tokenizer.ggml.pre`:
"smollm" splits digits one by one before GPT-2's byte-level regex, as SmolLM2's tokenizer.json.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from gmem.errors import GmemError

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_CONTROL, _USER_DEFINED = 3, 4


def _pre_tokenizer(pre: str | None):
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
    from transformers import PreTrainedTokenizerFast  # slow to import (~2 s): only when a GGUF tokenizer is built

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
