"""gmem.train.system: every registered system satisfies the contract, systems are found by
name, and a batch of the wrong shape is caught at trace time."""

import jax.numpy as jnp
import pytest

from gmem import config as gconfig
from gmem.errors import GmemError
from gmem.train.system import System, build_system, check_batch


def test_every_shipped_system_is_registered_and_satisfies_the_contract():
    names = set()
    for p in sorted(gconfig.CONFIG_DIR.glob("*.yaml")):
        names.add(gconfig.to_object(gconfig.load_config(p)).system.name)
    assert {"lm", "gmt", "gmt_stage1", "gift", "varda"} <= names
    for name in names:
        cls = gconfig.system_class(name)
        assert cls.name == name and issubclass(cls.Options, gconfig.SystemOptions)
        for method in ("abstract_base", "load_base", "abstract_trainable", "trainable_specs",
                       "init_trainable", "loss", "batch_shapes", "batch", "evaluate", "predict"):
            assert callable(getattr(cls, method)), (name, method)
        assert isinstance(getattr(cls, "structure"), property), name


def test_build_system_and_batch_check():
    cfg = gconfig.to_object(gconfig.load_config(gconfig.CONFIG_DIR / "tiny_lm.yaml"))
    system = build_system(cfg)
    assert isinstance(system, System) and system.name == "lm"
    good = {"input_ids": jnp.zeros((2, cfg.data.seq_len + 1), jnp.int32)}
    check_batch(system, good)                                   # a host's share of rows is fine
    with pytest.raises(AssertionError, match="rank"):
        check_batch(system, {"input_ids": jnp.zeros((2, 3, 4), jnp.int32)})
    with pytest.raises(AssertionError):
        check_batch(system, {"ids": jnp.zeros((2, 3), jnp.int32)})


def test_register_system_checks_the_options_class():
    from dataclasses import dataclass

    @dataclass
    class WrongName(gconfig.SystemOptions):
        name: str = "other"

    class S:
        Options = WrongName

    with pytest.raises(TypeError, match="WrongName.name must default to 'mine'"):
        gconfig.register_system("mine")(S)
    with pytest.raises(GmemError, match="unknown system 'nosuch'"):
        gconfig.system_class("nosuch")
