"""Sharded training equals one-device training, and parameters are laid out as RULES say.

Ten steps of a tiny LLaMA + LoRA on 8 virtual CPU devices under data parallel, FSDP, tensor
parallel and a mix give the same losses as one device (relative difference <= 1e-5, fp32).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gmem.errors import GmemError
from gmem.systems.lm import LMSystem
from gmem.train import sharding as shd
from gmem.train.loop import make_plan
from train_helpers import tiny_cfg

STEPS = 10


def run_steps(cfg, system, mesh, steps=STEPS):
    plan = make_plan(cfg, system, mesh)
    with plan.context():
        frozen, state = plan.fresh_state(system, 0)       # what train() starts from
        losses = []
        for i in range(steps):
            batch = shd.global_batch(plan.mesh, system.batch(i), plan.rules)
            state, m = plan.step(state, frozen, batch)
            losses.append(float(m["loss"]))
    return np.array(losses), state, frozen


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    # One layer keeps five compilations cheap; the layer has every projection kind.
    cfg = tiny_cfg(tmp_path_factory.mktemp("shard"), "optim.lr=3e-2", "model.num_hidden_layers=1")
    system = LMSystem(cfg)
    ref, _, _ = run_steps(cfg, system, shd.make_mesh(devices=jax.devices()[:1]))
    return cfg, system, ref


MESHES = {
    "data": dict(data=8),
    "fsdp": dict(data=1, fsdp=8),
    "tensor": dict(data=2, tensor=4),
    "mix": dict(data=2, fsdp=2, tensor=2),
}


@pytest.mark.parametrize("name", list(MESHES))
def test_sharded_losses_match_one_device(setup, name):
    cfg, system, ref = setup
    assert ref[-1] < ref[0]  # it trains
    mesh = shd.make_mesh(**{"data": 1, "fsdp": 1, "tensor": 1, **MESHES[name]})
    losses, state, frozen = run_steps(cfg, system, mesh)
    np.testing.assert_allclose(losses, ref, rtol=1e-5)
    if name == "mix":
        q = frozen["model"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
        assert q.sharding.spec == P("fsdp", "tensor")          # embed -> fsdp, heads -> tensor
        down = frozen["model"]["layers_0"]["mlp"]["down_proj"]["kernel"]
        assert down.sharding.spec == P("tensor", "fsdp")       # mlp -> tensor, embed -> fsdp
        emb = frozen["model"]["embed_tokens"]["embedding"]
        assert emb.sharding.spec == P("tensor", "fsdp")        # vocab -> tensor
        assert frozen["lm_head"]["kernel"].sharding.spec == P("fsdp", "tensor")
        assert frozen["model"]["norm"]["scale"].sharding.spec == P("fsdp")
        lora = state.trainable["default"]["model"]["layers_0"]["self_attn"]["v_proj"]
        assert lora["lora_A"].sharding.spec == P("fsdp", None)   # like the kernel's input axis
        assert lora["lora_B"].sharding.spec == P(None, "tensor")  # like its output axis
        # Adam moments follow their parameter; the step counter is replicated.
        mu = state.opt_state[1][0].mu["default"]["model"]["layers_0"]["self_attn"]["v_proj"]["lora_A"]
        assert mu.sharding.spec == P("fsdp", None)
        assert state.step.sharding.spec == P()
        # Each device holds a quarter of q_proj (fsdp=2 x tensor=2).
        shard = q.addressable_shards[0].data
        assert shard.shape == (q.shape[0] // 2, q.shape[1] // 2)


def test_mesh_errors():
    with pytest.raises(GmemError, match="at most one of data/fsdp/tensor may be -1"):
        shd.make_mesh(data=-1, fsdp=-1)
    with pytest.raises(GmemError, match=r"data\*fsdp\*tensor = 6 but there are 8 devices"):
        shd.make_mesh(data=3, fsdp=2)
    with pytest.raises(GmemError, match="unknown mesh axis 'model'"):
        shd.rules_with({"embed": "model"})


def test_mesh_devices_takes_the_first_n(setup, tmp_path):
    """sharding.mesh.devices: N builds the plan's mesh on the first N devices (a notebook on an
    8-device host); more than there are, or 0, is one line naming the key."""
    cfg = tiny_cfg(tmp_path, "sharding.mesh.devices=1", "model.num_hidden_layers=1")
    plan = make_plan(cfg, setup[1])
    assert plan.mesh.devices.size == 1 and plan.mesh.devices.flat[0] == jax.devices()[0]
    assert make_plan(tiny_cfg(tmp_path, "sharding.mesh.devices=4", "model.num_hidden_layers=1"),
                     setup[1]).mesh.devices.size == 4
    for n in (0, 9):
        with pytest.raises(GmemError, match=rf"sharding.mesh.devices={n}: must be between 1 and the 8 devices"):
            make_plan(tiny_cfg(tmp_path, f"sharding.mesh.devices={n}", "model.num_hidden_layers=1"), setup[1])


def test_batch_is_split_over_data_and_fsdp():
    mesh = shd.make_mesh(data=2, fsdp=2, tensor=2)
    b = shd.global_batch(mesh, {"input_ids": np.arange(8 * 3).reshape(8, 3)})["input_ids"]
    assert b.sharding.spec == P(("data", "fsdp"), None)
    assert b.addressable_shards[0].data.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(b), np.arange(24).reshape(8, 3))


def test_own_gathers_gives_a_second_pass_its_own_all_gathers():
    """Two passes over one fsdp-sharded weight: XLA merges their all-gathers (one gathered copy
    kept from the first pass to the second) unless the second pass reads the weight through
    own_gathers; values and gradients are the same either way."""
    mesh = shd.make_mesh(data=1, fsdp=8)
    w = jax.device_put(np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32),
                       NamedSharding(mesh, P("fsdp", None)))
    x = jax.device_put(np.ones((8, 64), np.float32), NamedSharding(mesh, P(("data", "fsdp"), None)))

    def two_passes(w, x, separate):
        h = jnp.tanh(x @ w)
        w2, h = shd.own_gathers(w, h) if separate else (w, h)
        return jnp.sum(jnp.tanh(h @ w2) ** 2)

    def gathers(separate):
        txt = jax.jit(lambda w, x: two_passes(w, x, separate)).lower(w, x).compile().as_text()
        return len(re.findall(r" all-gather\(", txt))

    assert gathers(False) == 1
    assert gathers(True) == 2
    for f in (two_passes, jax.grad(two_passes)):
        np.testing.assert_allclose(np.asarray(jax.jit(f, static_argnums=2)(w, x, True)),
                                   np.asarray(jax.jit(f, static_argnums=2)(w, x, False)), rtol=1e-6, atol=1e-6)
