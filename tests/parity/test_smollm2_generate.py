"""Real SmolLM2-135M-Instruct (embedded GGUF asset, Q4_1 dequantised to fp32) answers a chat
question through gmem.models.generate (greedy, the model's own chat template), token-identical
to transformers' generate on the same weights (the GGUF's cached HF-folder conversion)."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
NEW = 16


@pytest.fixture(scope="module")
def smollm2():
    import gmem.assets
    from gmem.hf.gguf import load_gguf
    from gmem.hf.tokenizer import load_tokenizer

    module, config, params = load_gguf(gmem.assets.path("smollm2-135m-instruct"))
    return module, {"params": params}, load_tokenizer("smollm2-135m-instruct")


def test_capital_of_france_matches_transformers(smollm2):
    import torch
    import transformers

    import gmem.assets
    from gmem.hf.gguf import converted_folder
    from gmem.models.generate import generate, generate_text, left_pad

    module, variables, tok = smollm2
    answer = generate_text(module, variables, tok, QUESTION, chat=True, max_new_tokens=NEW)
    assert "Paris" in answer, answer

    text = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok.encode(text, add_special_tokens=False)
    ids_BL, mask_BL = left_pad([ids], tok.pad_token_id, 16)  # same bucket as generate_text
    out = generate(module, variables, ids_BL, mask_BL, max_new_tokens=NEW,
                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    got = np.asarray(out.tokens)[0, :int(out.lengths[0])]
    assert tok.decode(got.tolist(), skip_special_tokens=True) == answer

    hf = transformers.AutoModelForCausalLM.from_pretrained(
        converted_folder(gmem.assets.path("smollm2-135m-instruct")), dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           max_new_tokens=NEW, do_sample=False, use_cache=True,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    want = want[0, len(ids):].numpy()
    want = want[:np.flatnonzero(want == tok.eos_token_id)[0] + 1] if (want == tok.eos_token_id).any() else want
    np.testing.assert_array_equal(got, want)
