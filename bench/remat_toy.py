#!/usr/bin/env python
"""Does the compiler honour remat? Temporaries of jax.grad over N tanh-matmul layers
([2048, 1024] x [1024, 4096] and back), with and without jax.checkpoint per layer, compiled for
XLA:CPU (memory-aware scheduler, as bench/aot_memory.py) or, with --tpu, for TPU chips that are
not there (the batch and weights sharded over them).

    python bench/remat_toy.py                      # XLA:CPU, 4 and 8 layers
    python bench/remat_toy.py --tpu v5e:2x4        # TPU compiler (libtpu), 8 chips

Honoured remat keeps one [2048, 1024] input per layer (8 MB) instead of the [2048, 4096]
activation as well (32 MB more).
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.aot_memory import tpu_devices, virtual_cpu_devices

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tpu", metavar="TOPOLOGY")
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8])
    a = ap.parse_args(argv)
    chips = tpu_devices(a.tpu) if a.tpu else None
    if chips is None:
        virtual_cpu_devices(1)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    def layer(w, x):
        return jnp.tanh(jnp.tanh(x @ w) @ w.T)

    def loss(ws, x, remat):
        f = jax.checkpoint(layer) if remat else layer
        for w in ws:
            x = f(w, x)
        return jnp.sum(x ** 2)

    def spec(shape, axes):
        if chips is None:
            return jax.ShapeDtypeStruct(shape, jnp.float32)
        mesh = Mesh(np.array(chips), ("fsdp",))
        return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(mesh, P(*axes)))

    rows = len(chips) if chips else 1
    where = f"{chips[0].device_kind} x {len(chips)}" if chips else "XLA:CPU"
    for n in a.layers:
        ws = [spec((1024, 4096), ("fsdp", None))] * n
        x = spec((2048 * rows, 1024), ("fsdp", None))
        for remat in (False, True):
            c = jax.jit(jax.grad(lambda ws, x: loss(ws, x, remat))).lower(ws, x).compile()
            mib = c.memory_analysis().temp_size_in_bytes / 2 ** 20
            print(f"{where}: {n} layers, remat {remat}: {mib:.1f} MiB of temporaries per device")
    return 0


if __name__ == "__main__":
    sys.exit(main())
