"""The training entry point as a user meets it: one-line errors, exit code 2, a fast --help."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_cli, wait_for


@pytest.mark.parametrize("override, expected", [
    ("trainer.max_step=3", "Key 'max_step' not in 'TrainerConfig'"),
    ("trainer.max_steps=abc", "could not be converted to Integer"),
    ("+preset=nope", "unknown preset 'nope'; available: full, lora"),
    ("peft.rr=2", "Key 'rr' not in 'LoraSchema'"),
])
def test_bad_override_is_one_line_exit_2(override, expected):
    out = run_cli("ech0.train", override)
    assert out.returncode == 2
    assert expected in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


def test_missing_data_file_is_one_line_exit_2(tmp_path):
    out = run_cli("ech0.train", "+preset=lora", f"data.train_file={tmp_path}/nope.jsonl")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1] == f"error: {tmp_path}/nope.jsonl: data file not found; run `ech0 data validate` or pass data.train_file=PATH"
    assert "Traceback" not in out.stderr


def test_help_is_fast_and_imports_no_torch():
    code = "import sys; import ech0.train, ech0.cli; assert 'torch' not in sys.modules and 'mlflow' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
    t = time.time()
    out = run_cli("ech0.train", "--help")
    assert out.returncode == 0 and "preset" in out.stdout and time.time() - t < 10
    out = run_cli("ech0.cli", "--help")
    assert out.returncode == 0 and "train" in out.stdout


def test_failure_ends_run_failed_and_status_failed(tiny_model_dir, ech0_home, monkeypatch):
    from mlflow.tracking import MlflowClient

    from ech0.cli_common import compose
    from ech0.trainer import loop
    from ech0.trainer.fit import fit

    real = loop.Loop.one_step

    def breaks_at_step_3(self):
        if self.step == 3:
            raise RuntimeError("simulated NaN explosion")
        return real(self)

    monkeypatch.setattr(loop.Loop, "one_step", breaks_at_step_3)
    cfg = compose("train", ["+preset=lora", "trainer.progress=false", "tracking.log_system_metrics=false"])
    with pytest.raises(RuntimeError):
        fit(cfg)
    (run_dir,) = list((ech0_home / "models").iterdir())
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["error"] == "RuntimeError: simulated NaN explosion"
    assert status["step"] == 3
    assert MlflowClient(f"sqlite:///{ech0_home / 'mlflow.db'}").get_run(run_dir.name).info.status == "FAILED"


def test_sigterm_ends_run_killed_and_status_interrupted(tiny_model_dir, ech0_home):
    from mlflow.tracking import MlflowClient

    proc = subprocess.Popen([sys.executable, "-m", "ech0.train", "+preset=lora", "trainer.max_steps=2000",
                             "trainer.progress=false", "tracking.log_system_metrics=false"],
                            cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def stepped() -> bool:
        found = list((ech0_home / "models").glob("*/status.json"))
        return bool(found) and (json.loads(found[0].read_text()).get("step") or 0) >= 2

    assert wait_for(stepped, 240, proc), "no progress"
    (status_file,) = (ech0_home / "models").glob("*/status.json")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert json.loads(status_file.read_text())["state"] == "interrupted"
    run = MlflowClient(f"sqlite:///{ech0_home / 'mlflow.db'}").get_run(status_file.parent.name)
    assert run.info.status == "KILLED"
