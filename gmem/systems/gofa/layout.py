"""Token layouts of GOFA's three passes, as numpy rows (spec A2, A4, A6, A15).

Ids. The LLM's own vocabulary is 0..V-1. GOFA (after ICAE) adds K + 3 ids with their own
embedding table (`memory_table` [K + 3, D]; row = id - V): the K memory slots V..V+K-1, then
[AE] (autoencoding marker), [LM] (continuation marker) and [FT] (the separator between the memory
and a question). The LM head stays V wide, so a special id is never generated. (ICAE's Mistral
layout is the same with V = 32001: 32000 is an unused pad id there.)

Encoder slab (A15). Each text is a row [Lt + K]: its tokens (truncated to Lt) right-padded to Lt,
then the K slots at the fixed columns [Lt, Lt + K). Slot t of a text with n tokens has position
id n + t and pads are masked as keys, which gives exactly the right-padded, mask-free
reference (memory right after the text, pads after the memory).

Decoder rows (A6), right-padded, memory slots holding placeholder ids (the encoder's memory
states are put in their place as input embeddings):
  question:   chat prefix + K slots + [FT] + question + chat suffix + answer + EOS
  completion: K slots + answer + EOS                      (empty prompt: sentence completion)
  ICAE:       K slots + [AE] + text + EOS  |  K slots + [LM] + continuation + EOS
The chat prefix/suffix are the tokenizer's chat template around the user turn (Mistral:
"<s>[INST]" / "[/INST]"; SmolLM2: its system turn and "<|im_start|>user\\n" / "<|im_end|>\\n
<|im_start|>assistant\\n"). Loss targets are the answer tokens and the EOS.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from gmem.errors import GmemError

_SENTINEL = "\x00GOFA-QUESTION\x00"


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """The extended id space for a vocabulary of `vocab` ids and K memory slots."""

    vocab: int
    k: int

    def slot(self, t: int) -> int:
        return self.vocab + t

    @property
    def slots(self) -> list[int]:
        return list(range(self.vocab, self.vocab + self.k))

    @property
    def ae(self) -> int:
        return self.vocab + self.k

    @property
    def lm(self) -> int:
        return self.vocab + self.k + 1

    @property
    def ft(self) -> int:
        return self.vocab + self.k + 2

    @property
    def table_rows(self) -> int:
        return self.k + 3


@dataclasses.dataclass(frozen=True)
class ChatLayout:
    """Token ids before (prefix) and after (suffix) the user content of one chat turn with the
    generation prompt, and the end-of-answer id."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    eos: int

    @staticmethod
    def from_tokenizer(tokenizer) -> "ChatLayout":
        """From the tokenizer's chat template; without one (the byte tokenizer of tiny random
        models): prefix = [BOS], suffix = the encoding of "\\n"."""
        eos = getattr(tokenizer, "eos_token_id", None)
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        if eos is None:
            raise GmemError("model tokenizer: no eos_token_id; GOFA's answers end with one")
        template = getattr(tokenizer, "apply_chat_template", None)
        if template is None or not getattr(tokenizer, "chat_template", None):
            bos = getattr(tokenizer, "bos_token_id", None)
            return ChatLayout(tuple([bos] if bos is not None else []), tuple(encode(tokenizer, "\n")), int(eos))
        text = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False,
                                             add_generation_prompt=True)
        before, after = text.split(_SENTINEL)
        return ChatLayout(tuple(encode(tokenizer, before)), tuple(encode(tokenizer, after)), int(eos))


def encode(tokenizer, text: str, add_special_tokens: bool = False) -> list[int]:
    out = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    return list(getattr(out, "ids", out))


class TextCache:
    """Token ids of texts, each text encoded once (the same article text recurs across samples)."""

    def __init__(self, tokenizer, add_special_tokens: bool):
        self.tokenizer, self.special, self._ids = tokenizer, add_special_tokens, {}

    def __call__(self, text: str) -> list[int]:
        ids = self._ids.get(text)
        if ids is None:
            ids = self._ids[text] = encode(self.tokenizer, text, self.special)
        return ids


