"""Write one benchmark's table into bench/RESULTS.md without touching the others' sections.

Each benchmark owns the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`.
"""

from __future__ import annotations

import datetime
import pathlib
import platform
import re

RESULTS = pathlib.Path(__file__).with_name("RESULTS.md")
HEADER = "# gmem benchmarks\n\nEach section is rewritten by the script named in it. Numbers are from one run on the machine it names.\n"


def machine() -> str:
    import os
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(name: str, body: str, path: pathlib.Path = RESULTS) -> None:
    """Replace (or append) section NAME of RESULTS.md with body (markdown)."""
    text = path.read_text() if path.exists() else HEADER
    stamp = datetime.date.today().isoformat()
    block = f"<!-- bench:{name} -->\n{body.rstrip()}\n\n_{machine()}, {stamp}_\n<!-- /bench:{name} -->"
    pat = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def section_rows(name: str, first_header: str, path: pathlib.Path = RESULTS) -> list[str]:
    """The table rows (markdown lines, header and rule left out) of section NAME's table whose
    first column is headed first_header, for a script that adds its row above earlier ones;
    [] when there is no such section or table."""
    text = path.read_text() if path.exists() else ""
    m = re.search(rf"<!-- bench:{re.escape(name)} -->.*?(\| {re.escape(first_header)} \|.*?)\n\n", text, re.S)
    return m.group(1).splitlines()[2:] if m else []


def add_threads_arg(ap) -> None:
    """--threads for benchmarks that time gmem and PyTorch side by side."""
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads per side (torch.set_num_threads; XLA: 1 = the process pinned "
                         "to one core, else its default pool); 1 is the stable choice on a shared CPU")


def limit_xla_threads(threads: int) -> None:
    """threads == 1: XLA:CPU (and everything else in this process) on one core. Must run before
    jax starts its CPU backend and before torch starts its threads.

    XLA's flags alone do not do it: with single-threaded Eigen, XLA:CPU still runs independent
    thunks on its thread pool and its YNNPACK dots split across cores. Measured on the 2-core
    box: a jitted [381, 576] x [576, 49152] dot kept 1.9 cores busy, and ReGrad's meta step 1.9
    (CPU time / wall time), while torch.set_num_threads(1) keeps 1.0. Pinning the process with
    sched_setaffinity (which every thread started later inherits) makes "one thread per side"
    true; XLA then sizes its pool to the one core it sees."""
    import os
    if threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen"
                                   "=false intra_op_parallelism_threads=1").strip()
        if hasattr(os, "sched_setaffinity"):   # Linux; elsewhere the flags are all there is
            os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})


def threads_phrase(threads: int) -> str:
    """How a section names the cores each side had, matching limit_xla_threads."""
    if threads == 1:
        return "one core (the process pinned to it; XLA's thread flags alone let it use every core)"
    return f"{threads} threads (torch.set_num_threads; XLA's default pool)"


def cpu_per_wall(fn) -> tuple[object, float]:
    """(fn(), CPU seconds of this process per wall second during the call): how many cores it
    kept busy, so a table can show that "one thread" was one core."""
    import os
    import time
    c0, t0 = os.times(), time.perf_counter()
    out = fn()
    c1, wall = os.times(), time.perf_counter() - t0
    return out, (c1.user + c1.system - c0.user - c0.system) / max(wall, 1e-9)


def timed(fn, reps: int) -> tuple[float, float, list]:
    """Call fn 1 + reps times: (first call's seconds, median of the later calls, every result)."""
    import statistics
    import time
    times, outs = [], []
    for _ in range(reps + 1):
        t = time.perf_counter()
        outs.append(fn())
        times.append(time.perf_counter() - t)
    return times[0], statistics.median(times[1:]), outs


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table."""
    fmt = lambda v: f"{v:,.1f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
