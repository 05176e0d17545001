"""HF <-> gmem parameter names as data.

A family's key map is a tuple of Rules. Each rule pairs an HF state-dict key pattern with a
gmem parameter path pattern; `{name}` placeholders match digits or identifiers and carry over
between the two, so one table serves import and export:

    Rule("model.layers.{i}.self_attn.{p}.weight", "model/layers_{i}/self_attn/{p}/kernel", "T")

Transforms (each its own inverse, so export uses the same rule):
    ""   copy as is
    "T"  transpose a 2-D matrix (torch Linear [out, in] <-> gmem kernel [in, out])
"""

from __future__ import annotations

import dataclasses
import re
from functools import lru_cache
from typing import Iterable

import numpy as np

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str
    gmem: str
    transform: str = ""


def _pattern(template: str, sep: str) -> re.Pattern:
    out, pos = [], 0
    for m in _PLACEHOLDER.finditer(template):
        out.append(re.escape(template[pos:m.start()]))
        out.append(rf"(?P<{m.group(1)}>[^{re.escape(sep)}]+)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


@lru_cache(maxsize=None)
def _compiled(rule: Rule, direction: str) -> re.Pattern:
    return _pattern(rule.hf, ".") if direction == "in" else _pattern(rule.gmem, "/")


def hf_to_gmem(key: str, rules: Iterable[Rule]) -> tuple[str, str] | None:
    """HF key -> (gmem path 'a/b/c', transform), or None when no rule matches."""
    for rule in rules:
        m = _compiled(rule, "in").match(key)
        if m:
            return rule.gmem.format(**m.groupdict()), rule.transform
    return None


def gmem_to_hf(path: str, rules: Iterable[Rule]) -> tuple[str, str] | None:
    """gmem path 'a/b/c' -> (HF key, transform), or None when no rule matches."""
    for rule in rules:
        m = _compiled(rule, "out").match(path)
        if m:
            return rule.hf.format(**m.groupdict()), rule.transform
    return None


def apply_transform(x: np.ndarray, transform: str) -> np.ndarray:
    if transform == "":
        return x
    if transform == "T":
        return np.ascontiguousarray(x.T)
    raise ValueError(f"unknown key-map transform {transform!r}")
