"""gmem.systems.regrad.qa and .raw: the augmented format read/written, the four raw loaders on
tiny files in each dataset's layout (answer aliases included), and bad records named by file and
record index."""

import json

import pytest

from gmem.errors import GmemError
from gmem.systems.regrad import raw
from gmem.systems.regrad.qa import read_augmented, read_qa, write_augmented


def _write(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def test_augmented_round_trip(tmp_path):
    recs = [{"test_id": 0, "question": "Who?", "answer": ["A", "B"], "passages": ["p0", "", ""]},
            {"test_id": 5, "question": "What?", "answer": "C", "choices": ["x", "y"],
             "passages": ["q0", "q1", "q2"]}]
    path = write_augmented(tmp_path / "data_aug" / "set" / "dev.json", recs)
    text = path.read_text()
    assert text.startswith("[\n    {\n        \"test_id\": 0,")  # indent=4, fields in order
    assert read_augmented(path, k=3) == recs
    with pytest.raises(GmemError, match=r"dev.json: record 0: 3 passages, expected 2"):
        read_augmented(path, k=2)


@pytest.mark.parametrize("rec, field", [
    ({"test_id": 0, "answer": "x", "passages": []}, "question"),
    ({"test_id": 0, "question": "q", "passages": []}, "answer"),
    ({"test_id": 0, "question": "q", "answer": [], "passages": []}, "answer"),
    ({"test_id": 0, "question": "q", "answer": "a", "passages": [1]}, "passages"),
    ({"question": "q", "answer": "a", "passages": ["p"]}, "test_id"),
])
def test_bad_augmented_records_name_file_record_and_field(tmp_path, rec, field):
    good = {"test_id": 0, "question": "q", "answer": "a", "passages": ["p"]}
    path = _write(tmp_path / "aug.json", [good, rec])
    with pytest.raises(GmemError, match=rf"aug.json: record 1: field '{field}'"):
        read_augmented(path)


def test_default_format_sets_test_ids(tmp_path):
    path = _write(tmp_path / "mine.json", [{"question": "q0", "answer": "a"},
                                           {"question": "q1", "answer": ["b", "c"], "x": 1}])
    assert read_qa(path) == [{"question": "q0", "answer": "a", "test_id": 0},
                             {"question": "q1", "answer": ["b", "c"], "x": 1, "test_id": 1}]
    (tmp_path / "broken.json").write_text("[{\"question\": ")
    with pytest.raises(GmemError, match=r"broken.json, line 1: invalid JSON"):
        read_qa(tmp_path / "broken.json")


def test_2wikimultihopqa(tmp_path):
    _write(tmp_path / "dev.json", [
        {"_id": "a1", "question": "Where was X born?", "answer": "Germany", "answer_id": "Q183"},
        {"_id": "a2", "question": "Are both Y?", "answer": "yes", "answer_id": ""}])
    (tmp_path / "id_aliases.json").write_text(
        json.dumps({"Q_id": "Q183", "aliases": ["Germany", "Deutschland"]}) + "\n")
    assert raw.load_raw("2wikimultihopqa", tmp_path, "dev") == [
        {"test_id": 0, "question": "Where was X born?", "answer": ["Germany", "Deutschland"]},
        {"test_id": 1, "question": "Are both Y?", "answer": "yes"}]
    _write(tmp_path / "train.json", [{"question": "q", "answer": "z", "answer_id": "Q9"}])
    with pytest.raises(GmemError, match=r"train.json: record 0: answer_id 'Q9' is not in"):
        raw.load_2wikimultihopqa(tmp_path, "train")


def test_hotpotqa_files_per_split(tmp_path):
    _write(tmp_path / "hotpot_train_v1.1.json", [{"question": "t?", "answer": "T"}])
    _write(tmp_path / "hotpot_dev_distractor_v1.json",
           [{"question": "d?", "answer": "D"}, {"question": "no answer here"}])
    assert raw.load_hotpotqa(tmp_path, "train") == [{"test_id": 0, "question": "t?", "answer": "T"}]
    with pytest.raises(GmemError, match=r"hotpot_dev_distractor_v1.json: record 1: field 'answer'"):
        raw.load_hotpotqa(tmp_path, "dev")


def test_popqa_obj_then_aliases(tmp_path):
    (tmp_path / "popQA.tsv").write_text(
        "id\tsubj\tobj\to_aliases\tquestion\n"
        "1\tParis\tFrance\t[\"French Republic\", 'République française']\tWhat country is Paris in?\n"
        "2\tX\tY\t[]\tWhat is X?\n", encoding="utf-8")
    assert raw.load_popqa(tmp_path, "dev") == [
        {"test_id": 0, "question": "What country is Paris in?",
         "answer": ["France", "French Republic", "République française"]},
        {"test_id": 1, "question": "What is X?", "answer": ["Y"]}]
    (tmp_path / "popQA.tsv").write_text("id\tobj\to_aliases\tquestion\n1\tY\t__import__('os')\tq\n")
    with pytest.raises(GmemError, match=r"popQA.tsv: record 0 \(line 2\): o_aliases"):
        raw.load_popqa(tmp_path)
    (tmp_path / "popQA.tsv").write_text("id\tobj\to_aliases\tquestion\n1\t\t[]\tq\n")
    with pytest.raises(GmemError, match=r"popQA.tsv: record 0: field 'answer'"):
        raw.load_popqa(tmp_path)


def test_complexwebquestions_answers_and_aliases_in_order(tmp_path):
    _write(tmp_path / "ComplexWebQuestions_dev.json", [
        {"ID": "c1", "question": "Which?", "answers": [
            {"answer": "Alpha", "aliases": ["A", "Alpha"]}, {"answer": "Beta", "aliases": []}]},
        {"ID": "c2", "question": "None?", "answers": []}])
    with pytest.raises(GmemError, match=r"ComplexWebQuestions_dev.json: record 1: field 'answer'"):
        raw.load_complexwebquestions(tmp_path, "dev")
    data = json.loads((tmp_path / "ComplexWebQuestions_dev.json").read_text())[:1]
    _write(tmp_path / "ComplexWebQuestions_dev.json", data)
    assert raw.load_complexwebquestions(tmp_path, "dev") == [
        {"test_id": 0, "question": "Which?", "answer": ["Alpha", "A", "Beta"]}]
    with pytest.raises(GmemError, match="unknown raw dataset"):
        raw.load_raw("squad", tmp_path, "dev")
