"""Nested parameter dicts <-> flat {'a/b/c': leaf} maps (the form key maps, checkpoints and
adapter placements address parameters by)."""

from __future__ import annotations


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """Nested dict -> {'a/b/c': leaf}."""
    out = {}
    for k, v in tree.items():
        p = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict) or hasattr(v, "items") and not hasattr(v, "shape"):
            out.update(flatten(dict(v), p))
        else:
            out[p] = v
    return out


def unflatten(flat: dict[str, object]) -> dict:
    """{'a/b/c': leaf} -> nested dict."""
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return tree
