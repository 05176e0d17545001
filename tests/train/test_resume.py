"""Exact resume and clean interruption of train.py, in real subprocesses.

20 steps straight vs 10 steps, a SIGKILL of the process (after the step-10 checkpoint is
committed) and a resume for 10 more: the 20 losses are bitwise identical. Ctrl-C (SIGINT) saves
a checkpoint and exits 0; the same command resumes from it.
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


def env(**extra):
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def test_exact_resume_after_sigkill(tmp_path):
    write_corpus(tmp_path / "corpus.txt")
    straight = subprocess.run(cmd(tmp_path, "straight"), capture_output=True, text=True, env=env(), cwd=ROOT)
    assert straight.returncode == 0, straight.stderr[-2000:]

    p = subprocess.Popen(cmd(tmp_path, "killed"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env(GMEM_HANG_AFTER_STEP="10"), cwd=ROOT)
    out = []
    for line in p.stdout:  # the loop prints this once the step-10 checkpoint is committed
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
