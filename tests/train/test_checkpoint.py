"""Orbax checkpoints: restore onto other meshes, structure checks, keep policies, bad input."""

import copy

import chex
import jax
import numpy as np
import pytest

from gmem.config import CheckpointConfig
from gmem.errors import GmemError
from gmem.systems.lm import LMSystem
from gmem.train import sharding as shd
from gmem.train.checkpoint import Checkpointer, abstract_with_shardings, open_checkpoint
from gmem.train.loop import make_plan
from train_helpers import tiny_cfg


def trained_state(cfg, system, mesh, steps=2):
    plan = make_plan(cfg, system, mesh)
    with plan.context():
        frozen, state = plan.fresh_state(system)
        for i in range(steps):
            state, _ = plan.step(state, frozen, shd.global_batch(plan.mesh, system.batch(i), plan.rules))
    return plan, state


def meta_for(system, step):
    return {"structure": system.structure, "config": {}, "data_position": step, "step": step}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = tiny_cfg(tmp)
    system = LMSystem(cfg)
    plan, state = trained_state(cfg, system, shd.make_mesh(data=2, fsdp=2, tensor=2))
    ck = Checkpointer(tmp / "ck", cfg.checkpoint)
    ck.save(2, state, meta_for(system, 2))
    ck.close()
    return tmp, cfg, system, jax.device_get(state)


@pytest.mark.parametrize("n_devices,mesh", [(1, {}), (4, {"fsdp": 2, "tensor": 2})])
def test_restore_on_other_meshes(saved, n_devices, mesh):
    tmp, cfg, system, host_state = saved
    m = shd.make_mesh(**{"data": 1, "fsdp": 1, "tensor": 1, **mesh}, devices=jax.devices()[:n_devices])
    plan = make_plan(cfg, system, m)
    ck = Checkpointer(tmp / "ck", cfg.checkpoint, read_only=True)
    state, meta = ck.restore(abstract_with_shardings(plan.abstract_state, plan.state_sh), system.structure)
    assert meta["data_position"] == 2 and int(state.step) == 2
    chex.assert_trees_all_equal(state, host_state)
    a = state.trainable["default"]["model"]["layers_0"]["self_attn"]["q_proj"]["lora_A"]
    assert len(a.sharding.device_set) == n_devices
    if n_devices == 4:
        assert a.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)


def test_checkpoint_from_another_model(saved):
    tmp, cfg, _, _ = saved
    cfg = copy.deepcopy(cfg)
    cfg.model.hidden_size = 64
    cfg.adapters[0].rank = 2
    other = LMSystem(cfg, load_data=False)
    plan = make_plan(cfg, other, shd.make_mesh(devices=jax.devices()[:1]))
    ck = Checkpointer(tmp / "ck", cfg.checkpoint, read_only=True)
    with pytest.raises(GmemError) as e:
        ck.restore(abstract_with_shardings(plan.abstract_state, plan.state_sh), other.structure)
    msg = str(e.value)
    assert "checkpoint is from another model" in msg and "\n" not in msg
    assert "model.hidden_size: checkpoint has 32, this run has 64" in msg
    assert "adapters:" in msg


def test_missing_checkpoint_dir(tmp_path):
    with pytest.raises(GmemError, match="checkpoint directory not found"):
        open_checkpoint(tmp_path / "nope", CheckpointConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(GmemError, match="no checkpoint found"):
        open_checkpoint(tmp_path / "empty", CheckpointConfig())


def test_keep_last_and_best(tmp_path):
    """keep=2 keeps the two latest; keep_best=1 also keeps the best eval/loss (min)."""
    state = {"w": np.ones(3, np.float32)}
    cfg = CheckpointConfig(keep=2, keep_best=1, best_metric="eval/loss", best_mode="min", async_save=False)
    ck = Checkpointer(tmp_path / "ck", cfg)
    for step, loss in [(1, 5.0), (2, 1.0), (3, 4.0), (4, 3.0), (5, 6.0)]:
        ck.save(step, state, {"step": step}, metrics={"eval/loss": loss})
    ck.wait()
    assert sorted(ck.manager.all_steps()) == [2, 4, 5]
    ck.close()
    # Atomic saves: no temporary folders are left behind.
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["2", "4", "5"]
    step, meta = Checkpointer(tmp_path / "ck", cfg, read_only=True).read_meta()
    assert step == 5 and meta == {"step": 5}
