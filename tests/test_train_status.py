"""status.json: atomic rewrites, throttling, and a polling reader that never sees invalid JSON."""

from __future__ import annotations

import json
import threading

from ech0.status import StatusWriter


def test_reader_never_sees_invalid_json(tmp_path):
    path = tmp_path / "status.json"
    writer = StatusWriter(path, every_seconds=0, run_id="r", max_steps=3000)
    stop, reads, bad = threading.Event(), [0], []

    def poll():
        while not stop.is_set():
            try:
                json.loads(path.read_text())
                reads[0] += 1
            except ValueError as e:
                bad.append(str(e))

    t = threading.Thread(target=poll)
    t.start()
    for step in range(3000):
        writer.update(state="running", step=step, loss=1.0 / (step + 1), error="x" * (step % 500))
    stop.set()
    t.join()
    assert not bad and reads[0] > 50
    assert json.loads(path.read_text())["step"] == 2999
    assert not list(tmp_path.glob(".status.json.*")), "no temp files left behind"


def test_throttled_but_state_changes_always_written(tmp_path):
    path = tmp_path / "status.json"
    writer = StatusWriter(path, every_seconds=3600, run_id="r")
    writer.update(state="running", step=1)  # state change: written
    writer.update(step=2)  # throttled
    assert json.loads(path.read_text())["step"] == 1
    writer.update(state="succeeded", step=3)
    data = json.loads(path.read_text())
    assert data["state"] == "succeeded" and data["step"] == 3
    assert set(data) >= {"run_id", "mlflow_run_id", "state", "step", "max_steps", "epoch", "loss", "learning_rate",
                         "tokens_per_sec", "eta_seconds", "started_at", "updated_at", "error"}