def bucket(n: int, sizes: Sequence[int], what: str) -> int:
    """Smallest size >= n (GmemError past the largest, naming `what`)."""
    for s in sorted(sizes):
        if s >= n:
            return int(s)
    raise GmemError(f"{what}: {n} exceeds the largest bucket {max(sizes)} ({list(sorted(sizes))})")


def encoder_slab(token_lists: Sequence[Sequence[int]], width: int, pad_id: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [S, width], lengths int32 [S]): texts truncated to width, right-padded. An
    empty text keeps one pad token (length 1) so its memory slots have a key to look at."""
    ids = np.full((len(token_lists), width), pad_id, np.int32)
    lens = np.ones(len(token_lists), np.int32)
    for i, t in enumerate(token_lists):
        t = list(t)[:width]
        ids[i, :len(t)] = t
        lens[i] = max(len(t), 1)
    return ids, lens


def question_row(chat: ChatLayout, special: SpecialIds, question: Sequence[int], answer: Sequence[int],
                 max_answer: int) -> tuple[list[int], int]:
    """(ids, index of the first answer token) of one decoder row; an empty question gives the
    completion layout. The answer is cut to max_answer tokens; EOS follows unless it was cut
    (GOFA: EOS appended if shorter than the limit, else truncated)."""
    answer = list(answer)
    answer = answer[:max_answer] if len(answer) >= max_answer else answer + [chat.eos]
    if question:
        head = list(chat.prefix) + special.slots + [special.ft] + list(question) + list(chat.suffix)
    else:
        head = special.slots
    return head + answer, len(head)


def icae_row(special: SpecialIds, marker: int, target: Sequence[int], eos: int, max_target: int
             ) -> tuple[list[int], int]:
    """(ids, first target index) of an ICAE decoder row: K slots + marker + target + EOS."""
    target = list(target)[:max_target]
    head = special.slots + [marker]
    return head + target + [eos], len(head)


def pad_decoder_rows(rows: Sequence[tuple[list[int], int]], width: int, pad_id: int
                     ) -> dict[str, np.ndarray]:
    """Right-padded decoder rows: dec_ids int32 [R, width], dec_mask int32 [R, width] (1 = real
    token), dec_target float32 [R, width] (1 = a token the loss predicts). Rows longer than
    width are a GmemError (the caller sizes width from its buckets)."""
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    tgt = np.zeros((len(rows), width), np.float32)
    for i, (r, start) in enumerate(rows):
        if len(r) > width:
            raise GmemError(f"decoder row of {len(r)} tokens exceeds width {width}")
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
        tgt[i, start:len(r)] = 1
    return {"dec_ids": ids, "dec_mask": mask, "dec_target": tgt}


def prompt_length(chat: ChatLayout, special: SpecialIds, question: Sequence[int]) -> int:
    """Tokens of one generation prompt (gofa.layout.prompt_rows' row without padding)."""
    return len(chat.prefix) + special.k + 1 + len(question) + len(chat.suffix) if question else special.k


def prompt_rows(chat: ChatLayout, special: SpecialIds, questions: Sequence[Sequence[int]], multiple: int,
                pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded generation prompts (the decoder rows without the answer): ids int32 [R, W],
    mask int32 [R, W]; W is the longest rounded up to `multiple`."""
    seqs = [list(chat.prefix) + special.slots + [special.ft] + list(q) + list(chat.suffix) if q
            else special.slots for q in questions]
    w = -(-max(len(s) for s in seqs) // multiple) * multiple
    ids = np.full((len(seqs), w), pad_id, np.int32)
    mask = np.zeros((len(seqs), w), np.int32)
    for i, s in enumerate(seqs):
        ids[i, w - len(s):] = s
        mask[i, w - len(s):] = 1
    return ids, mask
