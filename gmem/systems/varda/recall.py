"""The recall curriculum and the long-context probe's text.

A recall row is a corpus row with a fact written into an early segment ("Remember: the captain
of the ship is Tamoren.") and, at the end of the last segment, the question and its answer
("Question: who is the captain of the ship? Answer: the captain of the ship is Tamoren."), so
the answer can only come through the memory once the fact has left the window. Training mixes
such rows with plain corpus rows (system.recall_fraction); the answer tokens may weigh more in
the loss (system.recall_weight).

Held out: the probe's fact (the keeper of the key) and its ten names never occur in a recall
row: roles and things exclude "keeper" and "key", and the names are drawn from syllables with
the probe's names removed.
"""

from __future__ import annotations

import numpy as np

from gmem.errors import GmemError

PROBE_NAMES = ("Antonio", "Beatrice", "Claudio", "Desdemona", "Emilia", "Ferdinand", "Gonzalo",
               "Hermia", "Isabella", "Lysander")
PROBE_FACT = " Remember: the keeper of the key is {name}."
PROBE_QUESTION = " Question: who is the keeper of the key? Answer: the keeper of the key is"

FACT = " Remember: the {role} of the {thing} is {name}."
QUESTION = " Question: who is the {role} of the {thing}? Answer: the {role} of the {thing} is"
ROLES = ("owner", "captain", "guardian", "master", "teacher", "maker", "friend", "herald",
         "warden", "father", "mother", "builder")
THINGS = ("ring", "ship", "gate", "house", "tower", "garden", "letter", "crown", "bridge",
          "horse", "mill", "lamp")
_ONSETS = ("B", "C", "D", "F", "G", "H", "J", "K", "L", "M", "N", "P", "R", "S", "T", "V", "W",
           "A", "E", "I", "O", "U", "Br", "Cl", "Dr", "Fl", "Gr", "Pr", "St", "Th", "Tr")
_SYLLABLES = ("an", "ar", "el", "en", "ia", "in", "is", "o", "on", "or", "us", "ul", "ra", "ri",
              "lo", "la", "mi", "na", "ne", "do", "to", "ta", "vi", "ve", "da", "sa", "ro")


def recall_name(rng: np.random.Generator) -> str:
    """A made-up name (onset + 1-3 syllables), never one of PROBE_NAMES."""
    while True:
        n = rng.choice(_ONSETS) + "".join(rng.choice(_SYLLABLES, rng.integers(1, 4)))
        if n not in PROBE_NAMES and n.lower() not in ("keeper", "key"):
            return n


def recall_row(row: np.ndarray, encode, seg: int, rng: np.random.Generator):
    """A recall row from a corpus row [L+1] (L a multiple of seg; at least 2 segments):
    returns (ids [L+1] int32, answer [L+1] bool: the targets that are the answer name)."""
    total = len(row)
    n_seg = (total - 1) // seg
    if n_seg < 2:
        raise GmemError(f"system.recall_fraction: rows of {total - 1} tokens hold fewer than 2 "
                        f"segments of system.segment_len={seg}")
    role, thing, name = rng.choice(ROLES), rng.choice(THINGS), recall_name(rng)
    fact = list(encode(FACT.format(role=role, thing=thing, name=name)))
    qa = list(encode(QUESTION.format(role=role, thing=thing)))
    ans = list(encode(f" {name}."))
    if len(fact) > seg or len(qa) + len(ans) > seg:
        raise GmemError(f"system.recall_fraction: a fact or question takes more than "
                        f"system.segment_len={seg} tokens")
    ids = np.array(row, np.int32)
    where = int(rng.integers(0, n_seg - 1)) * seg  # a segment before the last one
    where += int(rng.integers(0, seg - len(fact) + 1))
    ids[where: where + len(fact)] = fact
    end = total - len(qa) - len(ans)
    ids[end:] = qa + ans
    answer = np.zeros(total, bool)
    answer[total - len(ans): total - 1] = True  # the name; the closing "." is ordinary text
    return ids, answer


def recall_batch(rows: np.ndarray, encode, seg: int, fraction: float, weight: float, seed: int,
                 index: int):
    """Global batch `index` with a `fraction` of its rows turned into recall rows, chosen and
    filled by a generator seeded with (seed, index). Returns (ids [B, L+1], loss weights [B, L+1]:
    `weight` on the answer tokens, 1 elsewhere)."""
    rng = np.random.default_rng([seed, 7919, int(index)])
    ids = np.array(rows, np.int32)
    w = np.ones(ids.shape, np.float32)
    for i in np.flatnonzero(rng.random(len(ids)) < fraction):
        ids[i], answer = recall_row(ids[i], encode, seg, rng)
        w[i, answer] = weight
    return ids, w
