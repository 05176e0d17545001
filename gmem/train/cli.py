"""Shared parts of train.py and infer.py: argument splitting, config loading, error exit."""

from __future__ import annotations

import functools
import sys

from gmem.errors import GmemError


def run_cli(main):
    """Call main(argv) -> int; a GmemError prints one line on stderr and exits with code 2."""
    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        argv = sys.argv[1:] if argv is None else list(argv)
        try:
            return main(argv) or 0
        except GmemError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return wrapped
