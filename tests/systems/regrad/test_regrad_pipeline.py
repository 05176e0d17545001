"""ReGrad through its commands on the tiny config: train.py meta-trains (meta-batch 16: 2
micro-batches of 8, one task per virtual device), `train.py --pass bank` builds the bank, infer.py answers in every mode and writes
predictions and EM/F1; bad input at inference is one line on stderr, exit 2, and the earlier
outputs stay as they were."""

import json
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))
import infer  # noqa: E402
import train  # noqa: E402

MODES = ("direct", "rag", "regrad", "regrad_icl", "shift")


@pytest.fixture(scope="module")
def run(regrad_files, tmp_path_factory):
    f = regrad_files
    d = tmp_path_factory.mktemp("pipeline")
    args = ["--config", str(ROOT / "configs" / "regrad_tiny.yaml"), f"train.run_dir={d}",
            f"system.corpus={f['corpus']}", f"system.index={f['index']}",
            f"system.train_file={f['train']}", f"system.dev_files={{dev: '{f['dev']}'}}",
            "train.steps=2", "data.batch_size=16", "optim.grad_accum=2", "model.remat=true",
            "system.max_new_tokens=4"]
    assert train.main(args) == 0
    assert train.main(args + ["--pass", "bank"]) == 0
    assert infer.main(["--checkpoint", str(d), "eval.batches=1"]) == 0
    return d


def test_train_bank_and_infer_every_mode(run):
    assert (run / "checkpoints" / "2").is_dir()
    bank = run / "passes" / "bank"
    meta = json.loads((bank / "bank.json").read_text())
    assert meta["passages"] >= 4
    assert json.loads((bank / "progress.json").read_text())["done"] == meta["passages"]
    out = run / "infer"
    metrics = json.loads((out / "metrics.json").read_text())
    for mode in MODES:
        for k in ("em", "f1", "prec", "recall"):
            assert 0.0 <= metrics[f"dev/{mode}/{k}"] <= 100.0 and f"all/{mode}/{k}" in metrics
    assert "eval/dev/loss" in metrics
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * len(MODES) and {r["mode"] for r in rows} == set(MODES)
    assert all("\n" not in r["prediction"] for r in rows)


def test_bad_input_at_inference_is_one_line_and_loses_nothing(run, regrad_files, tmp_path, capsys):
    out = run / "infer"                                    # the fixture's outputs
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    recs = json.loads(regrad_files["dev"].read_text())
    recs[1]["passage_ids"][0] = "999"
    bad = tmp_path / "bad_dev.json"
    bad.write_text(json.dumps(recs))
    rc = infer.main(["--checkpoint", str(run), f"--out={out}", "eval.batches=0",
                     f"system.dev_files={{dev: '{bad}'}}", "system.modes=[regrad]"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"{bad}: record 1: passage id '999' is not in the gradient bank" in err
    rc = infer.main(["--checkpoint", str(run), f"--out={out}", "eval.batches=0", "model.seed=7",
                     "train.allow_base_change=true", "system.modes=[regrad]"])  # past the checkpoint's own check
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "bank.json: this bank was built for another base" in err and len(err.splitlines()) == 1
    del recs[2]["question"]
    bad.write_text(json.dumps(recs))
    rc = infer.main(["--checkpoint", str(run), f"--out={out}", f"system.dev_files={{dev: '{bad}'}}"])
    assert rc == 2 and f"{bad}: record 2: field 'question' is missing" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
