"""gmem.train.passes: an offline pass runs in chunks, commits progress after each, and a run
that dies mid-pass resumes at the first uncommitted chunk with no item lost or written twice."""

import json
import os
import pathlib

import numpy as np
import pytest

from gmem.errors import GmemError
from gmem.train.passes import run_pass
from gmem.train.system import OfflinePass


class Squares:
    """A system with one pass: item i -> i*i, written one .npy per chunk (atomically)."""

    name = "squares"

    def __init__(self, total=23, fail_at=None):
        self.total, self.fail_at, self.calls = total, fail_at, []

    def offline_passes(self):
        def run_chunk(start, stop, out, trainable, frozen):
            self.calls.append((start, stop))
            if self.fail_at is not None and start >= self.fail_at:
                raise KeyboardInterrupt("killed")          # the process dies mid-pass
            tmp = out / f"chunk_{start:06d}.npy.tmp"
            with open(tmp, "wb") as f:
                np.save(f, np.arange(start, stop) ** 2)
            os.replace(tmp, out / f"chunk_{start:06d}.npy")
            return {"items": stop - start}

        def finish(out):
            return {"chunks": len(list(out.glob("chunk_*.npy")))}

        return {"squares": OfflinePass("squares", self.total, run_chunk, chunk=5, unit="items", finish=finish)}


def _items(out):
    return np.concatenate([np.load(p) for p in sorted(out.glob("chunk_*.npy"))])


def test_pass_resumes_after_a_kill_without_loss_or_duplicates(tmp_path):
    out = tmp_path / "pass"
    dying = Squares(fail_at=10)
    with pytest.raises(KeyboardInterrupt):
        run_pass(dying, "squares", out, None, None, identity={"corpus": "x"}, progress=False, log=lambda *a: None)
    assert json.loads((out / "progress.json").read_text())["done"] == 10      # chunks 0-4, 5-9 committed
    again = Squares()
    summary = run_pass(again, "squares", out, None, None, identity={"corpus": "x"}, progress=False,
                       log=lambda *a: None)
    assert again.calls[0] == (10, 15)                     # resumed at the first uncommitted chunk
    np.testing.assert_array_equal(_items(out), np.arange(23) ** 2)     # every item once, in order
    assert summary["done"] == 23 and summary["chunks"] == 5
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["done"] for r in rows] == [5, 10, 15, 20, 23] and all("items_per_s" in r for r in rows)
    # Done: running it again does nothing.
    done = Squares()
    run_pass(done, "squares", out, None, None, identity={"corpus": "x"}, progress=False, log=lambda *a: None)
    assert done.calls == []


def test_pass_refuses_another_pass_folder_and_unknown_names(tmp_path):
    out = tmp_path / "pass"
    run_pass(Squares(total=5), "squares", out, None, None, identity={"corpus": "x"}, progress=False)
    with pytest.raises(GmemError, match=r"progress\.json: this folder holds another pass \(identity: "):
        run_pass(Squares(total=5), "squares", out, None, None, identity={"corpus": "y"}, progress=False)
    with pytest.raises(GmemError, match=r"progress\.json: this folder holds another pass \(total: 5 in the folder, 9 now\)"):
        run_pass(Squares(total=9), "squares", out, None, None, identity={"corpus": "x"}, progress=False)
    with pytest.raises(GmemError, match=r"--pass bank: the squares system has no such pass \(it has: squares\)"):
        run_pass(Squares(), "bank", out, None, None)


def test_train_py_pass_on_a_system_without_passes(tmp_path, capsys):
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    import train
    rc = train.main(["--config", "configs/tiny_lm.yaml", f"train.run_dir={tmp_path}", "--pass", "bank"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --pass bank: the lm system has no such pass (it has: none)"]
