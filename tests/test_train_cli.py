"""The training entry point as a user meets it: one-line errors, exit code 2, a fast --help."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.parametrize("override, expected", [
    ("trainer.max_step=3", "Key 'max_step' not in 'TrainerConfig'"),
    ("trainer.max_steps=abc", "could not be converted to Integer"),
    ("+preset=nope", "unknown preset 'nope'; available: conversation_lora, domain_full_finetune, full, lora"),
    ("peft.rr=2", "Key 'rr' not in 'LoraSchema'"),
])
def test_bad_override_is_one_line_exit_2(override, expected, run_cli):
    out = run_cli("ech0.train", override)
    assert out.returncode == 2
    assert expected in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


def test_missing_data_file_is_one_line_exit_2(tmp_path, run_cli):
    out = run_cli("ech0.train", "+preset=lora", f"data.train_file={tmp_path}/nope.jsonl")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1] == f"error: {tmp_path}/nope.jsonl: data file not found; run `ech0 data validate` or pass data.train_file=PATH"
    assert "Traceback" not in out.stderr


def test_help_is_fast_and_imports_no_torch(run_cli, repo_root):
    code = ("import sys; import ech0.train.cli, ech0.cli, ech0.train.recipe; "
            "assert 'torch' not in sys.modules and 'mlflow' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], cwd=repo_root).returncode == 0
    t = time.time()
    out = run_cli("ech0.train", "--help")
    assert out.returncode == 0 and "preset" in out.stdout and time.time() - t < 10
    out = run_cli("ech0.cli", "--help")
    assert out.returncode == 0 and "train" in out.stdout


def test_failure_ends_run_failed_and_status_failed(tiny_model_dir, ech0_home, monkeypatch):
    from mlflow.tracking import MlflowClient

    from ech0.config import compose
    from ech0.context import Context
    from ech0.train.recipe import TrainRecipe, fit

    real = TrainRecipe.train_step

    def breaks_at_step_3(self):
        if self.step == 3:
            raise RuntimeError("simulated NaN explosion")
        return real(self)

    monkeypatch.setattr(TrainRecipe, "train_step", breaks_at_step_3)
    cfg = compose("train", ["+preset=lora", "trainer.progress=false", "tracking.log_system_metrics=false"])
    with pytest.raises(RuntimeError):
        fit(cfg, Context.from_config(cfg))
    (run_dir,) = list((ech0_home / "models").iterdir())
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["error"] == "RuntimeError: simulated NaN explosion"
    assert status["step"] == 3
    assert MlflowClient(f"sqlite:///{ech0_home / 'mlflow.db'}").get_run(run_dir.name).info.status == "FAILED"


def test_sigterm_ends_run_killed_and_status_interrupted(tiny_model_dir, ech0_home, repo_root, wait_for, hold_at_step):
    from mlflow.tracking import MlflowClient

    hold, held = hold_at_step(2)
    proc = subprocess.Popen([sys.executable, "-m", "ech0.train", "+preset=lora", "trainer.max_steps=20",
                             "trainer.progress=false", "tracking.log_system_metrics=false"],
                            cwd=repo_root, env={**os.environ, **hold}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert wait_for(held.exists, 240, proc), "no progress"
    (status_file,) = (ech0_home / "models").glob("*/status.json")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert json.loads(status_file.read_text())["state"] == "interrupted"
    run = MlflowClient(f"sqlite:///{ech0_home / 'mlflow.db'}").get_run(status_file.parent.name)
    assert run.info.status == "KILLED"


@pytest.mark.slow
def test_mlflow_run_train_entry_point(ech0_home, tiny_model_dir, repo_root):
    """`mlflow run . -e train`: overrides reach Hydra separately, and the stage logs into the run `mlflow run` made."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{ech0_home / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    overrides = "trainer.max_steps=3 peft.r=4 trainer.progress=false tracking.log_system_metrics=false tracking.log_model=false"
    out = subprocess.run([sys.executable, "-m", "mlflow", "run", ".", "-e", "train", "-P", "preset=lora",
                          "-P", f"overrides={overrides}", "--env-manager", "local", "--experiment-name", "ech0"],
                         cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ech0").experiment_id])
    assert len(runs) == 1, "the stage logs into the run `mlflow run` created"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.project.entryPoint"] == "train"
    assert run.data.params["trainer.max_steps"] == "3" and run.data.params["peft.r"] == "4"  # separate overrides
    assert run.data.tags["ech0.kind"] == "train" and "train/loss" in run.data.metrics
    assert (ech0_home / "models" / run.info.run_id / "status.json").is_file()
