"""The original ReGrad's QA record and its retrieval-augmented file format (spec §3.2).

A QA record is a dict
    {"test_id": int, "question": str, "answer": str | list[str], ["choices": list[str]], ...}
where test_id is the record's index in its loaded split (kept when a split is sliced, so dev
"first 300" keeps ids 0..299), answer is one string or a list of gold aliases (metrics take the
best alias; training uses the first), and further keys are carried along untouched.

The augmented file (`data_aug/{dataset}/{train|dev}.json` in the original) is one JSON list of
such records, each with "passages": [str] * k appended (the top-k retrieved passage texts,
"" where retrieval found fewer than k), written with indent=4 as the original does.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Iterable, Sequence

from gmem.errors import GmemError


def check_record(rec: Any, where: str, index: int, *, passages: bool = False) -> dict:
    """Validate one record; GmemError naming `where` (a file), the record index and the field."""
    at = f"{where}: record {index}"
    if not isinstance(rec, dict):
        raise GmemError(f"{at}: not a JSON object")
    q = rec.get("question")
    if not isinstance(q, str) or not q.strip():
        raise GmemError(f"{at}: field 'question' is missing or not a non-empty string")
    a = rec.get("answer")
    if isinstance(a, list):
        if not a or not all(isinstance(x, str) for x in a):
            raise GmemError(f"{at}: field 'answer' must be a string or a non-empty list of strings")
    elif not isinstance(a, str) or not a.strip():
        raise GmemError(f"{at}: field 'answer' is missing or empty")
    tid = rec.get("test_id")
    if tid is not None and (not isinstance(tid, int) or isinstance(tid, bool)):
        raise GmemError(f"{at}: field 'test_id' must be an integer, got {tid!r}")
    if "choices" in rec and not (isinstance(rec["choices"], list)
                                 and all(isinstance(c, str) for c in rec["choices"])):
        raise GmemError(f"{at}: field 'choices' must be a list of strings")
    if passages or "passages" in rec:
        ps = rec.get("passages")
        if not isinstance(ps, list) or not all(isinstance(p, str) for p in ps):
            raise GmemError(f"{at}: field 'passages' must be a list of strings")
    return rec


def first_answer(rec: dict) -> str:
    """The answer the original trains on: the first alias of a list."""
    a = rec["answer"]
    return a[0] if isinstance(a, list) else a


def load_json(path: pathlib.Path) -> Any:
    """json.load of a UTF-8 file; GmemError naming the file (and line) when it is not."""
    if not path.is_file():
        raise GmemError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise GmemError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise GmemError(f"{path}, line {e.lineno}: invalid JSON ({e.msg})") from None


def read_qa(path: str | pathlib.Path) -> list[dict]:
    """A JSON list of {question, answer, ...} (the original's default format): records checked,
    test_id set to each record's index."""
    path = pathlib.Path(path)
    data = load_json(path)
    if not isinstance(data, list):
        raise GmemError(f"{path}: expected a JSON list of QA records")
    return [{**check_record(r, str(path), i), "test_id": i} for i, r in enumerate(data)]


def read_augmented(path: str | pathlib.Path, k: int | None = None) -> list[dict]:
    """An augmented file: every record checked and required to have "test_id" and "passages"
    (exactly k of them when k is given)."""
    path = pathlib.Path(path)
    data = load_json(path)
    if not isinstance(data, list):
        raise GmemError(f"{path}: expected a JSON list of augmented QA records")
    for i, r in enumerate(data):
        check_record(r, str(path), i, passages=True)
        if "test_id" not in r:
            raise GmemError(f"{path}: record {i}: field 'test_id' is missing")
        if k is not None and len(r["passages"]) != k:
            raise GmemError(f"{path}: record {i}: {len(r['passages'])} passages, expected {k}")
    return data


def write_augmented(path: str | pathlib.Path, records: Iterable[dict]) -> pathlib.Path:
    """Write augmented records as the original does (one JSON list, indent=4)."""
    path = pathlib.Path(path)
    recs = list(records)
    for i, r in enumerate(recs):
        check_record(r, str(path), i, passages=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(recs, f, indent=4)
    tmp.replace(path)
    return path


def slice_records(records: Sequence[dict], start: int = 0, end: int | None = None) -> list[dict]:
    """records[start:end] (the original's --start/--end); test_ids stay those of the split."""
    return list(records[start:end])
