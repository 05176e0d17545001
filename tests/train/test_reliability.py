"""Runs that survive their own failures (issue 18): only healthy states are checkpointed and a
NaN stop names one that evaluates finite; a damaged newest checkpoint is skipped (never
deleted) by resume and inference; other base weights are refused unless allowed; a refused
start leaves RUN_DIR/config.yaml alone; infer writes next to the run it was given."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmem.config import load_config, to_dict, to_object
from gmem.errors import GmemError
from gmem.train.base_identity import base_identity, compare_base
from gmem.train.checkpoint import Checkpointer
from gmem.train.infer import restore_run, run_inference
from gmem.train.loop import check_base, train
from train_helpers import ToySystem, tiny_cfg, toy_cfg


def quiet(lines):
    return lambda *a: lines.append(" ".join(str(x) for x in a))


# ---- 1. a checkpoint only from a healthy state ------------------------------------------------


def test_nan_stop_names_a_checkpoint_that_evaluates_finite(tmp_path):
    """lr=1e8: the loss of step k is fine, but the weights after the update give NaN. The
    run stops before saving those; the checkpoint it names restores to finite weights whose
    eval loss and next-batch loss are finite."""
    cfg = tiny_cfg(tmp_path, "optim.lr=1e8", "optim.warmup_steps=0", "checkpoint.every=1",
                   "train.steps=30", "checkpoint.async_save=false", "checkpoint.keep=50")
    with pytest.raises(GmemError) as e:
        train(cfg, log=lambda *_: None)
    msg = str(e.value)
    assert "training stopped (last good checkpoint: step " in msg and "\n" not in msg
    named = int(msg.split("last good checkpoint: step ")[1].split()[0])
    stopped = int(msg.split(":")[0].split()[1])
    ck = Checkpointer(tmp_path / "run" / "checkpoints", cfg.checkpoint, read_only=True)
    assert ck.all_steps()[-1] == named and named < stopped   # nothing after the named one
    _, system, _, state, frozen, step = restore_run(tmp_path / "run", log=lambda *_: None)
    assert step == named
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree_util.tree_leaves(state.trainable))
    ev = system.evaluate(state.trainable, frozen)
    assert np.isfinite(ev["eval/loss"])
    nxt = {k: jnp.asarray(v) for k, v in system.batch(named).items()}
    assert np.isfinite(float(system.loss(state.trainable, frozen, nxt, None)[0]))


class ToyWithDrift(ToySystem):
    """A trainable leaf `b` that touches the loss only through 1e-3 * b[0]: Adam moves it by
    about lr per step, so a huge lr makes it overflow to inf while the loss is still finite."""

    def abstract_trainable(self, base):
        return {"a": jax.ShapeDtypeStruct((4,), jnp.float32), "b": jax.ShapeDtypeStruct((1,), jnp.float32)}

    def trainable_specs(self, abstract, base_specs):
        from jax.sharding import PartitionSpec as P
        return {"a": P(None), "b": P(None)}

    def init_trainable(self, base, rng):
        return {"a": jnp.zeros((4,), jnp.float32), "b": jnp.zeros((1,), jnp.float32)}

    def loss(self, trainable, frozen, batch, rng):
        pred = batch["x"] @ frozen["w"]
        return (jnp.mean((pred - batch["y"]) ** 2) + 1e-3 * trainable["b"][0],
                {"tokens": jnp.float32(batch["x"].shape[0])})


def test_non_finite_parameters_are_never_saved(tmp_path):
    """Linear warmup to lr=3e38 over 10 steps (step k's lr is 3e37 * k): after step k,
    b = -3e37 * k(k+1)/2, finite up to step 4 (-3e38, saved), -inf after step 5: not saved; the
    stop names step 4."""
    cfg = toy_cfg(tmp_path, "optim.lr=3e38", "optim.warmup_steps=10", "optim.clip_norm=null",
                  "checkpoint.every=1", "train.steps=8", "checkpoint.async_save=false",
                  "checkpoint.keep=10")
    with pytest.raises(GmemError, match=r"^step 5: the update made some trainable parameters non-finite, "
                                        r"so they were not saved; training stopped \(last good checkpoint: "
                                        r"step 4 in .*\)$"):
        train(cfg, ToyWithDrift(), log=lambda *_: None)
    ck = Checkpointer(tmp_path / "run" / "checkpoints", cfg.checkpoint, read_only=True)
    assert ck.all_steps() == [1, 2, 3, 4]


def test_health_check_with_gradient_accumulation(tmp_path):
    """With optim.grad_accum=2 the pre-save check runs on the first micro-batch (4 rows on a
    4-device data axis) and the run saves as usual."""
    from gmem.train import sharding as shd
    cfg = toy_cfg(tmp_path, "optim.grad_accum=2", "checkpoint.async_save=false")
    out = train(cfg, ToySystem(), mesh=shd.make_mesh(devices=jax.devices()[:4]), log=lambda *_: None)
    assert out["step"] == 6
    assert Checkpointer(tmp_path / "run" / "checkpoints", cfg.checkpoint, read_only=True).all_steps() == [4, 6]


# ---- 2. a damaged newest checkpoint ------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny LM run with checkpoints at steps 2 and 4."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg = tiny_cfg(tmp, "train.steps=4", "checkpoint.every=2")
    train(cfg, log=lambda *_: None)
    return tmp


def copy_run(trained, dst):
    shutil.copytree(trained / "run", dst / "run")
    shutil.copy(trained / "corpus.txt", dst / "corpus.txt")
    return dst / "run"


def damage(step_dir, how):
    if how == "truncated":
        for f in (step_dir / "state").rglob("*"):
            if f.is_file() and f.parent.name == "d":
                f.write_bytes(f.read_bytes()[:10])
    elif how == "garbage meta":
        (step_dir / "meta" / "metadata").write_text("{not json")
    elif how == "empty folder":
        shutil.rmtree(step_dir)
        step_dir.mkdir()


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


DAMAGES = ["truncated", "garbage meta", "empty folder"]
WHY = {"truncated": "its state does not restore (ValueError: local file", "garbage meta":
       "its metadata does not read (JSONDecodeError", "empty folder": "its metadata does not read ("}


@pytest.mark.parametrize("how", DAMAGES)
def test_resume_falls_back_past_a_damaged_checkpoint(trained, tmp_path, how):
    run = copy_run(trained, tmp_path)
    ckdir = run / "checkpoints"
    damage(ckdir / "4", how)
    before = snapshot(ckdir / "4")
    cfg = tiny_cfg(tmp_path, "train.steps=6", "checkpoint.every=2")
    lines = []
    out = train(cfg, log=quiet(lines))
    skipped = [l for l in lines if l.startswith("skipped checkpoint")]
    assert len(skipped) == 1 and skipped[0].startswith(f"skipped checkpoint {ckdir}/4: {WHY[how]}"), lines
    assert "\n" not in skipped[0]
    assert f"resumed from {ckdir}/2 (data position 2)" in lines
    # Moved aside, not deleted: same files under 4.unrestorable; the run wrote a new 4 and 6.
    assert snapshot(ckdir / "4.unrestorable") == before
    assert any(l.startswith(f"moved the damaged checkpoint {ckdir}/4 to {ckdir}/4.unrestorable") for l in lines)
    assert out["step"] == 6 and len(out["losses"]) == 4
    assert Checkpointer(ckdir, cfg.checkpoint, read_only=True).all_steps() == [2, 4, 6]


@pytest.mark.parametrize("how", DAMAGES)
def test_inference_falls_back_and_leaves_the_damaged_step_in_place(trained, tmp_path, how):
    run = copy_run(trained, tmp_path)
    damage(run / "checkpoints" / "4", how)
    before = snapshot(run / "checkpoints")
    lines = []
    res = run_inference(run, prompts=["to be"], log=quiet(lines), overrides=["system.max_new_tokens=2"])
    assert res["metrics"]["step"] == 2
    skipped = [l for l in lines if l.startswith("skipped checkpoint")]
    assert len(skipped) == 1 and f"/checkpoints/4: {WHY[how]}" in skipped[0], lines
    assert snapshot(run / "checkpoints") == before


def test_no_checkpoint_restores(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    for s in ("2", "4"):
        damage(run / "checkpoints" / s, "garbage meta")
    with pytest.raises(GmemError, match=r"no checkpoint whose metadata reads \(step 4: JSONDecodeError.*step 2"):
        run_inference(run, log=lambda *_: None)
    cfg = tiny_cfg(tmp_path, "train.steps=6")
    with pytest.raises(GmemError, match=r"no checkpoint restores \(step 4: its metadata does not read.*"
                                        r"step 2: .*nothing was deleted"):
        train(cfg, log=lambda *_: None)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4"]


# ---- 3. base weights -------------------------------------------------------------------------


def test_resume_on_other_base_weights_is_refused(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    config_before = (run / "config.yaml").read_bytes()
    cfg = tiny_cfg(tmp_path, "train.steps=6", "model.seed=7")
    with pytest.raises(GmemError) as e:
        train(cfg, log=lambda *_: None)
    msg = str(e.value)
    assert msg.startswith(f"{run / 'checkpoints'}/4: the base weights differ from the ones this "
                          "checkpoint was trained on: model.seed: checkpoint has 0, this run has 7; ")
    assert "tensors hold other values (first: " in msg and "train.allow_base_change=true" in msg
    assert "\n" not in msg
    assert (run / "config.yaml").read_bytes() == config_before        # item 4: refused start
    with pytest.raises(GmemError, match="the base weights differ"):
        run_inference(run, overrides=["model.seed=7"], log=lambda *_: None)
    # The explicit override continues, with a warning.
    lines = []
    out = train(tiny_cfg(tmp_path, "train.steps=6", "model.seed=7", "train.allow_base_change=true"),
                log=quiet(lines))
    assert out["step"] == 6
    assert any(l.startswith("warning: ") and "continuing because train.allow_base_change=true" in l
               for l in lines)


def test_base_identity_compare():
    """Same values in another dtype or source: same base (a note for the source); other values
    or shapes: listed."""
    rng = np.random.default_rng(0)
    tree = {"w": rng.normal(size=(8, 16)).astype(np.float32), "b": np.ones(16, np.float32)}
    a = base_identity(tree, "/models/a")
    bf16 = base_identity(jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.bfloat16), tree), "/models/b")
    assert compare_base(a, bf16) == []
    other = base_identity({"w": rng.normal(size=(8, 16)).astype(np.float32), "b": tree["b"]}, "/models/b")
    (diff,) = compare_base(a, other)
    assert diff.startswith("1 of 2 tensors hold other values (first: w, sampled [")
    reshaped = base_identity({"w": tree["w"].reshape(16, 8), "b": tree["b"]}, "/models/a")
    assert compare_base(a, reshaped) == ["1 tensors changed shape (first: w [8, 16] -> [16, 8])"]

    cfg = to_object(load_config(None, ["model.source=/models/b"]))
    saved = {"base": a, "config": to_dict(load_config(None, ["model.source=/models/a"]))}
    lines = []
    check_base("ck/3", saved, bf16, cfg, quiet(lines))
    assert lines == [("note: the base weights now come from '/models/b' (the checkpoint's came from "
                      "'/models/a'); their values match")]
    with pytest.raises(GmemError, match=r"^ck/3: the base weights differ from the ones this checkpoint was "
                                        r"trained on: model.source: checkpoint has \"/models/a\", this run has "
                                        r"\"/models/b\"; 1 of 2 tensors hold other values"):
        check_base("ck/3", saved, other, cfg)


def test_old_checkpoint_without_base_record_loads_with_a_note(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    for s in ("2", "4"):
        f = run / "checkpoints" / s / "meta" / "metadata"
        meta = json.loads(f.read_text())
        del meta["base"]
        f.write_text(json.dumps(meta))
    lines = []
    res = run_inference(run, prompts=["to be"], overrides=["system.max_new_tokens=2"], log=quiet(lines))
    assert res["metrics"]["step"] == 4
    assert lines == [(f"note: {run / 'checkpoints'}/4 does not record its base weights (written by an older "
                      "gmem); they are not checked")]


# ---- 4. a refused start leaves config.yaml alone --------------------------------------------


def test_refused_start_leaves_config_yaml(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    before = (run / "config.yaml").read_bytes()
    metrics_before = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(GmemError, match="checkpoint is from another model"):
        train(tiny_cfg(tmp_path, "model.hidden_size=64", "train.steps=6"), log=lambda *_: None)
    assert (run / "config.yaml").read_bytes() == before
    assert (run / "metrics.jsonl").read_bytes() == metrics_before


# ---- 5. infer writes next to the run it was given ---------------------------------------------


def test_infer_writes_into_the_given_run_and_accepts_a_step_folder(trained, tmp_path, monkeypatch):
    copy = copy_run(trained, tmp_path)
    monkeypatch.chdir(tmp_path)
    res = run_inference(copy, prompts=["to be"], overrides=["system.max_new_tokens=2"], log=lambda *_: None)
    assert res["out"] == str(copy / "infer") and (copy / "infer" / "metrics.json").is_file()
    assert not (trained / "run" / "infer").exists() and not (tmp_path / "runs").exists()
    res = run_inference(copy / "checkpoints" / "2", prompts=["to be"], overrides=["system.max_new_tokens=2"],
                        log=lambda *_: None)
    assert res["metrics"]["step"] == 2 and res["out"] == str(copy / "infer")
    with pytest.raises(GmemError, match=r"is the folder of step 2, but --step is 4"):
        restore_run(copy / "checkpoints" / "2", step=4)


# ---- run-config ranges ---------------------------------------------------------------------


@pytest.mark.parametrize("override,message", [
    ("checkpoint.every=0", "checkpoint.every=0: must be at least 1"),
    ("train.log_every=0", "train.log_every=0: must be at least 1"),
    ("optim.grad_accum=0", "optim.grad_accum=0: must be at least 1"),
    ("data.batch_size=0", "data.batch_size=0: must be at least 1"),
])
def test_run_config_ranges(tmp_path, override, message):
    with pytest.raises(GmemError, match=f"^{message}$"):
        train(toy_cfg(tmp_path, override), ToySystem(), log=lambda *_: None)
    assert not (tmp_path / "run").exists()


# ---- a disk that fills up -------------------------------------------------------------------


def test_disk_full_during_async_save(tmp_path, monkeypatch):
    """The background commit of step 4 fails with tensorstore's ENOSPC error (as on a full
    tmpfs): one GmemError naming the step and the newest intact checkpoint, which restores."""
    from orbax.checkpoint._src.serialization import ocdbt_utils

    real, calls = ocdbt_utils.merge_ocdbt_per_process_files, []

    async def merge(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError('RESOURCE_EXHAUSTED: Failed writing: "/x/d/abc": Failed to write 11406 bytes '
                             "to file 11: No space left on device [os_error_code='28']")
        return await real(*args, **kwargs)

    monkeypatch.setattr(ocdbt_utils, "merge_ocdbt_per_process_files", merge)
    cfg = to_object(load_config(None, [f"train.run_dir={tmp_path / 'run'}", "train.progress=false",
                                       "train.steps=8", "checkpoint.every=2", "optim.warmup_steps=0"]))
    with pytest.raises(GmemError) as e:
        train(cfg, ToySystem(), log=lambda *_: None)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{tmp_path / 'run' / 'checkpoints'}/4: checkpoint could not be written "
                          "(no space left on device); training stopped; newest intact checkpoint: step 2.")
    ck = Checkpointer(tmp_path / "run" / "checkpoints", cfg.checkpoint, read_only=True)
    assert ck.all_steps() == [2]
