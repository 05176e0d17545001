"""The original's prompt content in SmolLM2's chat template (the embedded tokenizer), the
byte tokenizer's "simple" variant, token budgets, newline stop tokens and answer extraction."""

import pytest

from gmem.data.text import ByteTokenizer
from gmem.systems.regrad import prompt as P


@pytest.fixture(scope="module")
def smol():
    from gmem.hf.tokenizer import load_tokenizer
    return load_tokenizer("smollm2-135m-instruct")


def test_chat_template_holds_the_original_content(smol):
    ctx = P.context_text(["Paris is in France.", ""])
    assert ctx == "Passage 0: Paris is in France.\nPassage 1: "
    text = P.render_prompt(smol, "Where is Paris?", ctx)
    assert text == ("<|im_start|>system\n####CONTEXT begin####\nPassage 0: Paris is in France.\n"
                    "Passage 1: \n####CONTEXT end####\nYou are a helpful AI assistant who is ready to "
                    "answer user's question according to the CONTEXT. \nYour answer should be concise, "
                    "which means it must be a short phrase or a single word, and sentences are not "
                    "allowed!<|im_end|>\n<|im_start|>user\nWhere is Paris?<|im_end|>\n"
                    "<|im_start|>assistant\nAnswer: ")
    blind = P.render_prompt(smol, "Where is Paris?", None)
    assert "CONTEXT" not in blind and "ready to answer user's question. \n" in blind
    assert blind.endswith("<|im_start|>assistant\nAnswer: ")
    ids = P.prompt_ids(smol, "Where is Paris?", None, 10 ** 6, 10)
    assert ids == smol.encode(blind, add_special_tokens=False)          # no BOS added twice


def test_context_is_cut_to_its_budget_and_the_prompt_to_its_length(smol):
    long = ["word " * 400] * 3
    ids = P.prompt_ids(smol, "Q?", long, 10 ** 6, 50)
    ctx = smol.decode(ids).split("####CONTEXT begin####\n")[1].split("\n####CONTEXT end####")[0]
    assert abs(len(smol.encode(ctx, add_special_tokens=False)) - 50) <= 2
    short = P.prompt_ids(smol, "Q?", long, 120, 10 ** 6)
    assert len(short) <= 120 and smol.decode(short).endswith("Answer: ")
    a = P.answer_ids(smol, "Paris", 16)
    assert smol.decode(a) == "Paris\n"
    ids, mask, labels = P.qa_row(smol, "Q?", "Paris", None, 96, 16, 480, P.pad_id_of(smol))
    assert ids.shape == mask.shape == labels.shape == (96,)
    assert smol.decode(ids[labels > 0].tolist()) == "Paris\n" and mask.sum() == len(P.prompt_ids(
        smol, "Q?", None, 96, 480)) + len(a)


def test_simple_variant_without_a_chat_template():
    tok = ByteTokenizer()
    assert P.render_prompt(tok, "Q?", None) == "\nQuestion: Q?\nAnswer: "
    assert P.render_prompt(tok, "Q?", "Passage 0: x") == "## CONTEXT\nPassage 0: x\n(CONTEXT END)\n\nQuestion: Q?\nAnswer: "
    ids, mask = P.passage_rows(tok, ["abc", ""], 8, P.pad_id_of(tok))
    assert ids[0, :4].tolist() == [tok.bos_token_id, 97, 98, 99] and mask.sum(1).tolist() == [4, 0]


def test_stop_tokens_and_answer_extraction(smol):
    stops = P.stop_ids(smol, 49152)
    assert smol.encode("\n", add_special_tokens=False)[0] in stops and smol.eos_token_id in stops
    assert all("\n" in smol.decode([i]) for i in stops if i != smol.eos_token_id)
    assert len(stops) < 1000
    assert P.stop_ids(ByteTokenizer(), 260) == (10, ByteTokenizer.eos_token_id)
    assert P.extract_answer(" Paris\nmore text") == "Paris"
    assert P.extract_answer("I think. Answer: Rome \n") == "Rome"
    assert P.extract_answer("") == ""
