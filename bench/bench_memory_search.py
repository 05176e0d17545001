"""Associative-memory search: gmem (jit, exact and IVF) against faiss-cpu, same data, same run.

    python bench/bench_memory_search.py                 # 10k and 100k vectors, dim 576
    python bench/bench_memory_search.py --sizes 10000 --queries 256 --no-write

Each search is one call over `--queries` queries (k=10), numpy in and numpy out on both sides
(gmem's time includes moving queries in and ids + distances out; like faiss it returns no
vectors, so its jitted call leaves out mem.search's vector gather). The contenders of one size
run in `--rounds` alternating rounds (one call each per round, the order reversed every other
round), after a warm-up that includes gmem's compilation; the table gives each one's best
queries/s and the median over rounds of the paired ratio gmem / faiss, because this shared
machine's speed drifts between and within runs. Load averages are printed beside them.

Recall@10 is measured against faiss IndexFlatL2. IVF on both sides uses the same centroids
(gmem's k-means), nlist = round(sqrt(N)) and the same nprobe, so both scan the same lists. gmem
trains with lists of twice the mean size, then `fit_lists` sizes them to the longest list (no
overflow). Threads: faiss's OpenMP and XLA's pool both use every core (`--threads 1`: one each).
`--crossover` sizes time gmem's exact search against its IVF search on smaller memories: the
measurement behind gmem.memory.associative.EXACT_BELOW.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.alternate import alternate as rounds  # noqa: E402
from bench.results import limit_xla_threads, table, write_section  # noqa: E402


def _load() -> str:
    return open("/proc/loadavg").read().split()[0]


def _recall(idx, ref):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(idx, ref)]))


def data(n, dim, nq, seed=0):
    """A mixture of 256 Gaussians, so IVF lists mean something, as with real embeddings."""
    r = np.random.default_rng(seed)
    centers = r.standard_normal((256, dim)).astype(np.float32) * 2
    x = (centers[r.integers(0, 256, n)] + r.standard_normal((n, dim))).astype(np.float32)
    q = (centers[r.integers(0, 256, nq)] + r.standard_normal((nq, dim))).astype(np.float32)
    return x, q


def ivf_memory(x, nlist, nprobe, seed, **kw):
    """gmem IVF memory trained on x (k-means, 10 iterations), lists fitted to the longest."""
    import jax
    import jax.numpy as jnp
    from gmem.memory import AssociativeMemory
    n, dim = x.shape
    mem = AssociativeMemory(n, dim, nlist=nlist, nprobe=nprobe, list_cap=2 * math.ceil(n / nlist), **kw)
    t0 = time.perf_counter()
    state = jax.jit(lambda x, key: mem.train_ivf(mem.add(mem.init(), x), key, 10))(jnp.asarray(x), jax.random.key(seed))
    jax.block_until_ready(state)
    train_s = time.perf_counter() - t0
    mem, state = mem.fit_lists(state)
    return mem, state, train_s


def gmem_search(mem, state, k):
    """numpy queries -> numpy (distances, ids), like faiss's search. The jitted function returns
    no result vectors (faiss returns none), so XLA leaves out their gather."""
    import jax
    import jax.numpy as jnp
    search = jax.jit(lambda state, q: mem.search(state, q, k)[1::-1])
    return lambda q: tuple(np.asarray(a) for a in search(state, jnp.asarray(q)))


def run(n, dim, nq, k, nprobe, n_rounds, parts, seed=0):
    import faiss
    import jax
    import jax.numpy as jnp
    from gmem.memory import AssociativeMemory

    x, q = data(n, dim, nq, seed)
    nlist = max(1, round(math.sqrt(n)))
    load0 = _load()
    flat = faiss.IndexFlatL2(dim)
    flat.add(x)
    ref = flat.search(q, k)[1]
    mem = AssociativeMemory(n, dim)
    state = jax.jit(mem.add)(mem.init(), jnp.asarray(x))
    exact = gmem_search(mem, state, k)

    imem, istate, train_s = ivf_memory(x, nlist, nprobe, seed)
    quantizer = faiss.IndexFlatL2(dim)
    quantizer.add(np.asarray(istate.centroids_CD))
    findex = faiss.IndexIVFFlat(quantizer, dim, nlist)
    findex.is_trained = True
    findex.add(x)
    findex.nprobe = nprobe
    ivf = gmem_search(imem, istate, k)
    fns = {"gmem exact": lambda: exact(q), "faiss IndexFlatL2": lambda: flat.search(q, k),
           "gmem IVF": lambda: ivf(q), "faiss IndexIVFFlat": lambda: findex.search(q, k)}
    t = rounds(fns, n_rounds)
    load1 = _load()
    recall = {"gmem exact": _recall(exact(q)[1], ref), "faiss IndexFlatL2": 1.0,
              "gmem IVF": _recall(ivf(q)[1], ref), "faiss IndexIVFFlat": _recall(findex.search(q, k)[1], ref)}
    pair = {"gmem exact": "faiss IndexFlatL2", "gmem IVF": "faiss IndexIVFFlat"}
    rows, goals = [], []
    for name in fns:
        ratio = "-"
        if name in pair:
            r = float(np.median(np.array(t[pair[name]]) / np.array(t[name])))
            ratio = f"{r:.2f}x"
            goals.append(_goal(n, name, r, recall[name]))
        ivf_row = "IVF" in name
        label = f"{name} (searched exactly: N < exact_below)" if name == "gmem IVF" and not imem.uses_ivf else name
        rows.append([n, label, nlist if ivf_row else "-", nprobe if ivf_row else "-",
                     f"{nq / min(t[name]):,.0f}", f"{nq / np.median(t[name]):,.0f}", ratio, f"{recall[name]:.3f}",
                     f"{load0} / {load1}"])
    same = float((ivf(q)[1] == findex.search(q, k)[1]).mean())
    note = (f"N={n:,}: gmem k-means (10 iters, jit incl. compile) {train_s:.1f} s; IVF list capacity "
            f"{imem.cap} (longest list; mean {n / nlist:.0f}); gmem IVF and faiss IVF return the same ids "
            f"for {same:.1%} of results.")
    part_rows, shares = [], ""
    if parts:
        from bench.memory_search_parts import exact_parts, ivf_parts
        ep = exact_parts(mem, state, q, k, 5)
        for stage, s in ep.items():
            part_rows.append([n, "exact", stage, f"{s * 1e3:,.1f}"])
        total = ep["total (mem.search, arrays on the device)"]
        mm, tk = (next(v for st, v in ep.items() if st.startswith(w)) for w in ("matmul", "top-k"))
        tr = ep["transfer (numpy queries in, numpy ids + distances out)"]
        shares = (f"N={n:,}, exact: matmul {mm / total:.0%} of the call ({2 * nq * n * dim / mm / 1e9:.0f} GFLOP/s), "
                  f"top-k {tk / total:.0%}, key norms {ep['key norms + mask'] / total:.0%}, not covered by the stages "
                  f"{max(total - mm - tk - ep['key norms + mask'] - ep['merge of the blocks'], 0) / total:.0%}; transfer "
                  f"{tr / total:.1%} on top")
        ip, scored = ivf_parts(imem, istate, q, k, 5) if imem.uses_ivf else ({}, None)
        for stage, s in ip.items():
            part_rows.append([n, "IVF", stage, f"{s * 1e3:,.1f}"])
        if scored:
            note += (f" Vectors scored per query: gmem IVF {scored['gmem']:,.0f} (whole tiles of {scored['tile']} "
                     f"queries per list), faiss IVF {scored['faiss']:,.0f}; exact {n:,}.")
            scan = ip["list scans (matmul + running top-k per chunk) and merge"]
            shares += (f"; IVF: list scans {scan / ip['total (mem.search)']:.0%} of the call "
                       f"({2 * nq * scored['gmem'] * dim / scan / 1e9:.0f} GFLOP/s over the tiles' vectors).")
    return rows, part_rows, note, goals, shares


def _goal(n, name, ratio, recall):
    """One line of issue 17's goals, met or not, from this run's numbers."""
    if name == "gmem exact":
        ok = ratio >= 0.8
        return f"N={n:,}: exact {ratio:.2f}x IndexFlatL2 (goal >= 0.8x): {'met' if ok else 'MISSED'}"
    ok = ratio >= 0.5 and recall >= 0.95
    return (f"N={n:,}: IVF {ratio:.2f}x IndexIVFFlat at recall {recall:.3f} (goal >= 0.5x at recall >= 0.95): "
            f"{'met' if ok else 'MISSED'}")


def crossover(sizes, dim, nq, k, nprobe, n_rounds, seed=0):
    """gmem exact vs gmem IVF (forced, exact_below=0) on smaller memories."""
    import jax
    import jax.numpy as jnp
    from gmem.memory import AssociativeMemory
    rows = []
    for n in sizes:
        x, q = data(n, dim, nq, seed)
        nlist = max(1, round(math.sqrt(n)))
        mem = AssociativeMemory(n, dim)
        exact = gmem_search(mem, jax.jit(mem.add)(mem.init(), jnp.asarray(x)), k)
        imem, istate, _ = ivf_memory(x, nlist, nprobe, seed, exact_below=0)
        ivf = gmem_search(imem, istate, k)
        ref = exact(q)[1]
        t = rounds({"exact": lambda: exact(q), "ivf": lambda: ivf(q)}, n_rounds)
        ratio = np.median(np.array(t["exact"]) / np.array(t["ivf"]))
        rows.append([n, nlist, nprobe, f"{nq / min(t['exact']):,.0f}", f"{nq / min(t['ivf']):,.0f}",
                     f"{ratio:.2f}x", f"{_recall(ivf(q)[1], ref):.3f}", _load()])
    return rows


HEAD = ["vectors", "search", "nlist", "nprobe", "best q/s", "median q/s", "gmem / faiss (median of rounds)",
        "recall@10", "load avg (start / end)"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    p.add_argument("--crossover", type=int, nargs="*", default=[1_000, 3_000, 10_000])
    p.add_argument("--dim", type=int, default=576)
    p.add_argument("--queries", type=int, default=1024)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobe", type=int, default=8)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="0 = every core for both; 1 = one thread each")
    p.add_argument("--no-parts", action="store_true", help="skip the per-stage timings")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    p.add_argument("--section", default="memory_search", help="RESULTS.md section to write")
    a = p.parse_args(argv)
    if a.threads == 1:
        limit_xla_threads(1)  # before jax starts its CPU backend
    import faiss
    import jax
    if a.threads == 1:
        faiss.omp_set_num_threads(1)

    rows, part_rows, notes, goals, shares = [], [], [], [], []
    for n in a.sizes:
        r, pr, note, g, sh = run(n, a.dim, a.queries, a.k, a.nprobe, a.rounds, not a.no_parts)
        rows += r
        part_rows += pr
        notes.append(note)
        goals += g
        shares += [sh] if sh else []
        print(table(HEAD, r), "\n" + note, flush=True)
    cross = crossover(a.crossover, a.dim, a.queries, a.k, a.nprobe, a.rounds) if a.crossover else []
    cmd = "python bench/bench_memory_search.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    from gmem.memory.associative import EXACT_BELOW
    body = (f"## Associative memory search (`bench/bench_memory_search.py`)\n\n"
            f"`{cmd}`. dim {a.dim}, k={a.k}, {a.queries} queries per call, numpy in and out on both sides, "
            f"{a.rounds} alternating rounds after a warm-up; jax {jax.__version__} ({jax.default_backend()}, "
            f"{'1 thread' if a.threads == 1 else 'XLA default pool'}), faiss-cpu {faiss.__version__} "
            f"({faiss.omp_get_max_threads()} OpenMP threads). The host is shared with other jobs: compare rows "
            f"of one run (the ratio column pairs calls of the same round), not runs.\n\n"
            + (table(HEAD, rows) + "\n\n" + "\n".join(f"- {n}" for n in notes) if rows else ""))
    if goals:
        body += "\n\nGoals of issue 17 in this run (ratio = median over rounds of faiss time / gmem time):\n\n"
        body += "\n".join(f"- {g}" for g in goals)
    if part_rows:
        body += "\n\nWhere gmem's time goes (ms per call of all queries, best of 5 alternating rounds of all stages):\n\n"
        body += table(["vectors", "search", "stage", "ms"], part_rows)
        body += "\n\n" + "\n".join(f"- {sh}" for sh in shares)
    if cross:
        body += (f"\n\nExact or IVF, gmem against itself (nlist = sqrt(N), exact_below=0 forces IVF); "
                 f"`AssociativeMemory` searches an IVF memory exactly below EXACT_BELOW = {EXACT_BELOW:,} slots:\n\n")
        body += table(["vectors", "nlist", "nprobe", "exact q/s", "IVF q/s", "IVF / exact (median)",
                       "IVF recall@10 vs exact", "load avg"], cross)
    if not a.no_write:
        write_section(a.section, body)
    print(body)


if __name__ == "__main__":
    main()
