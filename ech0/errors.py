"""User errors: one line, exit code 2, no traceback.

    raise UserError("data/train.jsonl: not found; run `ech0 data import` first")
"""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A problem the user can fix; printed as one line and exit code 2."""

    exit_code = 2


def cli_errors(fn):
    """Decorator for CLI entry points: UserError -> one line on stderr, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(e.exit_code) from None

    return wrapper


def sigterm_as_interrupt() -> None:
    """SIGTERM (a scheduler's kill, `kill PID`) raises KeyboardInterrupt like Ctrl-C: runs end KILLED."""
    import signal

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
