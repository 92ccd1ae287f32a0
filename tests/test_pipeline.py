"""The hub end to end on a real store: skip-if-done training, gate, register, promote on pass, served smoke."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import clone_home, run_cli

pytestmark = pytest.mark.slow
SAME_AS_TRAINED_RUN = ["trainer.progress=false", "tracking.log_system_metrics=false"]


@pytest.fixture
def home(trained_run, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking._tracking_service import utils as mlflow_utils

    from ech0 import paths

    home = clone_home(Path(trained_run.home), tmp_path / "clone")
    monkeypatch.setenv("ECH0_HOME", str(home))
    mlflow.set_tracking_uri(paths.tracking_uri())
    mlflow_utils._artifact_repos_cache.clear()  # same run ids as the original store: forget its artifact paths
    yield home
    mlflow_utils._artifact_repos_cache.clear()


def test_pipeline_promotes_a_passing_model_and_smoke_checks_it(trained_run, home):
    from mlflow.tracking import MlflowClient

    from ech0.pipeline import run

    r = run(SAME_AS_TRAINED_RUN, preset="lora", promote_on_pass=True, smoke=True)
    assert r.train_run_id == trained_run.run_id, "an identical finished training run is reused, not redone"
    assert r.gate_passed and r.promoted and r.smoke_passed, r
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    mv = client.get_model_version_by_alias("ech0", "production")
    assert str(mv.version) == r.version and mv.run_id == trained_run.run_id
    parent = client.get_run(r.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["ech0.gate"] == "passed"
    assert parent.data.tags["ech0.registered_version"] == r.version and parent.data.tags["ech0.smoke"] == "passed"
    assert parent.data.metrics["pipeline/gate_passed"] == 1
    assert client.get_run(trained_run.run_id).data.metrics["eval/gate_passed"] == 1
    assert json.loads(Path(r.report).read_text())["verdict"]["passed"] is True


def test_failed_gate_registers_but_never_promotes(trained_run, home, tmp_path):
    from mlflow.tracking import MlflowClient

    from ech0.pipeline import run

    strict = tmp_path / "strict.jsonl"
    strict.write_text(json.dumps({"id": "impossible", "prompt": "What color is snow?",
                                  "checks": [{"type": "exact", "value": "Snow is a colour no model here knows."}]}) + "\n")
    r = run(SAME_AS_TRAINED_RUN, preset="lora", baseline=str(strict), promote_on_pass=True, smoke=False)
    assert r.gate_passed is False and not r.promoted and r.version
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    assert "production" not in (client.get_registered_model("ech0").aliases or {})
    assert client.get_run(r.run_id).data.tags["ech0.gate"] == "failed"


def test_watch_follows_status_until_it_ends(ech0_home):
    from ech0.io import atomic_write_json

    run_dir = ech0_home / "models" / "r1"
    atomic_write_json(run_dir / "status.json", {"state": "succeeded", "step": 10, "max_steps": 10, "loss": 0.5,
                                                "tokens_per_sec": 1234.0, "eta_seconds": 0})
    out = run_cli("ech0.cli", "watch", str(run_dir))
    assert out.returncode == 0 and "10/10" in out.stdout and "loss 0.5000" in out.stdout
    atomic_write_json(run_dir / "status.json", {"state": "failed", "step": 3, "max_steps": 10, "error": "boom"})
    out = run_cli("ech0.cli", "watch", "r1")
    assert out.returncode == 1 and "error: boom" in out.stdout
    out = run_cli("ech0.cli", "watch", "nope")
    assert out.returncode == 2 and out.stderr.startswith("error: nope: no status.json")
