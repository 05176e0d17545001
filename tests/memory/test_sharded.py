"""A memory split over 8 virtual CPU devices (tests/conftest.py) searches like one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from gmem.errors import GmemError
from gmem.memory import AssociativeMemory
from gmem.memory.sharded import shard_memory, sharded_search

D = 24


@pytest.fixture(scope="module")
def mesh():
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    return jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)


def _state(mem, n, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, D)).astype(np.float32)
    state = jax.jit(mem.add)(mem.init(), jnp.asarray(x))
    return jax.jit(mem.remove)(state, jnp.arange(0, n, 5)), r.standard_normal((50, D)).astype(np.float32)


@pytest.mark.parametrize("axis,metric", [(("data", "fsdp"), "l2"), ("fsdp", "ip")])
def test_sharded_search_equals_single_device(mesh, axis, metric):
    mem = AssociativeMemory(4096, D, metric=metric, query_chunk=16)
    state, q = _state(mem, 3000)  # slots 3000.. empty: the last shards hold nothing
    sharded = shard_memory(state, mesh, axis)
    assert sharded.vectors_MD.sharding.spec == P(axis, None)
    assert len(sharded.vectors_MD.addressable_shards) == 8
    n_shards = 8 if isinstance(axis, tuple) else 4
    assert sharded.vectors_MD.addressable_shards[0].data.shape == (4096 // n_shards, D)
    ref = jax.jit(mem.search, static_argnames="k")(state, jnp.asarray(q), k=10)
    got = jax.jit(lambda s, q: sharded_search(mem, s, q, 10, mesh, axis))(sharded, jnp.asarray(q))
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(ref[0]))
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(ref[1]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got[2]), np.asarray(ref[2]))


def test_sharded_write_then_search(mesh):
    """add on a sharded state under jit (XLA partitions the scatter), then search: same as one device."""
    mem = AssociativeMemory(512, D)
    state, q = _state(mem, 400, seed=1)
    new = jnp.asarray(np.random.default_rng(2).standard_normal((200, D)).astype(np.float32))
    ref = jax.jit(mem.add)(state, new)  # ring buffer: fills 112 free slots, then replaces the oldest
    got = jax.jit(mem.add)(shard_memory(state, mesh, "fsdp"), new)
    np.testing.assert_array_equal(np.asarray(got.vectors_MD), np.asarray(ref.vectors_MD))
    idx = sharded_search(mem, shard_memory(got, mesh, "fsdp"), jnp.asarray(q), 3, mesh, "fsdp")[0]
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(mem.search(ref, jnp.asarray(q), 3)[0]))


def test_sharded_search_needs_divisible_size(mesh):
    mem = AssociativeMemory(100, D)
    with pytest.raises(GmemError, match="multiple of the 8 shards"):
        sharded_search(mem, mem.init(), jnp.zeros((2, D)), 3, mesh, ("data", "fsdp"))
