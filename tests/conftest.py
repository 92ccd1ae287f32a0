"""Shared fixtures: offline, one tiny base model per machine, a fresh ECH0_HOME per test."""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
# Built base models are shared by every test (and kept between `make test` runs): built once.
os.environ.setdefault("ECH0_BASE_MODELS_DIR", str(ROOT / ".cache" / "base_models"))
os.environ.pop("MLFLOW_TRACKING_URI", None)
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from ech0.models import ensure_base_model

    return ensure_base_model()


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
def home(ech0_home) -> Path:
    """Short name for the test's ECH0_HOME (modules that need a different home override it)."""
    return ech0_home


def wait_for(predicate, timeout: float, proc=None) -> bool:
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


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None):
    """Run ``python -m <args>`` in a subprocess with the test's environment."""
    import subprocess

    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd or ROOT)


@pytest.fixture(scope="session")
def trained_run(tiny_model_dir, tmp_path_factory):
    """One real `+preset=lora` run, shared by every test that needs a fine-tuned model.

    Returns the FitResult (run_id, run_dir, tracking_uri, model, tokenizer, losses) with ``.home``
    (its ECH0_HOME) and ``.cfg`` added. Tests that query its MLflow store use ``.tracking_uri``;
    do not write into ``.home`` — copy what you need to change.
    """
    from ech0.cli_common import compose
    from ech0.trainer.fit import fit

    home = tmp_path_factory.mktemp("trained-run-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECH0_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", "unset")
        mp.delenv("MLFLOW_TRACKING_URI")
        cfg = compose("train", ["+preset=lora", "trainer.progress=false", "tracking.log_system_metrics=false"])
        result = fit(cfg)
    result.home, result.cfg = home, cfg
    return result


def clone_home(src: Path, dst: Path) -> Path:
    """Copy an ECH0_HOME (store + artifacts + run dirs) and point the SQLite store's paths at the copy."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints"))
    con = sqlite3.connect(dst / "mlflow.db")
    for table, col in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                       ("logged_models", "artifact_location"), ("tags", "value")):
        con.execute(f"UPDATE {table} SET {col} = replace({col}, ?, ?)", (str(src), str(dst)))
    con.commit()
    con.close()
    return dst
