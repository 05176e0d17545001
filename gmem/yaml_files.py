"""YAML config files as gmem reads them: one mapping per file, `extends:` chains resolved base
first, and every key path mapped to its line, so an error can name FILE:LINE and the key.

Composed with yaml's SafeLoader: nothing in a file runs."""

from __future__ import annotations

import pathlib
from typing import Any

import yaml

from gmem.errors import GmemError, read_utf8


def read_yaml(path: str | pathlib.Path) -> dict:
    """safe_load a YAML mapping; syntax errors name the file and line, other encodings than
    UTF-8 the line and byte."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise GmemError(f"{p}: config file not found")
    text = read_utf8(p, "a YAML config")
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise GmemError(f"{where}: bad YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise GmemError(f"{p}: bad YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GmemError(f"{p}: a config file must be a mapping of sections, got {type(data).__name__}")
    return data


def yaml_key_lines(text: str) -> dict[str, tuple[int, str | None]]:
    """Every key path of a YAML document ('train.steps', 'adapters[0].rank') -> (its 1-based
    line, its scalar value's text or None). Composed, never constructed: nothing in the file runs."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    out: dict[str, tuple[int, str | None]] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    path = f"{prefix}.{k.value}" if prefix else str(k.value)
                    out.setdefault(path, (k.start_mark.line + 1,
                                          v.value if isinstance(v, yaml.ScalarNode) else None))
                    walk(v, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                path = f"{prefix}[{i}]"
                out.setdefault(path, (v.start_mark.line + 1, v.value if isinstance(v, yaml.ScalarNode) else None))
                walk(v, path)

    walk(root, "")
    return out


def locate_in_file(where: str, key: str | None, value: Any = None) -> tuple[str, str | None]:
    """('FILE:LINE', full key path) of `key` (OmegaConf's full_key; inside a list it is only the
    last part, e.g. 'rank' for adapters[1].rank, and `value`, the rejected value, picks the
    entry) in the YAML file `where`; (where, key) when the file or the key is not found."""
    p = pathlib.Path(where)
    if not key or not p.is_file():
        return where, key
    try:
        lines = yaml_key_lines(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return where, key
    if key in lines:
        return f"{where}:{lines[key][0]}", key
    tails = [k for k in lines if k.endswith("." + key)]
    if value is not None:
        tails = [k for k in tails if lines[k][1] == str(value)] or tails
    if tails:
        return f"{where}:{lines[tails[0]][0]}", tails[0]
    return where, key


def file_layers(path: pathlib.Path, seen: tuple = ()) -> list[tuple[str, dict]]:
    """The file and the files it extends, base first, as (name, dict) layers."""
    given, path = path, path.resolve()
    if path in seen:
        chain = " -> ".join(str(s) for s in seen + (path,))
        raise GmemError(f"{given}: `extends` makes a cycle: {chain}")
    data = read_yaml(given)
    parents = data.pop("extends", None) or []
    if isinstance(parents, str):
        parents = [parents]
    layers = []
    for parent in parents:
        pp = pathlib.Path(parent)
        if not pp.is_absolute():
            pp = path.parent / pp
        if not pp.is_file():
            raise GmemError(f"{path}: extends: file {parent!r} not found (looked at {pp})")
        layers += file_layers(pp, seen + (path,))
    return layers + [(str(given), data)]
