"""Fixtures for the registry, smoke and pipeline tests: a real ``mlflow server``, stores holding the
session's trained model, and the registry CLI. A pytest plugin (``pytest_plugins`` in tests/conftest.py).

``mlflow_server_proc`` starts the server process (SQLite backend, proxied artifacts, one worker) and
returns at once, so a test can request it early and let the server boot while other tests run;
``mlflow_server`` waits for ``/health`` and yields the URL. Killed (its whole process group) at the
end of the session. ``store`` runs a test twice: the embedded SQLite store, then the server.
``mlflow_auth_server`` is the same server with MLflow's basic-auth app (``--app-name basic-auth``):
an admin with a random password, users made and granted with MLflow's own auth client.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


class Server:
    def __init__(self, root: Path, app_name: str | None = None, extra_env: dict | None = None, port: int | None = None):
        from ech0.smoke import free_port

        self.port = port or free_port()  # a restart passes the port (and root) of the server it replaces
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = root
        self.log = root / "server.log"
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1"] + (["--app-name", app_name] if app_name else [])
        env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               **(extra_env or {})}
        for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(k, None)
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no huey job runners: a faster, leaner boot
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=root, env=env,
                                         start_new_session=True)
        self.ready = False

    def wait(self, timeout: float = 300) -> str:
        deadline = time.time() + timeout
        while not self.ready:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    self.ready = r.status == 200
            except OSError:
                pass
            if not self.ready:
                if time.time() > deadline:
                    raise RuntimeError(f"mlflow server not up after {timeout}s: {self.log.read_text()[-2000:]}")
                time.sleep(0.5)
        return self.url

    def stop(self) -> None:
        from ech0.smoke import stop_process

        stop_process(self.proc)


@pytest.fixture(scope="session")
def mlflow_server_proc(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_proc) -> str:
    return mlflow_server_proc.wait()


class AuthServer(Server):
    """``mlflow server --app-name basic-auth``: ``default_permission = NO_PERMISSIONS`` (every grant is
    explicit), the admin's password random (MLflow refuses to start without one), set through a
    ``basic_auth.ini`` named by ``MLFLOW_AUTH_CONFIG_PATH``; a Flask secret key for its CSRF check.

    ``env(user)``: the environment a user's commands run with (MLflow's own login variables);
    ``admin()``: a context in which this process talks to the server as the admin;
    ``create_user(name)`` -> its (random) password; ``grant(user, resource_type, id, permission)``.
    ``passwords``: every password handed out, for tests that grep for leaks."""

    def __init__(self, root: Path, default_permission: str = "NO_PERMISSIONS"):
        self.admin_user, self.admin_password = "admin", "pw-" + secrets.token_urlsafe(18)
        ini = root / "basic_auth.ini"
        ini.write_text(f"[mlflow]\ndefault_permission = {default_permission}\n"
                       f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
                       f"admin_username = {self.admin_user}\nadmin_password = {self.admin_password}\n"
                       "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                       # Without it every request pays a PBKDF2 password check on the server: the 12
                       # registry moves of tests/test_registry_auth.py took 127 s here (a promote makes
                       # ~17 requests). Only successful logins are cached; a wrong password never is.
                       "auth_cache_ttl_seconds = 600\n")
        self.passwords = {self.admin_user: self.admin_password}
        super().__init__(root, app_name="basic-auth", extra_env={
            "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)})

    def env(self, user: str | None, password: str | None = None) -> dict:
        """MLflow's login variables for ``user`` (its own password unless ``password``); None: no login."""
        if user is None:
            return {"MLFLOW_TRACKING_URI": self.url}
        return {"MLFLOW_TRACKING_URI": self.url, "MLFLOW_TRACKING_USERNAME": user,
                "MLFLOW_TRACKING_PASSWORD": password if password is not None else self.passwords[user]}

    @contextlib.contextmanager
    def admin(self):
        with pytest.MonkeyPatch.context() as mp:
            for k, v in self.env(self.admin_user).items():
                mp.setenv(k, v)
            yield

    def auth_client(self):
        from mlflow.server import get_app_client

        return get_app_client("basic-auth", tracking_uri=self.url)

    def create_user(self, name: str) -> str:
        password = "pw-" + secrets.token_urlsafe(18)
        with self.admin():
            self.auth_client().create_user(name, password)
        self.passwords[name] = password
        return password

    def grant(self, user: str, resource_type: str, resource_id: str, permission: str) -> None:
        with self.admin():
            self.auth_client().grant_user_permission(user, resource_type, resource_id, permission)


