"""Real weights: gmem's import of the embedded SmolLM2-135M-Instruct GGUF against transformers'
own GGUF loader (PyTorch), fp32. Logits within 1e-3 max abs on a 256-token text; tokenizer ids
equal on a few texts and on the chat template.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import gmem.assets
from gmem.hf.gguf import load_gguf
from gmem.hf.tokenizer import load_tokenizer

pytestmark = pytest.mark.slow

TOL = 1e-3
TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889. Locally nicknamed \"La dame de fer\" (French for \"Iron Lady\"), it was "
    "constructed as the centerpiece of the 1889 World's Fair, and to crown the centennial "
    "anniversary of the French Revolution. Although initially criticised by some of France's "
    "leading artists and intellectuals for its design, it has since become a global cultural "
    "icon of France and one of the most recognisable structures in the world. The tower received "
    "5,889,000 visitors in 2022. The Eiffel Tower is the most visited monument with an entrance "
    "fee in the world: 6.91 million people ascended it in 2015. It was designated a monument "
    "historique in 1964, and was named part of a UNESCO World Heritage Site (\"Paris, Banks of "
    "the Seine\") in 1991. The tower is 330 metres (1,083 ft) tall, about the same height as an "
    "81-storey building, and the tallest structure in Paris. Its base is square, measuring 125 "
    "metres (410 ft) on each side. During its construction, the Eiffel Tower surpassed the "
    "Washington Monument to become the tallest human-made structure in the world, a title it "
    "held for 41 years until the Chrysler Building in New York City was finished in 1930."
)
TEXTS = ["Hello world!", "  leading spaces and\ttabs\nnew lines", "Numbers 12345 and 3.14159",
         "Unicode: café, naïve, 東京, emoji 🙂", "<|im_start|>user\nHi<|im_end|>"]


@pytest.fixture(scope="module")
def gguf_path():
    return gmem.assets.path("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def hf_tokenizer(gguf_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def test_logits_match_transformers_gguf_loader(gguf_path, hf_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    ids = hf_tokenizer(TEXT).input_ids[:256]
    assert len(ids) == 256
    ref_model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     torch_dtype=torch.float32).eval()
    with torch.no_grad():
        ref = ref_model(torch.as_tensor([ids])).logits.numpy()
    del ref_model
    module, config, params = load_gguf(gguf_path)
    assert (config.num_hidden_layers, config.hidden_size, config.num_key_value_heads) == (30, 576, 3)
    assert config.tie_word_embeddings
    got = np.asarray(module.apply({"params": params}, jnp.asarray([ids]))[0])
    err = np.abs(got - ref).max()
    assert err < TOL, err
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.99


def test_tokenizer_matches_transformers(gguf_path, hf_tokenizer):
    tok = load_tokenizer(gguf_path)
    for text in TEXTS + [TEXT]:
        assert tok(text).input_ids == hf_tokenizer(text).input_ids, text
        assert tok.decode(tok(text).input_ids) == text
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ours = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    theirs = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert ours == theirs
    assert (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) == (2, 1, 2)
    assert tok.convert_ids_to_tokens(2) == "<|im_end|>"
