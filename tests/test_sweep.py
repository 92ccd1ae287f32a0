"""Hydra multirun sweeps: one MLflow parent run, one child run per job, the best child on the parent.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_sweep.py

Each sweep runs `python -m ech0.train -m ...` in a subprocess, as a user would: the basic launcher (jobs
one after the other in that process; with a failing job), submitit's local launcher (each job its own process, the SLURM
code path) and the Optuna sweeper (the job's return value is the objective).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FAST = ["trainer.max_steps=3", "tracking.log_model=false", "tracking.log_system_metrics=false",
        "trainer.progress=false"]
SWEEP = ["-m", "+preset=lora", "peft.r=4,8", *FAST]


def _runs(home: Path):
    from mlflow.tracking import MlflowClient

    if not (home / "mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ech0")
    return client.search_runs([exp.experiment_id]) if exp else []


def _sweep(home: Path, n_children: int = 2):
    """The sweep's parent and its children, with the grouping every sweep must have."""
    runs = _runs(home)
    parents = [r for r in runs if r.data.tags.get("ech0.kind") == "sweep"]
    assert len(parents) == 1, [r.data.tags.get("ech0.kind") for r in runs]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == n_children and len(runs) == n_children + 1
    assert all(r.data.tags["ech0.kind"] == "train" for r in children)
    keys = {frozenset(r.data.params) for r in children}
    assert len(keys) == 1, "children must log the same param keys (MLflow's compare view lines them up)"
    sweep_dir = Path(parent.data.tags["ech0.sweep.dir"])
    assert (sweep_dir / "mlflow_parent_run_id").read_text().strip() == parent.info.run_id
    return parent, children


def _assert_best(parent, children):
    finished = [r for r in children if r.info.status == "FINISHED"]
    best = min(finished, key=lambda r: float(r.data.tags["ech0.loss_after"]))
    assert parent.data.tags["ech0.best_run_id"] == best.info.run_id
    assert parent.data.tags["ech0.best_run_name"] == best.info.run_name
    assert parent.data.metrics["sweep/best_loss_after"] == pytest.approx(float(best.data.tags["ech0.loss_after"]),
                                                                        abs=1e-4)
    return best


def _check_grid(home: Path, out):
    assert out.returncode == 0, out.stderr[-4000:]
    parent, children = _sweep(home)
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.params["peft.r"] for r in children) == ["4", "8"]
    assert sorted(r.info.run_name for r in children) == ["peft.r=4", "peft.r=8"]  # what differs, nothing else
    assert {r.data.params["tracking.parent_run_id"] for r in children} == {parent.info.run_id}
    assert {r.info.status for r in children} == {"FINISHED"}
    assert "peft.r=4,8" in parent.data.tags["ech0.sweep.command"]
    assert parent.data.tags["ech0.sweep.jobs"] == "2" and parent.data.tags["ech0.sweep.failed_jobs"] == "0"
    _assert_best(parent, children)
    assert f"sweep    {parent.info.run_id} FINISHED" in out.stdout
    return parent, children


@pytest.mark.slow
def test_sweep_submitit_local_launcher(tiny_model_dir, home, run_cli):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    # Both jobs start at once: one torch thread each, or they fight over the cores (measured 2.3x slower)
    out = run_cli("ech0.train", *SWEEP, "+launcher=local", "trainer.num_threads=1", timeout=300)
    parent, _ = _check_grid(home, out)
    assert parent.data.tags["ech0.sweep.launcher"] == "LocalLauncher"
    sweep_dir = Path(parent.data.tags["ech0.sweep.dir"])
    assert len(list((sweep_dir / "submitit").glob("*/*_result.pkl"))) == 2  # each job ran in its own process


@pytest.mark.slow
def test_sweep_optuna_minimises_the_returned_loss(tiny_model_dir, home, run_cli):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    import yaml

    out = run_cli("ech0.train", "-m", "+preset=lora", "+sweep=optuna", "hydra.sweeper.n_trials=2", *FAST,
                  timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    parent, children = _sweep(home)
    assert parent.info.status == "FINISHED" and parent.data.tags["ech0.sweep.sweeper"] == "OptunaSweeper"
    for r in children:  # named by the values Optuna chose
        assert r.info.run_name.startswith(("trainer.learning_rate=", "peft.r=")) and "peft.r=" in r.info.run_name
        assert r.info.status == "FINISHED"
    best = _assert_best(parent, children)
    result = yaml.safe_load((Path(parent.data.tags["ech0.sweep.dir"]) / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(float(best.data.tags["ech0.loss_after"]), abs=1e-4)


@pytest.mark.slow
def test_sweep_with_a_failing_job_ends_parent_failed(tiny_model_dir, home, tmp_path, run_cli):
    from ech0.sample_data import TRAIN_FILE

    missing = tmp_path / "missing.jsonl"
    out = run_cli("ech0.train", "-m", "+preset=lora", f"data.train_file={TRAIN_FILE},{missing}", *FAST, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {missing}: data file not found")
    assert "Traceback" not in out.stderr
    parent, (child,) = _sweep(home, n_children=1)  # the basic launcher: jobs one after the other in-process
    assert parent.data.tags["ech0.sweep.launcher"] == "BasicLauncher"
    assert child.info.run_name == f"data.train_file={TRAIN_FILE}"  # named by what the job changes
    assert parent.info.status == "FAILED" and child.info.status == "FINISHED"
    assert parent.data.tags["ech0.sweep.jobs"] == "2" and parent.data.tags["ech0.sweep.failed_jobs"] == "1"
    _assert_best(parent, [child])


@pytest.mark.parametrize("override, expected", [
    ("peft.r=4,abc", "could not be converted to Integer"),
    ("trainer.max_step=3,4", "Key 'max_step' not in 'TrainerConfig'"),
    ("peft.r=4,,8", "Error parsing override"),
])
def test_sweep_bad_override_is_one_line_exit_2_and_opens_no_run(override, expected, home, run_cli):
    out = run_cli("ech0.train", "-m", "+preset=lora", override)
    assert out.returncode == 2
    assert expected in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert _runs(home) == []


def test_slurm_launcher_config_makes_a_valid_sbatch_script(tmp_path, monkeypatch):
    """No cluster here: build the sbatch script submitit would submit for +launcher=slurm, with the
    same parameter mapping as hydra-submitit-launcher (every field must be one submitit accepts)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from ech0.config import compose

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")  # submitit looks for srun
    cfg = compose("train", ["+preset=lora", "+launcher=slurm", "hydra.launcher.partition=gpu",
                            f"hydra.sweep.dir={tmp_path / 'sweep'}"], with_hydra=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_").endswith("SlurmLauncher")
    params["name"] = "train"  # ${hydra.job.name}: set by Hydra at run time
    executor = submitit.AutoExecutor(folder=params.pop("submitit_folder"), cluster="slurm",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m ech0.train", "uid")
    for line in ("--partition=gpu", "--time=240", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=64GB",
                 "--ntasks-per-node=1", f"--output={tmp_path / 'sweep'}/submitit/%j/"):
        assert f"#SBATCH {line}" in script, script
