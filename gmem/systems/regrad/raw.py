"""Loaders for the four general-domain raw datasets, mapped as the original's augment.py does.

Each returns the split's QA records (gmem.systems.regrad.qa) with test_id = index in the file:

- 2wikimultihopqa: {split}.json and id_aliases.json (JSON lines {"Q_id", "aliases"}); answer =
  aliases[answer_id] when the record has an answer_id, else its answer.
- hotpotqa: hotpot_train_v1.1.json for train, hotpot_dev_distractor_v1.json otherwise; answer.
- popqa: popQA.tsv, one file for every split; answer = [obj] + o_aliases (a list literal).
- complexwebquestions: ComplexWebQuestions_{split}.json; answer = each answer then its
  aliases, duplicates dropped.

Differences from the original, on purpose: PopQA's o_aliases is parsed with ast.literal_eval,
never eval; CWQ's aliases keep first-seen order (the original's set() order changes between
processes, which can change the reported precision/recall of F1 ties); a record without a
question or answer, or a 2Wiki answer_id missing from id_aliases.json, raises GmemError naming
the file and record index instead of a KeyError or a silently broken record.
"""

from __future__ import annotations

import ast
import csv
import json
import pathlib

from gmem.errors import GmemError
from gmem.systems.regrad.qa import load_json, check_record

DATASETS = ("2wikimultihopqa", "hotpotqa", "popqa", "complexwebquestions")


def _list(path: pathlib.Path) -> list:
    data = load_json(path)
    if not isinstance(data, list):
        raise GmemError(f"{path}: expected a JSON list of records")
    return data


def _record(path: pathlib.Path, i: int, raw: object, question, answer) -> dict:
    if not isinstance(raw, dict):
        raise GmemError(f"{path}: record {i}: not a JSON object")
    return check_record({"test_id": i, "question": question, "answer": answer}, str(path), i)


def load_2wikimultihopqa(data_dir: str | pathlib.Path, split: str) -> list[dict]:
    d = pathlib.Path(data_dir)
    alias_file = d / "id_aliases.json"
    if not alias_file.is_file():
        raise GmemError(f"{alias_file}: file not found (2WikiMultihopQA's answer aliases)")
    aliases: dict[str, list] = {}
    with open(alias_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                aliases[row["Q_id"]] = row["aliases"]
            except (ValueError, KeyError, TypeError) as e:
                raise GmemError(f"{alias_file}, line {lineno}: not a {{'Q_id', 'aliases'}} "
                                f"object ({e})") from None
    path = d / f"{split}.json"
    out = []
    for i, r in enumerate(_list(path)):
        aid = r.get("answer_id") if isinstance(r, dict) else None
        if aid:
            if aid not in aliases:
                raise GmemError(f"{path}: record {i}: answer_id {aid!r} is not in {alias_file}")
            answer = aliases[aid]
        else:
            answer = r.get("answer") if isinstance(r, dict) else None
        out.append(_record(path, i, r, r.get("question") if isinstance(r, dict) else None, answer))
    return out


def load_hotpotqa(data_dir: str | pathlib.Path, split: str) -> list[dict]:
    d = pathlib.Path(data_dir)
    path = d / ("hotpot_train_v1.1.json" if split == "train" else "hotpot_dev_distractor_v1.json")
    return [_record(path, i, r, r.get("question"), r.get("answer")) if isinstance(r, dict)
            else _record(path, i, r, None, None) for i, r in enumerate(_list(path))]


def load_popqa(data_dir: str | pathlib.Path, split: str = "dev") -> list[dict]:
    """All rows of popQA.tsv (split is only a label: the original slices one file, dev = the
    first 300 rows and train from row 500 on, to avoid leakage)."""
    path = pathlib.Path(data_dir) / "popQA.tsv"
    if not path.is_file():
        raise GmemError(f"{path}: file not found")
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"question", "obj", "o_aliases"} - set(reader.fieldnames or [])
        if missing:
            raise GmemError(f"{path}, line 1: header lacks column(s) {sorted(missing)}")
        for i, row in enumerate(reader):
            try:
                extra = ast.literal_eval(row["o_aliases"] or "[]")
            except (ValueError, SyntaxError):
                raise GmemError(f"{path}: record {i} (line {reader.line_num}): o_aliases "
                                f"{row['o_aliases'][:40]!r} is not a list literal") from None
            if not isinstance(extra, (list, tuple)):
                raise GmemError(f"{path}: record {i} (line {reader.line_num}): o_aliases is "
                                f"not a list")
            obj = row["obj"]
            answer = [obj] + [str(a) for a in extra] if obj else None
            out.append(_record(path, i, row, row["question"], answer))
    return out


def load_complexwebquestions(data_dir: str | pathlib.Path, split: str) -> list[dict]:
    path = pathlib.Path(data_dir) / f"ComplexWebQuestions_{split}.json"
    out = []
    for i, r in enumerate(_list(path)):
        answers = []
        for a in (r.get("answers") or []) if isinstance(r, dict) else []:
            if not isinstance(a, dict):
                raise GmemError(f"{path}: record {i}: an entry of 'answers' is not an object")
            answers += [a.get("answer")] + list(a.get("aliases") or [])
        answer = list(dict.fromkeys(x for x in answers if isinstance(x, str) and x)) or None
        out.append(_record(path, i, r, r.get("question") if isinstance(r, dict) else None, answer))
    return out


LOADERS = {"2wikimultihopqa": load_2wikimultihopqa, "hotpotqa": load_hotpotqa,
           "popqa": load_popqa, "complexwebquestions": load_complexwebquestions}


def load_raw(dataset: str, data_dir: str | pathlib.Path, split: str) -> list[dict]:
    """Records of `dataset` (one of DATASETS) from its raw files under data_dir."""
    if dataset not in LOADERS:
        raise GmemError(f"regrad: unknown raw dataset {dataset!r}; known: {list(DATASETS)}")
    return LOADERS[dataset](data_dir, split)
