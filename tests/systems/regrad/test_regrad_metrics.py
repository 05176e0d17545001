"""gmem.systems.regrad.metrics: hand cases chosen so that a plausible wrong implementation
(SQuAD's normalizer without the "a" quirk, plain token F1 without the yes/no rule, precision and
recall maximized separately over aliases) fails."""

import pytest

from gmem.errors import GmemError
from gmem.systems.regrad.metrics import (combine, evaluate, exact_match, f1_score,
                                         normalize_answer, score)


def test_normalization():
    assert normalize_answer("The Beatles") == "beatles"
    assert normalize_answer("  U.S.A.!  ") == "usa"
    assert normalize_answer("An apple, a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # whole words only


def test_the_a_quirk():
    # only the exact text "a" (after lowercasing and dropping punctuation) keeps its article
    assert normalize_answer("A") == "a" and normalize_answer("A.") == "a"
    assert normalize_answer(" a") == "" and normalize_answer("a dog") == "dog"
    assert exact_match("A", "a") and not exact_match("A", "")
    assert f1_score("A", "a") == (1.0, 1.0, 1.0)


def test_em_and_f1():
    assert exact_match("The Beatles", "beatles")
    assert f1_score("The Beatles", "beatles") == (1.0, 1.0, 1.0)
    f1, p, r = f1_score("dog dog cat", "dog cat cat")  # multiset overlap: 2 of 3 each side
    assert (p, r) == pytest.approx((2 / 3, 2 / 3)) and f1 == pytest.approx(2 / 3)
    assert f1_score("paris france", "lyon") == (0.0, 0.0, 0.0)
    assert f1_score("", "") == (0.0, 0.0, 0.0) and exact_match("", "")


def test_yes_no_rule():
    assert f1_score("yes", "no") == (0.0, 0.0, 0.0) and not exact_match("yes", "no")
    # plain token F1 would give 2/3 here; the rule zeroes it from either side
    assert f1_score("yes", "yes sir") == (0.0, 0.0, 0.0)
    assert f1_score("no way", "No.") == (0.0, 0.0, 0.0)
    assert f1_score("noanswer", "no answer") == (0.0, 0.0, 0.0)
    assert f1_score("Yes!", "yes") == (1.0, 1.0, 1.0)


def test_best_alias():
    s = score("Paris", ["City of Light", "paris"])
    assert s == {"em": 1.0, "f1": 1.0, "prec": 1.0, "recall": 1.0}
    # "paris" gives f1 0.5 (p 1/3, r 1); "city of light" f1 2/3 (p 2/3, r 2/3): the alias with
    # the best F1 brings its own precision and recall (recall is not the max, 1.0)
    s = score("the city of paris", ["paris", "city of light"])
    assert s["em"] == 0.0
    assert (s["f1"], s["prec"], s["recall"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    # ties: the first alias with the best F1
    s = score("red blue", ["red green", "blue green yellow black"])
    assert (s["prec"], s["recall"]) == pytest.approx((0.5, 0.5))
    assert score("x", "x")["em"] == 1.0
    with pytest.raises(GmemError, match="empty list"):
        score("x", [])


def test_dataset_means_and_combined():
    recs = [{"test_id": 0, "answer": "beatles"}, {"test_id": 1, "answer": ["yes"]},
            {"test_id": 2, "answer": "red green"}, {"test_id": 3, "answer": "never predicted"}]
    m = evaluate({0: "The Beatles", 1: "no", 2: "red"}, recs)  # test_id 3 is not counted
    assert m == {"em": 33.33, "f1": round((1 + 0 + 2 / 3) / 3 * 100, 2),
                 "prec": 66.67, "recall": 50.0}
    assert combine({"a": m, "b": {"em": 0.0, "f1": 0.0, "prec": 0.0, "recall": 0.0}})["em"] == \
        pytest.approx(33.33 / 2)
    with pytest.raises(GmemError, match="no record has a prediction"):
        evaluate({9: "x"}, recs)
