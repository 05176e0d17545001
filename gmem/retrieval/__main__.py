"""Command line: build an index, or search a saved one.

    python -m gmem.retrieval build --corpus wiki --out runs/wiki-bm25
    python -m gmem.retrieval build --corpus psgs_w100.tsv --out runs/dpr-es \\
        --backend elasticsearch --url http://localhost:9200 --index wiki
    python -m gmem.retrieval search runs/wiki-bm25 -k 3 "Who wrote Hamlet?"

`--corpus wiki` is the embedded Wikipedia summaries in DPR's 100-word form; anything else is a
TSV in psgs_w100.tsv's layout. User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from gmem import retrieval
from gmem.errors import run_cli


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m gmem.retrieval")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="index a corpus and save the retriever to --out")
    b.add_argument("--corpus", default="wiki", help="'wiki' or a psgs_w100-layout TSV")
    b.add_argument("--out", required=True, help="directory for the index / its description")
    b.add_argument("--backend", choices=["bm25s", "elasticsearch"], default="bm25s")
    b.add_argument("--url", default="http://localhost:9200", help="elasticsearch only")
    b.add_argument("--index", default="wiki", help="elasticsearch index name")
    b.add_argument("--replace", action="store_true",
                   help="elasticsearch: rebuild an existing index")
    s = sub.add_parser("search", help="search a saved retriever")
    s.add_argument("directory")
    s.add_argument("queries", nargs="+")
    s.add_argument("-k", type=int, default=3)
    return ap


@run_cli
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "build":
        corpus = (retrieval.wiki_corpus() if args.corpus == "wiki"
                  else retrieval.tsv_corpus(args.corpus))
        if args.backend == "bm25s":
            r = retrieval.BM25Retriever.build(corpus)
        else:
            r = retrieval.ElasticRetriever.build(corpus, args.url, args.index,
                                                 replace=args.replace)
        r.save(args.out)
        print(f"{r.backend} index of {r.num_passages} passages ({r.corpus_name}, "
              f"fingerprint {r.fingerprint}) saved to {args.out}")
    else:
        r = retrieval.open_retriever(args.directory)
        hits = r.search(args.queries, args.k)
        for q, ids, scores, texts in zip(args.queries, *hits):
            print(q)
            for pid, sc, t in zip(ids, scores, texts):
                print(f"  {pid or '-':>10} {sc:8.3f}  {t[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
