"""train.py / infer.py: bad input prints one line and exits 2 (no traceback); --help works; a
damaged newest checkpoint is skipped by infer.py, a refused resume leaves config.yaml alone, and
infer.py writes into the run folder it was given (also a step folder)."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("script,args,message", [
    ("train.py", ["train.stepz=3"], "error: override 'train.stepz=3': train.stepz: Key 'stepz' not in 'TrainConfig'"),
    ("train.py", ["--config", "nope.yaml"], "error: nope.yaml: config file not found"),
    ("train.py", ["optim.lr=fast"], "could not be converted to Float"),
    ("train.py", ["--bogus"], "error: unknown argument '--bogus'"),
    ("train.py", ["model.source=/no/such/model"], "error: model.source: '/no/such/model' is not 'random'"),
    ("infer.py", ["--checkpoint", "/no/such/dir"], "error: /no/such/dir: checkpoint directory not found"),
    ("infer.py", [], "error: --checkpoint DIR is required"),
    ("train.py", ["--config", "configs/tiny_lm.yaml", "checkpoint.every=0"], "error: checkpoint.every=0: must be at least 1"),
])
def test_bad_input_exits_2_with_one_line(script, args, message):
    r = run(script, *args)
    assert r.returncode == 2, (r.stdout[-1000:], r.stderr[-1000:])
    err = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(err) == 1 and message in err[0], r.stderr
    assert "Traceback" not in r.stderr


def test_help():
    r = run("train.py", "--help")
    assert r.returncode == 0 and "configs/default.yaml" in r.stdout
    r = run("infer.py", "--help")
    assert r.returncode == 0 and "--export-peft" in r.stdout


def one_error_line(r):
    err = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(err) == 1 and "Traceback" not in r.stderr, (r.stdout[-1000:], r.stderr[-2000:])
    return err[0]


@pytest.fixture(scope="module")
def run4(tmp_path_factory):
    """train.py on configs/tiny_lm.yaml for 4 steps, checkpoints at 2 and 4."""
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "corpus.txt").write_text("to be or not to be that is the question\n" * 200)
    r = run("train.py", "--config", "configs/tiny_lm.yaml", f"system.corpus={tmp / 'corpus.txt'}",
            f"train.run_dir={tmp / 'run'}", "train.steps=4", "checkpoint.every=2")
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp


def test_infer_skips_a_damaged_checkpoint_and_writes_into_the_given_run(run4, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run4 / "run", copy)
    (copy / "checkpoints" / "4" / "meta" / "metadata").write_text("{garbage")
    r = run("infer.py", "--checkpoint", str(copy), "system.max_new_tokens=2")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert (f"skipped checkpoint {copy / 'checkpoints'}/4: its metadata does not read (JSONDecodeError"
            in r.stdout.splitlines()[0])
    assert "metrics: step=2 " in r.stdout
    assert (copy / "infer" / "metrics.json").is_file() and not (run4 / "run" / "infer").exists()
    assert (copy / "checkpoints" / "4" / "meta" / "metadata").read_text() == "{garbage"   # left in place
    # A step folder is accepted as --checkpoint; the output still goes to the run's infer/.
    r = run("infer.py", "--checkpoint", str(copy / "checkpoints" / "2"), "system.max_new_tokens=2",
            "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "metrics: step=2 " in r.stdout and (tmp_path / "out" / "predictions.jsonl").is_file()
    r = run("infer.py", "--checkpoint", str(copy / "checkpoints" / "2"), "--step", "4")
    assert "is the folder of step 2, but --step is 4" in one_error_line(r)


def test_refused_resume_leaves_config_yaml(run4, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run4 / "run", copy)
    before = (copy / "config.yaml").read_bytes()
    r = run("train.py", "--config", "configs/tiny_lm.yaml", f"system.corpus={run4 / 'corpus.txt'}",
            f"train.run_dir={copy}", "train.steps=6", "checkpoint.every=2", "model.seed=7")
    line = one_error_line(r)
    assert line.startswith(f"error: {copy / 'checkpoints'}/4: the base weights differ from the ones this "
                           "checkpoint was trained on: model.seed: checkpoint has 0, this run has 7; ")
    assert (copy / "config.yaml").read_bytes() == before
