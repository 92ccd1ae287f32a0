"""Training through a tracking-server outage: the step rate while the server is down, against the rate before.

    python -m benchmarks.tracking_outage --out benchmarks/results/tracking_outage.json      # 5 min down (issue #15)
    python -m benchmarks.tracking_outage --down-seconds 60 --overrides "model=smollm2-135m trainer.batch_size=4"

A real ``mlflow server`` (SQLite, proxied artifacts) and a real ``ech0 train`` subprocess against it
(``+preset=lora`` on the tiny model unless ``--overrides`` say otherwise; every step logged, eval every 200
and a checkpoint LoggedModel every 500 steps, so tags, artifacts and models fall inside the outage).
After ``--before-seconds`` of training the server is SIGKILLed, ``--down-seconds`` later restarted on the
same port and store; the run ends by itself. ``max_steps`` is sized from a short calibration run (tracking
off) so that training goes on ~60 s after the restart. The rates come from the delivered ``train/loss``
points, whose timestamps are the moments they were logged: steps/s in the window before the kill, while
down, and after the restart, and their ratio (goal: during/before >= 0.9). Also reported: whether every
step's point arrived exactly once, the run's final status, and how long delivery took after the restart.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.serve_latency import cpu_info
from ech0.errors import cli_errors

ROOT = Path(__file__).resolve().parent.parent


def start_server(root: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    log = open(root / "server.log", "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True)
    import urllib.request

    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")


def step_of(home: Path) -> int:
    for st in (home / "models").glob("*/status.json"):
        try:
            return int(json.loads(st.read_text()).get("step") or 0)
        except (OSError, ValueError):
            pass
    return 0


def wait_step(home: Path, n: int, proc: subprocess.Popen) -> float:
    while step_of(home) < n:
        if proc.poll() is not None:
            raise RuntimeError(f"training ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.1)
    return time.time()


def train(home: Path, uri: str | None, overrides: list[str]) -> subprocess.Popen:
    env = {**os.environ, "ECH0_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    args = [sys.executable, "-m", "ech0.train", "+preset=lora", "trainer.progress=false", "trainer.log_every=1",
            "trainer.status_every_seconds=0", "tracking.log_system_metrics=false", *overrides]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def calibrate(tmp: Path, overrides: list[str]) -> float:
    """Steps per second of the same training with tracking off (steps 20 -> 120)."""
    home = tmp / "calibration"
    proc = train(home, None, ["trainer.max_steps=120", "trainer.eval_every=0", "trainer.checkpoint_every=0",
                              "tracking.enabled=false", *overrides])
    t0 = wait_step(home, 20, proc)
    t1 = wait_step(home, 120, proc)
    proc.wait()
    return 100 / (t1 - t0)


def rate(points: list, t0: float, t1: float) -> float:
    """Steps per second of the ``train/loss`` points logged in [t0, t1] (seconds)."""
    inside = [m for m in points if t0 * 1000 <= m.timestamp <= t1 * 1000]
    return len(inside) / (t1 - t0) if t1 > t0 else float("nan")


@cli_errors
def main(argv: list[str] | None = None) -> int:
    from mlflow.tracking import MlflowClient

    from ech0.smoke import free_port

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--down-seconds", type=float, default=300.0)
    p.add_argument("--before-seconds", type=float, default=60.0)
    p.add_argument("--overrides", default="", help="training overrides, e.g. \"model=smollm2-135m\"")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    overrides = shlex.split(args.overrides)
    with tempfile.TemporaryDirectory(prefix="ech0-outage-") as tmp:
        tmp = Path(tmp)
        sps = calibrate(tmp, overrides)
        steps = int(sps * (args.before_seconds + args.down_seconds + 60 + 20))
        root = tmp / "server"
        root.mkdir()
        port = free_port()
        server = start_server(root, port)
        uri = f"http://127.0.0.1:{port}"
        home = tmp / "home"
        proc = train(home, uri, [f"trainer.max_steps={steps}", "trainer.eval_every=200", "trainer.checkpoint_every=500",
                                 "trainer.keep_checkpoints=2", f"tracking.delivery_wait_seconds={args.down_seconds + 600}",
                                 *overrides])
        try:
            t_warm = wait_step(home, 20, proc)
            time.sleep(args.before_seconds)
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            t_kill, step_kill = time.time(), step_of(home)
            print(f"server killed at step {step_kill}; down for {args.down_seconds:.0f} s", flush=True)
            time.sleep(args.down_seconds)
            server = start_server(root, port)
            t_up, step_up = time.time(), step_of(home)
            print(f"server back at step {step_up}", flush=True)
            err = proc.communicate(timeout=args.down_seconds + 3600)[1]
            t_end = time.time()
            if proc.returncode != 0:
                raise RuntimeError(f"training exited {proc.returncode}: {err[-2000:]}")
            (run_dir,) = list((home / "models").iterdir())
            c = MlflowClient(uri)
            run = c.get_run(run_dir.name)
            points = c.get_metric_history(run_dir.name, "train/loss")
            t_last = max(m.timestamp for m in points) / 1000
        finally:
            if proc.poll() is None:
                proc.kill()
            os.killpg(server.pid, signal.SIGKILL)
    before = rate(points, t_warm, t_kill)
    during = rate(points, t_kill, t_up)
    after = rate(points, t_up, t_last)
    result = {
        "machine": cpu_info(), "overrides": overrides, "calibration_steps_per_s": round(sps, 2), "max_steps": steps,
        "down_seconds": args.down_seconds, "step_at_kill": step_kill, "step_at_restart": step_up,
        "steps_per_s": {"before": round(before, 2), "down": round(during, 2), "after": round(after, 2)},
        "down_over_before": round(during / before, 3),
        "points_delivered": len(points), "points_unique": len({m.step for m in points}),
        "run_status": run.info.status, "seconds_from_training_end_to_exit": round(t_end - t_last, 1),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from ech0.io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(f"\n| window | steps/s |\n|---|---|\n| before the kill | {before:.2f} |\n| server down "
          f"{args.down_seconds:.0f} s | {during:.2f} ({during / before:.2f}x) |\n| after the restart | {after:.2f} |\n"
          f"{len(points)} of {steps} points delivered ({len({m.step for m in points})} distinct steps), run "
          f"{run.info.status}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
