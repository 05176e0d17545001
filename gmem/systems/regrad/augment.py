"""Retrieval augmentation (the original's augment.py): each question gets its top-k passages.

    records = gmem.systems.regrad.raw.load_raw("popqa", "data/popqa", "dev")
    aug = augment(records, retriever, k=3, start=0, end=300)   # records + "passages": [str]*3
    gmem.systems.regrad.qa.write_augmented("data_aug/popqa/dev.json", aug)

The query is the question (the retriever cuts it to its last 256 tokens, as the original);
the passages are the retrieved texts without titles, "" where fewer than k passages match.
From the command line, with the embedded sets and the embedded BM25 index built on first use:

    python -m gmem.systems.regrad.augment --dataset wiki --split dev --out data_aug/wiki/dev.json
    python -m gmem.systems.regrad.augment --dataset popqa --data_path data/popqa --split dev \\
        --index runs/wiki-bm25 --end 300 --out data_aug/popqa/dev.json

--dataset is one of the raw datasets (gmem.systems.regrad.raw.DATASETS), `wiki` (the embedded
template QA, split train/dev, see wiki_qa), `fanoutqa` (its dev sub-questions) or a JSON file
in the default {question, answer} format. --index names a saved retriever directory; if it has
none and the corpus is the embedded one, a BM25 index is built there first.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

from tqdm import tqdm

from gmem.errors import GmemError, run_cli
from gmem.retrieval import BM25Retriever, Retriever, open_retriever, wiki_corpus
from gmem.retrieval.base import META_FILE
from gmem.systems.regrad import raw
from gmem.systems.regrad.fanout import default_qa, fanout_dev
from gmem.systems.regrad.qa import check_record, read_qa, slice_records, write_augmented

TOP_K = 3


def augment(records: Sequence[dict], retriever: Retriever, k: int = TOP_K, start: int = 0,
            end: int | None = None, batch_size: int = 64, progress: bool = True) -> list[dict]:
    """records[start:end], each copied with "passages" (k passage texts) appended, then
    "passage_ids" (their corpus ids, "" for padding: the keys of the gradient bank; files
    from the original have no ids, see gmem.systems.regrad.data.passage_keys)."""
    recs = slice_records(records, start, end)
    for i, r in enumerate(recs):
        check_record(r, "augment input", start + i)
    out = []
    with tqdm(total=len(recs), desc="retrieving", unit="q", disable=not progress) as bar:
        for s in range(0, len(recs), batch_size):
            batch = recs[s:s + batch_size]
            hits = retriever.search([r["question"] for r in batch], k)
            for r, texts, ids in zip(batch, hits.passages, hits.ids):
                out.append({**r, "passages": [str(t) for t in texts],
                            "passage_ids": [str(i) for i in ids]})
            bar.update(len(batch))
    return out


def embedded_retriever(directory: str | pathlib.Path) -> Retriever:
    """The BM25 index of the embedded wiki corpus in `directory`, built and saved there if
    absent; refuses (GmemError) an index there that was built from another corpus."""
    corpus = wiki_corpus()
    if (pathlib.Path(directory) / META_FILE).is_file():
        return open_retriever(directory, corpus.fingerprint())
    r = BM25Retriever.build(corpus)
    r.save(directory)
    return r


def load_records(dataset: str, data_path: str | None, split: str, seed: int = 0) -> list[dict]:
    if dataset == "wiki":
        sets = default_qa(seed)
        if split not in ("train", "dev"):
            raise GmemError(f"--split: the wiki set has splits train and dev, not {split!r}")
        return sets[split]
    if dataset == "fanoutqa":
        return fanout_dev()
    if dataset in raw.DATASETS:
        if not data_path:
            raise GmemError(f"--data_path: required for dataset {dataset!r}")
        return raw.load_raw(dataset, data_path, split)
    if dataset.endswith(".json"):
        return read_qa(dataset)
    raise GmemError(f"--dataset: {dataset!r} is not wiki, fanoutqa, one of {list(raw.DATASETS)} "
                    f"or a .json file")


@run_cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gmem.systems.regrad.augment")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--data_path", default=None)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--index", default="runs/wiki-bm25", help="saved retriever directory")
    ap.add_argument("--topk", type=int, default=TOP_K)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--end", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0, help="train/dev split of the wiki set")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    records = load_records(args.dataset, args.data_path, args.split, args.seed)
    index = pathlib.Path(args.index)
    retriever = (open_retriever(index) if (index / META_FILE).is_file()
                 else embedded_retriever(index))
    out = augment(records, retriever, args.topk, args.start, args.end)
    write_augmented(args.out, out)
    print(f"{len(out)} records with {args.topk} passages each -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
