"""`ech0 watch`: follows a run's status.json and exits with the run's outcome."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("state, code", [("succeeded", 0), ("failed", 1), ("interrupted", 1)])
def test_watch_exits_with_the_runs_outcome(ech0_home, run_cli, state, code):
    from ech0.status import StatusWriter

    run_dir = ech0_home / "models" / "run123"
    StatusWriter(run_dir / "status.json", max_steps=10).update(
        state=state, step=10 if state == "succeeded" else 4, loss=0.5, error=None if code == 0 else "boom", force=True)
    out = run_cli("ech0.watch", "run123")  # a bare run id resolves under the context's models/ folder
    assert out.returncode == code, out.stderr
    assert state in out.stdout and ("error: boom" in out.stdout) == (code == 1)


def test_watch_unknown_run_is_one_line_exit_2(ech0_home, run_cli):
    out = run_cli("ech0.watch", "nope")
    assert out.returncode == 2 and out.stderr.strip().startswith("error: nope: no status.json there")
    assert len(out.stderr.strip().splitlines()) == 1
