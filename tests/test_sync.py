"""A tracking server that goes away mid-run: a real ``mlflow server`` killed and restarted under a real run.

    pytest tests/test_sync.py

The run logs through its spool (ech0/spool.py). While the server is down it keeps stepping (the test
waits for steps it can only reach with the server down, never for a time); once the server is back,
everything arrives and the run ends FINISHED. If the server is still down when training ends, the run
exits 3 with one line, keeps its model and spool, and ``ech0 sync`` delivers it, once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from plugins.mlflow_server import Server

pytestmark = pytest.mark.slow  # two real training subprocesses against a server that is killed and restarted

STEPS = 120  # the server goes down at step 20 and the run must take 60 more steps without it
ARGS = ["ech0.train", "+preset=lora", f"trainer.max_steps={STEPS}", "trainer.log_every=1", "trainer.eval_every=40",
        "trainer.checkpoint_every=40", "trainer.precision=fp32", "trainer.progress=false",
        "tracking.log_system_metrics=false", "trainer.status_every_seconds=0"]
ROOT = Path(__file__).resolve().parent.parent


def _step(home: Path) -> int:
    for st in (home / "models").glob("*/status.json"):
        try:
            return int(json.loads(st.read_text()).get("step") or 0)
        except (OSError, ValueError):
            return 0
    return 0


def _kill(server: Server) -> None:
    os.killpg(server.proc.pid, signal.SIGKILL)  # no goodbye: the process is gone mid-request
    server.proc.wait()


def _train(home: Path, url: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "ECH0_HOME": str(home), "MLFLOW_TRACKING_URI": url}
    return subprocess.Popen([sys.executable, "-m", *ARGS, *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _everything_arrived(url: str, run_id: str) -> None:
    from mlflow.entities import LoggedModelStatus
    from mlflow.tracking import MlflowClient

    c = MlflowClient(url)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    losses = c.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(1, STEPS + 1))  # every step once: none lost, none twice
    assert sorted(m.step for m in c.get_metric_history(run_id, "eval/loss")) == [0, 40, 80, STEPS]
    assert run.data.params["trainer.max_steps"] == str(STEPS) and len(run.data.params) > 50
    assert run.data.tags["ech0.loss_measured_on"] == "held-out"
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"sample-train", "sample-eval"}
    assert {a.path for a in c.list_artifacts(run_id)} >= {"config", "plots"}
    assert [a.path for a in c.list_artifacts(run_id, "plots")] == ["plots/loss_curve.png"]
    exp = run.info.experiment_id
    models = {m.name: m for m in c.search_logged_models([exp], filter_string=f"source_run_id='{run_id}'")}
    assert models["model"].status == LoggedModelStatus.READY
    files = {a.path for a in c.list_logged_model_artifacts(models["model"].model_id)}
    assert "MLmodel" in files


def test_outage_mid_run_does_not_stall_and_loses_nothing(tmp_path, tiny_model_dir, wait_for):
    root = tmp_path / "server"
    root.mkdir()
    server = Server(root)
    url = server.wait()
    home = tmp_path / "home"
    proc = _train(home, url, "tracking.delivery_wait_seconds=600")
    try:
        assert wait_for(lambda: _step(home) >= 20, 600, proc), "the run never reached step 20"
        _kill(server)
        down_at = _step(home)
        # Steps the run can only take while the server is down: it does not wait for the server.
        assert wait_for(lambda: _step(home) >= min(down_at + 60, STEPS), 600, proc), \
            f"stalled at step {_step(home)} with the server down (it went down at {down_at})"
        server = Server(root, port=server.port)  # the same store and artifacts, the same address
        server.wait()
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        (run_dir,) = list((home / "models").iterdir())
        assert not (run_dir / "spool").exists()  # delivered: nothing kept
        _everything_arrived(url, run_dir.name)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()


def test_server_still_down_at_the_end_then_ech0_sync_delivers_once(tmp_path, tiny_model_dir, wait_for, run_cli):
    root = tmp_path / "server"
    root.mkdir()
    server = Server(root)
    url = server.wait()
    home = tmp_path / "home"
    proc = _train(home, url, "tracking.delivery_wait_seconds=2")
    try:
        assert wait_for(lambda: _step(home) >= 20, 600, proc), "the run never reached step 20"
        _kill(server)
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 3, err[-3000:]
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "ech0 sync" in lines[0] and "Traceback" not in err, err[-3000:]
        (run_dir,) = list((home / "models").iterdir())
        assert (run_dir / "model" / "adapter_model.safetensors").is_file()  # the model is kept here
        assert (run_dir / "spool" / "records.jsonl").is_file()
        assert json.loads((run_dir / "status.json").read_text())["state"] == "succeeded"

        env = {"ECH0_HOME": str(home), "MLFLOW_TRACKING_URI": url}
        still = run_cli("ech0.sync", "--wait", "1", env=env)
        assert still.returncode == 3 and still.stderr.strip().count("\n") == 0, still.stderr
        assert "ech0 sync" in still.stderr and "Traceback" not in still.stderr

        server = Server(root, port=server.port)
        server.wait()
        first = run_cli("ech0.sync", env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        assert f"run {run_dir.name}: delivered" in first.stdout
        _everything_arrived(url, run_dir.name)
        assert not (run_dir / "spool").exists()

        again = run_cli("ech0.sync", env=env)
        assert again.returncode == 0 and "nothing to deliver" in again.stdout, again.stdout + again.stderr
        _everything_arrived(url, run_dir.name)  # still exactly one point per step
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
