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


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table."""
    fmt = lambda v: f"{v:,.1f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
