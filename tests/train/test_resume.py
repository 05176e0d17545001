"""Exact resume and clean interruption of train.py, in real subprocesses.

20 steps straight vs 10 steps, a SIGKILL of the process (after the step-10 checkpoint is
committed) and a resume for 10 more: the 20 losses are bitwise identical. Ctrl-C (SIGINT) saves
a checkpoint and exits 0; the same command resumes from it.

The production loop has no test hook: the killed run is train.py started through a `-c`
wrapper that patches Checkpointer.save to stall once step 10's checkpoint is committed.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from train_helpers import ROOT, TINY, write_corpus


def cmd(tmp, run, *extra):
    return [sys.executable, str(ROOT / "train.py"), "--config", str(TINY),
            f"system.corpus={tmp / 'corpus.txt'}", f"train.run_dir={tmp / run}", "train.steps=20",
            "checkpoint.every=10", *extra]


def losses(run_dir: pathlib.Path) -> dict:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


# python -c HANG_AT_10 train.py ARGS: train.py, with a stall after the step-10 checkpoint commits.
HANG_AT_10 = """
import runpy, sys, time
from gmem.train import checkpoint
_save = checkpoint.Checkpointer.save
def save(self, step, *args, **kwargs):
    _save(self, step, *args, **kwargs)
    if step == 10:
        self.wait()
        print("HANG after step 10", flush=True)
        while True:
            time.sleep(1)
checkpoint.Checkpointer.save = save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def env(**extra):
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def test_exact_resume_after_sigkill(tmp_path):
    write_corpus(tmp_path / "corpus.txt")
    straight = subprocess.run(cmd(tmp_path, "straight"), capture_output=True, text=True, env=env(), cwd=ROOT)
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = cmd(tmp_path, "killed")
    p = subprocess.Popen([killed[0], "-c", HANG_AT_10, *killed[1:]], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env(), cwd=ROOT)
    out = []
    for line in p.stdout:  # the wrapper prints this once the step-10 checkpoint is committed
        out.append(line)
        if line.startswith("HANG after step 10"):
            break
    else:
        raise AssertionError("train.py ended before step 10:\n" + "".join(out[-30:]))
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    assert sorted(losses(tmp_path / "killed")) == list(range(1, 11))

    resumed = subprocess.run(cmd(tmp_path, "killed"), capture_output=True, text=True, env=env(), cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "killed")
    assert sorted(b) == list(range(1, 21))
    assert [a[s] for s in range(1, 21)] == [b[s] for s in range(1, 21)]  # bitwise: floats compared exactly


def test_sigint_saves_and_resumes(tmp_path):
    write_corpus(tmp_path / "corpus.txt")
    run = tmp_path / "run"
    p = subprocess.Popen(cmd(tmp_path, "run", "train.steps=100000", "checkpoint.every=100000"),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), cwd=ROOT)
    deadline = time.time() + 240
    while not ((run / "metrics.jsonl").exists() and len(losses(run)) >= 3):
        assert p.poll() is None and time.time() < deadline, p.stdout.read()[-2000:]
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out = p.communicate(timeout=240)[0]
    assert p.returncode == 0, out[-2000:]
    assert "interrupted: checkpoint saved at step" in out
    step = int(out.split("interrupted: checkpoint saved at step ")[1].split()[0])
    assert (run / "checkpoints" / str(step)).is_dir()
    assert "Traceback" not in out

    again = subprocess.run(cmd(tmp_path, "run", f"train.steps={step + 2}", "checkpoint.every=100000"),
                           capture_output=True, text=True, env=env(), cwd=ROOT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed from {run / 'checkpoints'}/{step}" in again.stdout
    assert f"done: step {step + 2}" in again.stdout
