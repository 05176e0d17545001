#!/usr/bin/env python
"""What is live at a compiled step's memory peak, from an XLA dump: the after-optimizations
HLO and its buffer live ranges (XLA:CPU and the TPU compiler both write them).

    XLA_FLAGS="--xla_dump_to=DUMP --xla_dump_hlo_module_re=.*step.* --xla_dump_hlo_pass_re=NONE" \
        python bench/aot_gofa.py --tpu v5e:2x4        # (with --tpu, XLA_FLAGS holds only the dump)
    python bench/xla_peak.py DUMP [--top 25]

Prints the peak of temporaries (parameters left out) and the live buffers there, grouped by
opcode, shape and source op (layer numbers folded), with one example buffer and its live range.
Buffers are counted at their top-level shape; tuples and bitcasts/get-tuple-elements (which
alias other buffers) are left out, so the figure is close to, not equal to, memory_analysis().
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import sys

BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s64": 8, "u64": 8, "pred": 1, "s8": 1, "u8": 1}
ALIASES = ("get-tuple-element", "bitcast", "parameter")


def read_dump(d: str) -> tuple[str, str]:
    """(after-optimizations HLO text, its live-range text) of the one module dumped in d."""
    ranges = glob.glob(f"{d}/*after_optimizations-live-range.txt")
    if len(ranges) != 1:
        raise SystemExit(f"{d}: expected one *after_optimizations-live-range.txt, found {len(ranges)}")
    prefix = ranges[0][: -len("-live-range.txt")]
    with open(prefix + ".txt") as h, open(ranges[0]) as r:
        return h.read(), r.read()


def buffers(hlo: str) -> dict:
    """name -> (bytes, shape, opcode, op_name) of every instruction with an array shape."""
    out = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\]\{[^}]*\} (\S+?)\((.*)$", hlo, re.M):
        name, dt, dims, op, rest = m.groups()
        n = 1
        for x in filter(None, dims.split(",")):
            n *= int(x)
        meta = re.search(r'op_name="([^"]*)"', rest)
        out[name] = (n * BYTES.get(dt, 4), f"{dt}[{dims}]", op, meta.group(1) if meta else "")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dump")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args(argv)
    hlo, lr = read_dump(a.dump)
    info = buffers(hlo)
    live = [(n, int(s), int(e), info[n][0]) for n, s, e in re.findall(r"^\s+(\S+?)\{\}:(\d+)-(\d+)$", lr, re.M)
            if n in info and info[n][2] not in ALIASES]
    end = max(e for _, _, e, _ in live) + 2
    delta = [0] * (end + 1)
    for _, s, e, size in live:
        delta[s] += size
        delta[e + 1] -= size
    cur = peak = at = 0
    for t in range(end):
        cur += delta[t]
        if cur > peak:
            peak, at = cur, t
    print(f"peak of temporaries {peak / 2 ** 30:.2f} GiB at step {at} of {end}")
    groups, example = collections.Counter(), {}
    for name, s, e, size in live:
        if s <= at <= e:
            _, shape, op, meta = info[name]
            key = (op, shape, re.sub(r"layers_\d+", "layers_N", meta)[-100:])
            groups[key] += size
            example.setdefault(key, (name, s, e, 0))
            example[key] = example[key][:3] + (example[key][3] + 1,)
    for (op, shape, meta), size in groups.most_common(a.top):
        name, s, e, count = example[(op, shape, meta)]
        print(f"{size / 2 ** 30:7.3f} GiB  {count:4d} x {op:14s} {shape:24s} e.g. {name} [{s}-{e}]  {meta}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
