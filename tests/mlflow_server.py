"""A real ``mlflow server`` on 127.0.0.1 for tests: ``from mlflow_server import mlflow_server, mlflow_server_proc  # noqa``.

``mlflow_server_proc`` starts the process (SQLite backend, proxied artifacts, one worker) and returns
at once, so a test module can request it early and let the server boot while other tests run;
``mlflow_server`` waits for ``/health`` and yields the URL. Killed (its whole process group) at the
end of the session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


class Server:
    def __init__(self, root: Path):
        from ech0.serving import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = root
        self.log = root / "server.log"
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1"]
        env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        env.pop("MLFLOW_TRACKING_URI", None)
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
        from ech0.serving import stop_process

        stop_process(self.proc)


# Test modules import these fixtures, which gives each module its own copy of a "session" fixture;
# the objects themselves are cached here so that one server and one store of each kind serve them all.
_SHARED: dict = {}


def _shared(key: str, make):
    if key not in _SHARED:
        _SHARED[key] = make()
    return _SHARED[key]


@pytest.fixture(scope="session")
def mlflow_server_proc(tmp_path_factory):
    server = _shared("server", lambda: Server(tmp_path_factory.mktemp("mlflow-server")))
    yield server
    server.stop()  # idempotent: the first module's teardown (at the session's end) stops it


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_proc) -> str:
    return mlflow_server_proc.wait()


# -- registry stores shared by tests/test_registry*.py and tests/test_serving*.py --------------------

class Store:
    """One MLflow store (embedded SQLite or the server) holding copies of the session's trained model.

    ``runs``: ``passed`` (eval metrics logged, gate passed), ``failed`` (gate failed), ``noeval``
    (no evaluation): each a real run with the trained pyfunc logged at ``model``. Tests register
    into their own registered-model name, so they share the store without sharing state.
    """

    def __init__(self, kind: str, uri: str, home: Path, source):
        self.kind, self.uri, self.home, self.source = kind, uri, home, source
        self.runs = {
            "passed": log_run(uri, home, source, gate=1.0, score=0.875, with_dataset=True),
            "failed": log_run(uri, home, source, gate=0.0, score=0.25),
            "noeval": log_run(uri, home, source),
        }

    def env(self) -> dict:
        return {"MLFLOW_TRACKING_URI": self.uri, "ECH0_HOME": str(self.home)}


def log_run(uri: str, home: Path, source, *, gate=None, score=None, model_dir=None, with_dataset=False,
            run_dir_tag=None) -> str:
    """A real run in ``uri`` with a pyfunc logged the way training logs it (through ech0.tracking)."""
    import json

    from ech0 import tracking
    from ech0.trainer import fit

    model_dir = Path(model_dir or source.run_dir / "model")
    base_path = json.loads((source.run_dir / "model" / "ech0_model.json").read_text())["base_model"]
    tags = {"ech0.kind": "train", "ech0.preset": "lora", "ech0.base_model": source.cfg.model.name_or_path,
            "ech0.base_model_path": base_path}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECH0_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", "unset")
        mp.delenv("MLFLOW_TRACKING_URI")
        with tracking.start(uri, "ech0", run_name="registry-test", tags=tags) as tr:
            fit._log_model(tr, model_dir, base_path)
            tr.set_tags({"ech0.run_dir": str(run_dir_tag or source.run_dir)})
            if with_dataset:
                from ech0.trainer.data import read_rows

                file = source.cfg.data.train_file
                tr.log_dataset(fit._dataset_frame(read_rows(file)), "sample-train", str(file), fit._sha256(file),
                               "training")
            if gate is not None:
                tr.log_metrics({"eval/gate_passed": gate, "eval/mean_score": score, "eval/pass_rate": score,
                                "eval/safety_flags": 0.0}, step=0)
    return tr.run_id


@pytest.fixture(scope="session")
def sqlite_store(mlflow_server_proc, trained_run, tmp_path_factory) -> Store:
    # mlflow_server_proc first: the server boots while the SQLite tests run.
    def make():
        home = tmp_path_factory.mktemp("registry-sqlite")
        return Store("sqlite", f"sqlite:///{home / 'mlflow.db'}", home, trained_run)

    return _shared("sqlite_store", make)


@pytest.fixture(scope="session")
def server_store(mlflow_server, trained_run, tmp_path_factory) -> Store:
    return _shared("server_store", lambda: Store("server", mlflow_server, tmp_path_factory.mktemp("registry-server"),
                                                 trained_run))


@pytest.fixture(params=["sqlite", "server"])
def store(request) -> Store:
    """Every registry test runs twice: the embedded SQLite store, then a real `mlflow server`."""
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def model_name(request) -> str:
    import re
    import uuid

    return "t-" + re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:60] + "-" + uuid.uuid4().hex[:6]
