"""The recall curriculum: facts in an early segment, the question and answer at the end of the
last one, the probe's fact and names held out, batches a function of their index."""

import numpy as np
import pytest

from gmem.data.text import ByteTokenizer
from gmem.errors import GmemError
from gmem.systems.varda.recall import (PROBE_NAMES, QUESTION, recall_batch, recall_name,
                                       recall_row)

SEG = 128
tok = ByteTokenizer()


def test_recall_rows_place_fact_before_the_question_and_weigh_the_answer():
    rng = np.random.default_rng(0)
    row = np.full(4 * SEG + 1, ord("x"), np.int32)
    for _ in range(50):
        ids, answer = recall_row(row, tok.encode, SEG, rng)
        text = tok.decode(ids)
        fact_at = text.index(" Remember: the ")
        q_at = text.index(" Question: who is the ")
        assert text.index(".", fact_at) < 3 * SEG   # the whole fact before the last segment
        assert q_at >= 3 * SEG and text.endswith(".")
        role_thing = text[fact_at + len(" Remember: the "): text.index(" is ", fact_at)]
        name = text[text.index(" is ", fact_at) + 4: text.index(".", fact_at)]
        assert QUESTION.format(role=role_thing.split(" of the ")[0], thing=role_thing.split(" of the ")[1]) in text
        assert tok.decode(ids[answer]) == " " + name and name not in PROBE_NAMES
        assert "keeper" not in text and " key" not in text
    with pytest.raises(GmemError, match="fewer than 2 segments"):
        recall_row(row[: SEG + 1], tok.encode, SEG, rng)
    with pytest.raises(GmemError, match="segment_len=16"):
        recall_row(row[: 4 * 16 + 1], tok.encode, 16, rng)


def test_recall_names_and_batches():
    rng = np.random.default_rng(1)
    names = {recall_name(rng) for _ in range(2000)}
    assert len(names) > 1000 and not names & set(PROBE_NAMES)
    assert {n[0] for n in names} >= {p[0] for p in PROBE_NAMES}   # every probe initial is trained
    rows = np.full((8, 3 * SEG + 1), ord("y"), np.int32)
    ids, w = recall_batch(rows, tok.encode, SEG, 0.5, 4.0, seed=3, index=7)
    again, w2 = recall_batch(rows, tok.encode, SEG, 0.5, 4.0, seed=3, index=7)
    np.testing.assert_array_equal(ids, again)
    np.testing.assert_array_equal(w, w2)
    recall = (ids != ord("y")).any(1)
    assert ((w == 4.0).any(1) == recall).all() and set(np.unique(w)) <= {1.0, 4.0}
    share = np.mean([(recall_batch(rows, tok.encode, SEG, 0.5, 4.0, 3, i)[0] != ord("y")).any(1).mean()
                     for i in range(20)])
    assert 0.35 < share < 0.65
    assert not np.array_equal(recall_batch(rows, tok.encode, SEG, 0.5, 4.0, seed=3, index=8)[0], ids)
