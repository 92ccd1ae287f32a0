"""Running a stage as a job: ``python -m ech0.scheduler <stage> [stage args...]``.

    python -m ech0.scheduler eval --model-dir models/<run_id> --baseline ech0/eval/baselines/regression.jsonl
    python -m ech0.scheduler --launcher local eval --model-dir models:/ech0@production

A job is the stage's own command line run in a child process, with its output streamed to this
terminal and to ``$ECH0_HOME/logs/jobs/<job id>/output.log``, and its command, state and exit code
in ``job.json`` beside it (``status.json``-style, written atomically). The job's exit code is the
stage's (for eval: 0 gate passed, 1 gate failed, 2 usage error). Only the ``local`` launcher exists
for now; Hydra launchers (submitit) come with the orchestration issue.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid

from ech0.errors import UserError, cli_errors

STAGES = {"eval": "ech0.eval.runner", "train": "ech0.train"}
LAUNCHERS = ("local",)


def run_local(stage: str, args: list[str], job_id: str | None = None) -> int:
    """Run ``python -m <stage module> args`` as a job; return its exit code."""
    from ech0 import paths
    from ech0.io import atomic_write_json

    job_id = job_id or f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    job_dir = paths.logs_dir() / "jobs" / job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", STAGES[stage], *args]
    record = {"job_id": job_id, "stage": stage, "launcher": "local", "command": cmd, "state": "running",
              "returncode": None, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "log": str(job_dir / "output.log")}
    atomic_write_json(job_dir / "job.json", record)
    print(f"job {job_id}: {stage} (local), log {job_dir / 'output.log'}", file=sys.stderr, flush=True)
    rc = None
    try:
        with open(job_dir / "output.log", "w", encoding="utf-8") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    env={**os.environ, "ECH0_JOB_ID": job_id})
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            rc = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        rc = proc.wait()
        record["state"] = "interrupted"
        raise
    finally:
        record.update(returncode=rc, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        if record["state"] == "running":
            record["state"] = "succeeded" if rc == 0 else "failed"
        atomic_write_json(job_dir / "job.json", record)
    return rc


@cli_errors
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ech0.scheduler",
                                description="Run a stage as a job (locally for now); exits with the stage's code.")
    p.add_argument("--launcher", default="local", help="local (default); Hydra launchers come later")
    p.add_argument("stage", choices=sorted(STAGES))
    p.add_argument("args", nargs=argparse.REMAINDER, help="the stage's own arguments")
    ns = p.parse_args(sys.argv[1:] if argv is None else argv)
    if ns.launcher not in LAUNCHERS:
        raise UserError(f"--launcher {ns.launcher}: only {', '.join(LAUNCHERS)} is available so far")
    raise SystemExit(run_local(ns.stage, ns.args))


if __name__ == "__main__":
    main()
