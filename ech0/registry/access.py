"""Who may do what on a shared ``mlflow server --app-name basic-auth``: checked before a registry write,
and MLflow's 401/403 turned into one line that names the user, the operation and the permission.

    from ech0.registry import access
    access.require(c, name, "promote v3 of 'ech0' to production")   # UserError before anything is written
    with access.refusals(c, name, "list the versions of 'ech0'", need="READ"):
        ...                                                          # a 401/403 inside -> one line

The login is MLflow's own (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, read by MLflow
when it sends a request); ech0 reads only the user name, for messages, and writes neither anywhere.

The check asks the server what the user may do on the registered model (``GET
/api/3.0/mlflow/users/permissions/get``, which every user may ask about themselves) and refuses a
move the server would refuse, before the registry lock is taken or a history event written: a
READ user's ``promote`` leaves no trace. A store without the auth app (SQLite, a plain server)
answers nothing, and nothing is checked. MLflow still enforces every request; the check only makes
the refusal early, whole and readable.
"""

from __future__ import annotations

from contextlib import contextmanager

from ech0.errors import UserError, denied_line, mlflow_refusal, mlflow_user, safe_uri

RESOURCE = "registered_model"
PERMISSION_ENDPOINT = "/api/3.0/mlflow/users/permissions/get"
# MLflow's permission names (mlflow.server.auth.permissions) that allow each kind of request on a
# registered model: reads (get, search, aliases) need READ; writes (tags, aliases, new versions) need
# can_update, which EDIT and MANAGE have. Listed here so a client needs no mlflow[auth] (its package
# imports the whole server app).
ALLOWS = {"READ": ("READ", "USE", "EDIT", "MANAGE"), "EDIT": ("EDIT", "MANAGE")}
NEED_TEXT = {"READ": "READ", "EDIT": "EDIT (or MANAGE)"}


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def permission(c, name: str, doing: str | None = None) -> str | None:
    """The permission the server resolves for this process's MLflow user on registered model ``name``
    (``READ``, ``EDIT``, ``MANAGE``, ``NO_PERMISSIONS`` ...), or None where the store has no auth app.

    A 401 (no login, a wrong password) raises the one-line UserError: nothing else could work."""
    if not is_server(c.tracking_uri):
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    creds = get_default_host_creds(c.tracking_uri)
    try:
        resp = http_request(creds, PERMISSION_ENDPOINT, "GET", max_retries=2, timeout=30,
                            params={"username": creds.username or "", "resource_type": RESOURCE, "resource_id": name})
        resp = verify_rest_response(resp, PERMISSION_ENDPOINT)
        return str(resp.json().get("permission") or "") or None
    except MlflowException as e:
        if getattr(e, "error_code", None) == "UNAUTHENTICATED":
            raise UserError(mlflow_refusal(e, doing=doing, uri=c.tracking_uri)) from None
        return None  # 404 (no auth app), or an answer this client cannot read: MLflow decides per request
    except ValueError:
        return None


def grant_command(c, user: str | None, name: str, need: str) -> str:
    """What an admin runs to give ``user`` the ``need`` permission on ``name`` (the README shows it too)."""
    return (f"python -c \"from mlflow.server import get_app_client; get_app_client('basic-auth', "
            f"tracking_uri='{safe_uri(c.tracking_uri)}').grant_user_permission('{user or 'USER'}', "
            f"'{RESOURCE}', '{name}', '{need}')\"")


def _refused(c, name: str, doing: str, need: str, has: str | None) -> UserError:
    user = mlflow_user()
    return UserError(denied_line(user, doing, f"{NEED_TEXT[need]} on registered model {name!r}", has,
                                 grant_command(c, user, name, need)))


def require(c, name: str, doing: str, need: str = "EDIT", *, unknown_ok: bool = False) -> None:
    """Refuse ``doing`` before anything is written when the server says the user lacks ``need`` on
    ``name``. ``unknown_ok``: ``NO_PERMISSIONS`` may mean the model does not exist yet (``register``
    creates it, which the server allows every user): let MLflow decide."""
    has = permission(c, name, doing)
    if has is None or has in ALLOWS[need] or (unknown_ok and has == "NO_PERMISSIONS"):
        return
    raise _refused(c, name, doing, need, has)


@contextmanager
def refusals(c, name: str, doing: str, need: str = "EDIT"):
    """Inside: an MLflow 401/403 becomes one line naming the user, ``doing`` and the permission on ``name``.

    A 403 on a request that is not about the registered model (reading a run needs READ on its
    experiment), or from a server that does not say what the user has, is named by its endpoint
    instead of claiming the model permission."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as e:
        code = getattr(e, "error_code", None)
        if code == "PERMISSION_DENIED":
            has = permission(c, name, doing)
            if has is not None and has not in ALLOWS[need]:  # the model's permission is what is missing
                raise _refused(c, name, doing, need, has) from None
            raise UserError(mlflow_refusal(e, doing=doing, uri=c.tracking_uri)) from None  # another one: named
        line = mlflow_refusal(e, doing=doing, uri=c.tracking_uri)
        if line is None:
            raise
        raise UserError(line) from None
