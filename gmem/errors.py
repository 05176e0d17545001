"""The one error type for user mistakes.

A GmemError means the user gave gmem something wrong (a config key, a file, a shape on
import). Its message names the file, line or field; the command-line tools print it on one
line and exit with code 2. Every other exception is a bug and keeps its traceback.
"""


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
