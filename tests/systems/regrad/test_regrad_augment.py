"""gmem.systems.regrad.augment: top-k passages attached to QA records as the original's
augment.py does (test_ids kept through --start/--end, '' padding), written and read back."""

import pytest

from gmem.errors import GmemError
from gmem.retrieval import BM25Retriever, Passage
from gmem.systems.regrad.augment import augment, main
from gmem.systems.regrad.qa import read_augmented, write_augmented

PASSAGES = [Passage("1", "Liverpool", "Liverpool is a port city in England."),
            Passage("2", "The Beatles", "The Beatles were a rock band from Liverpool."),
            Passage("3", "Paris", "Paris is the capital of France."),
            Passage("4", "Rome", "Rome is the capital of Italy.")]
RECORDS = [{"test_id": i, "question": q, "answer": a} for i, (q, a) in enumerate([
    ("Which band came from Liverpool?", ["The Beatles"]), ("What is the capital of Italy?", "Rome"),
    ("Zebra quagga?", "none"), ("Where is Paris?", "France")])]


@pytest.fixture(scope="module")
def retriever():
    return BM25Retriever.build(PASSAGES, progress=False)


def test_augment_adds_the_retrievers_top_k(retriever, tmp_path):
    out = augment(RECORDS, retriever, k=3, progress=False)
    hits = retriever.search([r["question"] for r in RECORDS], 3)
    assert [r["passages"] for r in out] == [list(row) for row in hits.passages]
    assert out[0]["passages"][0] == PASSAGES[1].text  # the band passage first
    assert out[2]["passages"] == ["", "", ""]          # no match: padded
    assert [list(r)[:4] for r in out] == [["test_id", "question", "answer", "passages"]] * 4
    assert RECORDS[0].keys() == {"test_id", "question", "answer"}  # inputs untouched
    path = write_augmented(tmp_path / "dev.json", out)
    assert read_augmented(path, k=3) == out


def test_start_end_keep_test_ids(retriever):
    out = augment(RECORDS, retriever, k=2, start=1, end=3, batch_size=1, progress=False)
    assert [r["test_id"] for r in out] == [1, 2] and all(len(r["passages"]) == 2 for r in out)
    with pytest.raises(GmemError, match=r"augment input: record 1: field 'question'"):
        augment([RECORDS[0], {"test_id": 1, "answer": "x"}], retriever, progress=False)


def test_command_line_on_a_saved_index(retriever, tmp_path, capsys):
    retriever.save(tmp_path / "idx")
    src = tmp_path / "mine.json"
    src.write_text('[{"question": "capital of France?", "answer": "Paris"}]')
    rc = main(["--dataset", str(src), "--index", str(tmp_path / "idx"), "--topk", "2",
               "--out", str(tmp_path / "aug" / "dev.json")])
    assert rc == 0
    (rec,) = read_augmented(tmp_path / "aug" / "dev.json", k=2)
    assert rec["test_id"] == 0 and rec["passages"][0] == PASSAGES[2].text
    assert main(["--dataset", "popqa", "--out", str(tmp_path / "x.json")]) == 2
    assert "--data_path: required" in capsys.readouterr().err
