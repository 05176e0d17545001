"""load_tokenizer: GPT-2 BPE asset, HF folders (tokenizer.json + chat template), clear errors."""

import pathlib

import pytest

import gmem.assets
from gmem.errors import GmemError
from gmem.hf.tokenizer import load_tokenizer


def test_gpt2_bpe_asset_gives_openai_ids():
    tok = load_tokenizer("gpt2-bpe")
    # OpenAI GPT-2 ids (the same as tiktoken's "gpt2" encoding).
    assert tok("Hello world! The quick").input_ids == [15496, 995, 0, 383, 2068]
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 50256
    assert tok.decode(tok(" naïve café").input_ids) == " naïve café"
    assert load_tokenizer(gmem.assets.path("gpt2-bpe")).vocab_size == 50257


def test_hf_folder_round_trip_keeps_chat_template(tmp_path):
    tok = load_tokenizer("gpt2-bpe")
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    tok.pad_token = tok.eos_token
    tok.save_pretrained(str(tmp_path))
    again = load_tokenizer(tmp_path)
    msgs = [{"role": "user", "content": "hi there"}]
    assert again.apply_chat_template(msgs, tokenize=False) == "[user] hi there\n"
    assert again.apply_chat_template(msgs, return_dict=False) == tok.apply_chat_template(
        msgs, return_dict=False)
    assert again("a b c").input_ids == tok("a b c").input_ids
    assert again.pad_token_id == again.eos_token_id == 50256
    batch = again(["a", "a b c"], padding=True)
    assert batch["attention_mask"] == [[1, 0, 0], [1, 1, 1]]


def test_no_tokenizer_is_a_clear_error(tmp_path: pathlib.Path):
    with pytest.raises(GmemError, match="no tokenizer found"):
        load_tokenizer(tmp_path)
    with pytest.raises(GmemError, match="GGUF file not found"):
        load_tokenizer(tmp_path / "missing.gguf")
