"""Fixtures of the ReGrad system tests: a small made-up corpus (DPR TSV), its BM25 index, and
augmented train/dev files retrieved from it, plus a builder of tiny-config systems on them."""

import pathlib

import pytest

from gmem import config as gconfig
from gmem.retrieval import BM25Retriever, Passage, tsv_corpus, write_dpr_tsv
from gmem.systems.regrad.augment import augment
from gmem.systems.regrad.qa import write_augmented

ROOT = pathlib.Path(__file__).resolve().parents[3]
FACTS = [("Zorblat", "Zorblat is a city in Quenland, known for glass towers."),
         ("Quenland", "Quenland is a small country whose capital is Varno."),
         ("Mirelle Okon", "Mirelle Okon is a painter born in Varno in 1931."),
         ("Tessaly river", "The Tessaly river flows through Zorblat into the Grey Sea."),
         ("Grey Sea", "The Grey Sea lies north of Quenland and freezes in winter."),
         ("Ubrik", "Ubrik is a board game invented by Mirelle Okon."),
         ("Varno", "Varno is the capital of Quenland and has a famous opera."),
         ("Pellan", "Pellan is a mountain village where Ubrik is played every spring.")]
QA = [("Which country is Zorblat in?", "Quenland"), ("What is the capital of Quenland?", "Varno"),
      ("Who invented Ubrik?", "Mirelle Okon"), ("Into which sea does the Tessaly flow?", "Grey Sea"),
      ("Where was Mirelle Okon born?", "Varno"), ("What is Zorblat known for?", "glass towers"),
      ("When is Ubrik played in Pellan?", "spring"), ("What freezes in winter?", "the Grey Sea")]


def write_files(d: pathlib.Path) -> dict:
    """{"corpus", "index", "train", "dev", "dir"} under d: 8 passages, 4 train and 4 dev
    questions."""
    passages = [Passage(str(i + 1), t, x) for i, (t, x) in enumerate(FACTS)]
    write_dpr_tsv(d / "corpus.tsv", passages)
    r = BM25Retriever.build(tsv_corpus(d / "corpus.tsv"), progress=False)
    r.save(d / "index")
    recs = [{"test_id": i, "question": q, "answer": a} for i, (q, a) in enumerate(QA)]
    write_augmented(d / "train.json", augment(recs[:4], r, 3, progress=False))
    dev = [dict(x, test_id=i) for i, x in enumerate(recs[4:])]
    write_augmented(d / "dev.json", augment(dev, r, 3, progress=False))
    return {"corpus": d / "corpus.tsv", "index": d / "index", "train": d / "train.json",
            "dev": d / "dev.json", "dir": d}


@pytest.fixture(scope="session")
def regrad_files(tmp_path_factory):
    return write_files(tmp_path_factory.mktemp("regrad_data"))


@pytest.fixture
def make_cfg(regrad_files, tmp_path):
    """make_cfg(*overrides) -> typed tiny config on the made-up files, run_dir in tmp_path."""
    f = regrad_files

    def make(*overrides):
        base = [f"system.corpus={f['corpus']}", f"system.index={f['index']}",
                f"system.train_file={f['train']}", f"system.dev_files={{dev: '{f['dev']}'}}",
                f"train.run_dir={tmp_path / 'run'}", "model.remat=false"]
        return gconfig.to_object(gconfig.load_config(ROOT / "configs" / "regrad_tiny.yaml",
                                                     base + list(overrides)))
    return make
