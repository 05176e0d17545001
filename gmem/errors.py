"""The one error type for user mistakes.

A GmemError means the user gave gmem something wrong (a config key, a file, a shape on
import). Its message names the file, line or field; the command-line tools print it on one
line and exit with code 2. Every other exception is a bug and keeps its traceback.
"""
import functools
import pathlib
import sys
import warnings


class GmemError(Exception):
    """A user-facing error whose message names the file, line or field at fault."""


def collect_errors(errors: list[str], header: str, limit: int = 50) -> None:
    """Raise one GmemError listing every problem found, or return if there are none.

    Conversions collect all their problems first (Bonsai style) so a user fixes them in one go.
    """
    if not errors:
        return
    shown = errors[:limit]
    more = f"; ... and {len(errors) - limit} more" if len(errors) > limit else ""
    raise GmemError(f"{header}: " + "; ".join(shown) + more)


def read_utf8(path, what: str = "") -> str:
    """The text of a UTF-8 file; a file in another encoding is a GmemError naming the file, the
    line and the byte offset of the first bad byte (instead of a UnicodeDecodeError traceback or
    a silent decode with replacement characters). `what` says what the file is for."""
    data = pathlib.Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        bad = data[e.start:e.start + 1].hex()
        kind = f" ({what})" if what else ""
        raise GmemError(f"{path}:{line}: not UTF-8 text{kind}: byte 0x{bad} at offset {e.start} "
                        "(re-save the file as UTF-8)") from None


def run_cli(main):
    """Decorate a command's main(argv) -> int: a GmemError prints one line on stderr and
    returns exit code 2 (argv None = sys.argv[1:])."""
    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        argv = sys.argv[1:] if argv is None else list(argv)
        shown = warnings.formatwarning
        warnings.formatwarning = functools.partial(_one_line_warning, other=shown)
        try:
            return main(argv) or 0
        except GmemError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        finally:
            warnings.formatwarning = shown
    return wrapped


def _one_line_warning(message, category, filename, lineno, line=None, *, other) -> str:
    """gmem's own warnings (UserWarning) as `warning: ...` lines, as errors are `error: ...`;
    other categories (a library's deprecations) keep the format that was in place (`other`)."""
    if category is UserWarning:
        return f"warning: {message}\n"
    return other(message, category, filename, lineno, line)
