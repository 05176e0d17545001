"""Associative-memory search: gmem (jit, exact and IVF) against faiss-cpu, same data, same run.

    python bench/bench_memory_search.py                 # 10k and 100k vectors, dim 576
    python bench/bench_memory_search.py --sizes 10000 --queries 256 --no-write

Queries/s counts a batch of `--queries` queries searched at once (k=10), best of `--repeats`
timed calls after a warm-up (the warm-up includes gmem's compilation, which is not timed).
Recall@10 is measured against faiss IndexFlatL2. IVF on both sides uses the same centroids
(gmem's k-means), nlist = round(sqrt(N)) and the same nprobe, so both scan the same lists;
gmem's list capacity is `--cap-factor` times the mean list size (overflow is reported).
Both libraries get the same threads: faiss uses OpenMP over the host's cores, XLA its own pool.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.results import table, write_section  # noqa: E402
from gmem.memory import AssociativeMemory  # noqa: E402


def _best(fn, repeats):
    fn()  # warm-up (compiles gmem's search)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _recall(idx, ref):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(idx, ref)]))


def run(n: int, dim: int, nq: int, k: int, nprobe: int, repeats: int, cap_factor: int, seed: int = 0):
    import faiss

    r = np.random.default_rng(seed)
    # Clustered data (a mixture of Gaussians), so IVF lists mean something, as with real embeddings.
    centers = r.standard_normal((256, dim)).astype(np.float32) * 2
    x = (centers[r.integers(0, 256, n)] + r.standard_normal((n, dim))).astype(np.float32)
    q = (centers[r.integers(0, 256, nq)] + r.standard_normal((nq, dim))).astype(np.float32)
    qj = jnp.asarray(q)
    nlist = max(1, round(math.sqrt(n)))
    rows = []

    flat = faiss.IndexFlatL2(dim)
    flat.add(x)
    ref = flat.search(q, k)[1]

    mem = AssociativeMemory(n, dim, query_chunk=256)
    state = jax.jit(mem.add)(mem.init(), jnp.asarray(x))
    search = jax.jit(mem.search, static_argnames="k")
    idx = np.asarray(search(state, qj, k=k)[0])
    t = _best(lambda: search(state, qj, k=k)[0].block_until_ready(), repeats)
    rows.append([n, "gmem exact (jit)", "-", f"{nq / t:,.0f}", f"{_recall(idx, ref):.3f}"])
    t = _best(lambda: flat.search(q, k), repeats)
    rows.append([n, "faiss IndexFlatL2", "-", f"{nq / t:,.0f}", "1.000"])

    ivf = AssociativeMemory(n, dim, nlist=nlist, nprobe=nprobe, list_cap=cap_factor * math.ceil(n / nlist))
    t0 = time.perf_counter()
    ivf_state = jax.jit(lambda x, key: ivf.train_ivf(ivf.add(ivf.init(), x), key, 10))(
        jnp.asarray(x), jax.random.key(seed))
    jax.block_until_ready(ivf_state)
    train_s = time.perf_counter() - t0
    overflow = int(jax.jit(ivf.ivf_overflow)(ivf_state))
    isearch = jax.jit(ivf.search, static_argnames="k")
    idx = np.asarray(isearch(ivf_state, qj, k=k)[0])
    t = _best(lambda: isearch(ivf_state, qj, k=k)[0].block_until_ready(), repeats)
    rows.append([n, f"gmem IVF nlist={nlist}", nprobe, f"{nq / t:,.0f}", f"{_recall(idx, ref):.3f}"])

    quantizer = faiss.IndexFlatL2(dim)
    quantizer.add(np.asarray(ivf_state.centroids_CD))
    findex = faiss.IndexIVFFlat(quantizer, dim, nlist)
    findex.is_trained = True
    findex.add(x)
    findex.nprobe = nprobe
    fidx = findex.search(q, k)[1]
    t = _best(lambda: findex.search(q, k), repeats)
    rows.append([n, f"faiss IndexIVFFlat nlist={nlist}", nprobe, f"{nq / t:,.0f}", f"{_recall(fidx, ref):.3f}"])
    same = float((idx == fidx).mean())
    note = (f"N={n:,}: gmem k-means (10 iters, jit incl. compile) {train_s:.1f} s; IVF list overflow "
            f"{overflow} vectors; gmem IVF and faiss IVF return the same ids for {same:.1%} of results.")
    return rows, note


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--dim", type=int, default=576)
    p.add_argument("--queries", type=int, default=1024)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobe", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cap-factor", type=int, default=6, help="IVF list capacity / mean list size")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    a = p.parse_args(argv)
    import faiss

    rows, notes = [], []
    for n in a.sizes:
        r, note = run(n, a.dim, a.queries, a.k, a.nprobe, a.repeats, a.cap_factor)
        rows += r
        notes.append(note)
        print(table(["vectors", "search", "nprobe", "queries/s", "recall@10"], r), "\n" + note, flush=True)
    body = (f"## Associative memory search (`bench/bench_memory_search.py`)\n\n"
            f"dim {a.dim}, k={a.k}, {a.queries} queries per call, best of {a.repeats}; "
            f"jax {jax.__version__} ({jax.default_backend()}), faiss-cpu {faiss.__version__} "
            f"({faiss.omp_get_max_threads()} threads). The host is shared with other jobs: compare rows of "
            f"one run, not runs.\n\n"
            + table(["vectors", "search", "nprobe", "queries/s", "recall@10"], rows)
            + "\n\n" + "\n".join(f"- {n}" for n in notes))
    if not a.no_write:
        write_section("memory_search", body)
    print(body)


if __name__ == "__main__":
    main()
