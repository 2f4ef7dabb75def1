"""The one exception type for user mistakes.

Library code raises :class:`UserError` for anything the user can fix (a bad CSV, a missing file, a
config typo, a mismatched checkpoint). Entry scripts catch it and print a one-line message with a
non-zero exit status, instead of a traceback. ``assert`` stays reserved for internal invariants.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem in the user's input, reported as one line without a traceback."""


def run_cli(fn: Callable[[], object]) -> int:
    """Run a command-line entry point: a UserError becomes ``error: <message>`` on stderr and exit status 2."""
    try:
        result = fn()
    except UserError as exc:
        message = str(exc).strip()
        if "Traceback" in message:  # re-raised from a DataLoader worker: keep the original message only
            message = message.splitlines()[-1].split(": ", 1)[-1]
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


def printable(text: object, limit: int = 80) -> str:
    """A user-given string (a CSV header, a config key) made safe for a one-line message: newlines and
    other control characters escaped, long text shortened."""
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))
    return text if len(text) <= limit else text[:limit] + "..."
