"""User errors: one line, exit code 2, no traceback.

    raise UserError("data/train.jsonl: not found; run `ech0 data import` first")
    line = mlflow_refusal(e, doing="promote v3 of 'ech0' to production")  # MLflow's 401/403 as one line, else None

``cli_errors`` also turns a 401/403 from an MLflow server (``mlflow server --app-name basic-auth``)
that no stage explained into one line naming the user: never a password, never MLflow's raw text.
"""

from __future__ import annotations

import functools
import re
import sys
from urllib.parse import urlsplit, urlunsplit

# MLflow's error codes for the basic-auth app's refusals (HTTP 401 and 403)
UNAUTHENTICATED, PERMISSION_DENIED = "UNAUTHENTICATED", "PERMISSION_DENIED"
README_AUTH = 'README "Who may do what"'


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
        except Exception as e:  # an MLflow server's 401/403 that no stage explained: still one line
            line = mlflow_refusal(e)
            if line is None:
                raise
            print(f"error: {line}", file=sys.stderr)
            raise SystemExit(UserError.exit_code) from None

    return wrapper


def safe_uri(uri: str | None) -> str:
    """``uri`` without a ``user:password@`` part (a tracking URI may carry one; messages never do)."""
    if not uri:
        return "the MLflow server"
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "the MLflow server"
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


def mlflow_user() -> str | None:
    """The MLflow user this process logs in as (MLflow's own lookup: ``MLFLOW_TRACKING_USERNAME``, else
    ~/.mlflow/credentials); only the name, never the password, goes into a message."""
    from mlflow.utils.credentials import read_mlflow_creds

    return read_mlflow_creds().username or None


def _named(user: str | None) -> str:
    return f"MLflow user {user!r}" if user else "this process (no MLflow login)"


def mlflow_refusal(e: BaseException, *, doing: str | None = None, uri: str | None = None) -> str | None:
    """One line for an MLflow server's 401 (no or wrong login) or 403 (a permission missing), else None.

    ``doing`` ("promote v3 of 'ech0' to production") says what was refused; ``uri``: the server (default:
    MLflow's current tracking URI). ech0.registry.access names the permission itself (``denied_line``)."""
    code = getattr(e, "error_code", None)
    if code not in (UNAUTHENTICATED, PERMISSION_DENIED) or not type(e).__module__.startswith("mlflow"):
        return None
    if uri is None:
        import mlflow

        uri = mlflow.get_tracking_uri()
    server, user, to = safe_uri(uri), mlflow_user(), f" to {doing}" if doing else ""
    if code == UNAUTHENTICATED:
        if user is None:
            return (f"{server} wants an MLflow login{to}: set MLFLOW_TRACKING_USERNAME and "
                    f"MLFLOW_TRACKING_PASSWORD to your MLflow user's name and password")
        return (f"{server} refused the login of MLflow user {user!r}{to} (401: unknown user or wrong password); "
                f"check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    endpoint = re.search(r"endpoint (\S+)", str(e))
    at = f" at {endpoint.group(1)}" if endpoint else ""
    return (f"{_named(user)} was refused{at} (403 permission denied){' while trying' + to if doing else ''}; "
            f"ask an MLflow admin for the permission ({README_AUTH})")


def denied_line(user: str | None, doing: str, need: str, has: str | None = None, grant: str | None = None) -> str:
    """``MLflow user 'bob' may not <doing>: that needs <need>, and bob has READ; ask an MLflow admin ...``"""
    return (f"{_named(user)} may not {doing}: that needs {need}" + (f", and {user} has {has}" if has else "")
            + "; ask an MLflow admin to grant it" + (f": {grant}" if grant else f" ({README_AUTH})"))


def sigterm_as_interrupt() -> None:
    """SIGTERM (a scheduler's kill, `kill PID`) raises KeyboardInterrupt like Ctrl-C: runs end KILLED."""
    import signal

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
