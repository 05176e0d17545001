"""The original's QA prompt in the base model's chat template, and tasks as static-shape rows.

Prompt content (the original's src/ICL.py, non-simple variant, its Llama-3 literal replaced by
the base tokenizer's chat template):
  system  "####CONTEXT begin####\\n{context}\\n####CONTEXT end####\\n" (only with context) +
          the instruction (answer according to the CONTEXT / answer the question; concise, a
          short phrase or a single word, no sentences)
  user    the question
  then the template's generation prompt (assistant turn) followed by "Answer: ".
The context is "Passage i: {text}" for each of the k passages, joined by "\\n".
A tokenizer without a chat template (the byte tokenizer of tiny random models) gets the
original's "simple" variant: "## CONTEXT\\n{context}\\n(CONTEXT END)\\n" + "\\nQuestion: {q}\\nAnswer: ".

Differences from the original, on purpose: the rendered template is tokenized without adding
special tokens (HF's apply_chat_template(tokenize=True) does the same), so a template that
writes its own BOS does not get the original's doubled one.

Rows (one task): passages [K, Lp] (each passage tokenized with the tokenizer's special tokens,
cut to Lp = max_passage_len, right-padded); qa [Lq]: prompt then answer + "\\n" (answer cut to
max_answer_len tokens), right-padded to Lq = max_prompt_len, with `labels` 1 on the answer
tokens (the newline included), which the outer loss predicts.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from gmem.errors import GmemError

INSTRUCTION = ("Your answer should be concise, which means it must be a short phrase or a "
               "single word, and sentences are not allowed!")
SYSTEM_CONTEXT = ("####CONTEXT begin####\n{context}\n####CONTEXT end####\nYou are a helpful AI "
                  "assistant who is ready to answer user's question according to the CONTEXT. \n"
                  + INSTRUCTION)
SYSTEM_BLIND = "You are a helpful AI assistant who is ready to answer user's question. \n" + INSTRUCTION
ANSWER_CUE = "Answer: "
SIMPLE_CONTEXT = "## CONTEXT\n{context}\n(CONTEXT END)\n"
SIMPLE_QUESTION = "\nQuestion: {question}\nAnswer: "


def context_text(passages: Sequence[str]) -> str:
    return "\n".join(f"Passage {i}: {p}" for i, p in enumerate(passages))


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None)) and hasattr(tokenizer, "apply_chat_template")


def render_prompt(tokenizer, question: str, context: str | None) -> str:
    """The prompt text up to and including "Answer: " (context None: blind)."""
    if not has_chat_template(tokenizer):
        head = "" if context is None else SIMPLE_CONTEXT.format(context=context)
        return head + SIMPLE_QUESTION.format(question=question)
    system = SYSTEM_BLIND if context is None else SYSTEM_CONTEXT.format(context=context)
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + ANSWER_CUE


def encode(tokenizer, text: str, special: bool) -> list[int]:
    out = tokenizer.encode(text, add_special_tokens=special)
    return list(getattr(out, "ids", out))


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True)


def prompt_ids(tokenizer, question: str, passages: Sequence[str] | None, max_len: int,
               max_context: int) -> list[int]:
    """Token ids of the prompt, at most max_len: the context is cut to max_context tokens, then
    further until the whole prompt fits; a blind prompt that still does not fit keeps its end."""
    if passages is None:
        ids = encode(tokenizer, render_prompt(tokenizer, question, None), False)
        return ids[-max_len:]
    ctx = encode(tokenizer, context_text(passages), False)[:max_context]
    bare = len(encode(tokenizer, render_prompt(tokenizer, question, ""), False))
    ctx = ctx[:max(0, max_len - bare)]
    ids = encode(tokenizer, render_prompt(tokenizer, question, decode(tokenizer, ctx)), False)
    while len(ids) > max_len and ctx:  # decode/encode round trips can differ by a token or two
        ctx = ctx[:-max(1, len(ids) - max_len)]
        ids = encode(tokenizer, render_prompt(tokenizer, question, decode(tokenizer, ctx)), False)
    return ids[-max_len:]


def answer_ids(tokenizer, answer: str, max_len: int) -> list[int]:
    """answer + "\\n" without special tokens (the original's outer labels), at most max_len."""
    return encode(tokenizer, answer + "\n", False)[:max_len]


def passage_rows(tokenizer, passages: Sequence[str], max_len: int, pad_id: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """K passage texts -> (ids int32 [K, Lp], mask int32 [K, Lp]); "" gives an empty row (no
    inner loss: the original pads missing hits with "")."""
    ids = np.full((len(passages), max_len), pad_id, np.int32)
    mask = np.zeros((len(passages), max_len), np.int32)
    for i, p in enumerate(passages):
        toks = encode(tokenizer, p, True)[:max_len] if p.strip() else []
        ids[i, :len(toks)], mask[i, :len(toks)] = toks, 1
    return ids, mask


def qa_row(tokenizer, question: str, answer: str, passages: Sequence[str] | None, max_len: int,
           max_answer: int, max_context: int, pad_id: int) -> tuple[np.ndarray, ...]:
    """-> (ids int32 [Lq], mask int32 [Lq], labels int32 [Lq]): prompt + answer, right-padded."""
    a = answer_ids(tokenizer, answer, max_answer)
    if len(a) >= max_len:
        raise GmemError(f"system.max_prompt_len={max_len} leaves no room for a prompt beside "
                        f"an answer of {len(a)} tokens")
    p = prompt_ids(tokenizer, question, passages, max_len - len(a), max_context)
    ids = np.full((max_len,), pad_id, np.int32)
    mask = np.zeros((max_len,), np.int32)
    labels = np.zeros((max_len,), np.int32)
    n = len(p) + len(a)
    ids[:n], mask[:n] = p + a, 1
    labels[len(p):n] = 1
    return ids, mask, labels


def pad_id_of(tokenizer) -> int:
    """The pad id rows use: the tokenizer's pad, else its EOS (the original pads with EOS)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad if pad is not None else 0)


def stop_ids(tokenizer, vocab_size: int) -> tuple[int, ...]:
    """Token ids whose text contains a newline, plus EOS: generation stops at the first newline
    as the original's stop_strings="\\n" does."""
    return _stop_ids(_TokKey(tokenizer), int(vocab_size))


class _TokKey:
    """Hashable by identity, so stop_ids' cache holds one entry per tokenizer object."""

    def __init__(self, tok):
        self.tok = tok

    def __hash__(self):
        return id(self.tok)

    def __eq__(self, other):
        return isinstance(other, _TokKey) and other.tok is self.tok


@functools.lru_cache(maxsize=8)
def _stop_ids(key: _TokKey, vocab_size: int) -> tuple[int, ...]:
    tok = key.tok
    n = min(vocab_size, int(getattr(tok, "vocab_size", vocab_size) or vocab_size))
    if hasattr(tok, "convert_ids_to_tokens"):
        n = max(n, len(tok))  # added tokens sit past vocab_size in HF tokenizers
    n = min(n, vocab_size)
    out = [i for i in range(n) if "\n" in tok.decode([i], skip_special_tokens=False)]
    eos = getattr(tok, "eos_token_id", None)
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    return tuple(sorted(set(out) | {int(e) for e in eos}))


def extract_answer(generated: str) -> str:
    """The original's answer: text after the last "Answer:", its first line, stripped (the
    prompt ends with "Answer: ", so the generated text is what follows it)."""
    return (ANSWER_CUE + generated).split("Answer:")[-1].split("\n")[0].strip()
