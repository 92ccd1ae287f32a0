"""`mlflow run` on the MLproject's entry points: parameters reach Hydra as separate overrides, and the
run `mlflow run` creates is the run the stage logs into (no second, orphaned run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_every_entry_point_declares_the_parameters_it_uses():
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    assert set(project["entry_points"]) == {"data", "train", "eval", "register", "promote", "smoke", "pipeline"}
    for name, ep in project["entry_points"].items():
        used = set(__import__("re").findall(r"{(\w+)}", ep["command"]))
        assert used == set(ep.get("parameters", {})), name


def test_mlflow_run_train_entry_point(ech0_home, tiny_model_dir):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{ech0_home / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    overrides = "trainer.max_steps=3 peft.r=4 trainer.progress=false tracking.log_system_metrics=false tracking.log_model=false"
    out = subprocess.run([sys.executable, "-m", "mlflow", "run", ".", "-e", "train", "-P", "preset=lora",
                          "-P", f"overrides={overrides}", "--env-manager", "local", "--experiment-name", "ech0"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ech0").experiment_id])
    assert len(runs) == 1, "the stage logs into the run `mlflow run` created"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.project.entryPoint"] == "train"
    assert run.data.params["trainer.max_steps"] == "3" and run.data.params["peft.r"] == "4"  # separate overrides
    assert run.data.tags["ech0.kind"] == "train" and "train/loss" in run.data.metrics
    assert (ech0_home / "models" / run.info.run_id / "status.json").is_file()


def test_hub_compatibility_entry(ech0_home):
    out = subprocess.run([sys.executable, str(ROOT / "ech0_hub_enhanced.py"), "--mode", "eval"], capture_output=True,
                         text=True, cwd=ech0_home, timeout=120)
    assert out.returncode == 2 and out.stderr.strip() == "error: --mode eval needs --model-dir"
