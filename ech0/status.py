"""A run's live ``status.json``: rewritten atomically on each state change and at most every few seconds.

    from ech0.status import StatusWriter, read_status
    status = StatusWriter(run_dir / "status.json", max_steps=100, every_seconds=2.0)
    status.update(state="running", step=3, loss=1.2)     # throttled
    status.update(state="succeeded", force=True)         # always written

A reader polling the file never sees invalid JSON: each write is a temp file + ``os.replace``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ech0.io import atomic_write_json, utc_now

STATES = ("starting", "running", "succeeded", "failed", "interrupted")
FIELDS = ("run_id", "mlflow_run_id", "state", "step", "max_steps", "epoch", "loss", "learning_rate",
          "tokens_per_sec", "eta_seconds", "started_at", "updated_at", "error")


class StatusWriter:
    def __init__(self, path: str | Path, every_seconds: float = 2.0, **initial):
        self.path = Path(path)
        self.every = every_seconds
        self.data = {k: None for k in FIELDS}
        self.data.update(state="starting", step=0, started_at=utc_now())
        self.data.update(initial)
        self._last = 0.0
        self.write()

    def update(self, force: bool = False, **fields) -> None:
        unknown = set(fields) - set(FIELDS)
        assert not unknown, f"status.json has no field(s) {sorted(unknown)}"
        if "state" in fields:
            assert fields["state"] in STATES, f"unknown status state {fields['state']!r}"
            force = force or fields["state"] != self.data["state"]
        self.data.update(fields)
        if force or time.monotonic() - self._last >= self.every:
            self.write()

    def write(self) -> None:
        self.data["updated_at"] = utc_now()
        atomic_write_json(self.path, self.data)
        self._last = time.monotonic()


def read_status(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