@pytest.fixture(scope="session")
def mlflow_auth_server_proc(tmp_path_factory):
    server = AuthServer(tmp_path_factory.mktemp("mlflow-auth-server"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_auth_server(mlflow_auth_server_proc) -> AuthServer:
    """A running basic-auth server (see AuthServer); its URL is ``.url``."""
    mlflow_auth_server_proc.wait()
    return mlflow_auth_server_proc


# -- registry stores shared by tests/test_registry*.py and tests/test_smoke.py ----------------------

def _log_run(ctx, source, *, gate=None, score=None, model_dir=None, with_dataset=False) -> str:
    """A real run in ``ctx``'s store with the pyfunc logged the way training logs it (ech0.mlflow_model)."""
    import pandas as pd

    from ech0 import tracking
    from ech0.io import sha256_file
    from ech0.mlflow_model import log_pyfunc
    from ech0.model_folder import read_meta

    base_path = read_meta(source.run_dir / "model")["base_model"]
    tags = {"ech0.kind": "train", "ech0.preset": "lora", "ech0.base_model": source.cfg.model.name_or_path,
            "ech0.base_model_path": base_path}
    with tracking.start(ctx, "ech0", run_name="registry-test", tags=tags) as tr:
        log_pyfunc(tr, Path(model_dir or source.run_dir / "model"), base_path)
        tr.set_tags({"ech0.run_dir": str(source.run_dir)})
        if with_dataset:
            file = source.cfg.data.train_file
            tr.log_dataset(pd.read_json(file, lines=True), "sample-train", str(file), sha256_file(file), "training")
        if gate is not None:
            tr.log_metrics({"eval/gate_passed": gate, "eval/mean_score": score, "eval/pass_rate": score,
                            "eval/safety_flags": 0.0}, step=0)
    return tr.run_id


class Store:
    """One MLflow store (embedded SQLite or the server) holding copies of the session's trained model.

    ``ctx``: a Context on it; ``runs``: ``passed`` (eval metrics logged, gate passed), ``failed``
    (gate failed), ``noeval`` (no evaluation): each a real run with the trained pyfunc logged at
    ``model``. Tests register into their own registered-model name, so they share the store
    without sharing state.
    """

    def __init__(self, kind: str, uri: str, home: Path, source):
        from ech0.context import Context

        self.kind, self.uri, self.home, self.source = kind, uri, home, source
        self.ctx = Context(home=home, tracking_uri=uri)
        self.runs = {
            "passed": _log_run(self.ctx, source, gate=1.0, score=0.875, with_dataset=True),
            "failed": _log_run(self.ctx, source, gate=0.0, score=0.25),
            "noeval": _log_run(self.ctx, source),
        }

    def env(self) -> dict:
        return {"MLFLOW_TRACKING_URI": self.uri, "ECH0_HOME": str(self.home)}

    def log_run(self, **kw) -> str:
        """Another run like ``runs`` (``gate=``, ``score=``, ``model_dir=`` another model folder)."""
        return _log_run(self.ctx, self.source, **kw)


@pytest.fixture(scope="session")
def sqlite_store(mlflow_server_proc, trained_run, tmp_path_factory) -> Store:
    # mlflow_server_proc first: the server boots while the SQLite tests run.
    home = tmp_path_factory.mktemp("registry-sqlite")
    return Store("sqlite", f"sqlite:///{home / 'mlflow.db'}", home, trained_run)


@pytest.fixture(scope="session")
def server_store(mlflow_server, trained_run, tmp_path_factory) -> Store:
    return Store("server", mlflow_server, tmp_path_factory.mktemp("registry-server"), trained_run)


@pytest.fixture(params=["sqlite", "server"])
def store(request) -> Store:
    """Every registry test runs twice: the embedded SQLite store, then a real `mlflow server`."""
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def model_name(request) -> str:
    import re
    import uuid

    return "t-" + re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:60] + "-" + uuid.uuid4().hex[:6]


@pytest.fixture
def registry_cli(capsys):
    """``code, out, err = registry_cli("promote", "--version", "1", ...)``: ``ech0 registry`` in process."""
    from ech0.registry.cli import main

    def call(*args: str) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return call
