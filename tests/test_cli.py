"""train.py / infer.py: bad input prints one line and exits 2 (no traceback); --help works."""

import pathlib
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
