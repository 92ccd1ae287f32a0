"""Hydra multirun sweeps grouped in MLflow: one parent run for the sweep, one child run per job.

    ech0 sweep +preset=lora peft.r=4,8                                       # = python -m ech0.train -m ...
    python -m ech0.train -m +preset=lora peft.r=4,8                          # two jobs, one after the other
    python -m ech0.train -m +preset=lora +launcher=local peft.r=4,8          # each job in its own process
    python -m ech0.train -m +preset=lora +launcher=slurm hydra.launcher.partition=gpu peft.r=4,8
    python -m ech0.train -m +preset=lora +sweep=optuna                       # Optuna picks the values

:class:`SweepCallback` (``hydra.callbacks`` in conf/train.yaml) opens the parent run when the sweep
starts (tags ``ech0.kind=sweep``, the command, the overrides, the sweep folder) and writes its id to
``<sweep dir>/mlflow_parent_run_id``. Each job (``_run`` in ech0/train/cli.py, via :func:`job_config`)
reads that file wherever it runs (this process, a submitit subprocess, a SLURM node) and trains with
``tracking.parent_run_id`` set to it and a run name made of what the job changes (``peft.r=4``); every
child logs the same param keys, so MLflow's compare view lines them up. When the sweep ends the parent
gets the best child (lowest held-out loss, the ``ech0.loss_after`` tag fit() sets) and ends FINISHED,
or FAILED when a job failed; a sweep stopped by an error or Ctrl-C ends it FAILED or KILLED.

Only ech0/tracking.py creates or ends runs; this module decides when and with what.
"""

from __future__ import annotations

import atexit
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ech0 import config as _config  # noqa: F401  (registers the schema + resolvers in submitit workers too)
from ech0.io import atomic_write_json, atomic_write_text

PARENT_FILE = "mlflow_parent_run_id"  # <sweep dir>/mlflow_parent_run_id: the parent run's id, one line
INFO_FILE = "ech0_sweep.json"  # <sweep dir>/ech0_sweep.json: the id, the tracking URI, the fixed overrides
JOB_FILE = "ech0_job.json"  # <job dir>/ech0_job.json: the job's outcome (COMPLETED / FAILED), its error

_OPEN: dict[str, dict] = {}  # parent runs this process opened and has not ended yet: run id -> info


def _key(override) -> str:
    return override.get_key_element()


def _parse(overrides: list[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class SweepCallback(Callback):
    """Opens the sweep's parent MLflow run, records each job's outcome, ends the parent with the best child."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled or not config.tracking.enabled:
            return
        from ech0 import tracking
        from ech0.context import Context
        from ech0.io import stamp

        started = time.time()
        ctx = Context.from_config(config)  # the store the jobs will use: each job builds the same one
        sweep_dir = Path(str(config.hydra.sweep.dir)).expanduser().resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        task = [str(o) for o in config.hydra.overrides.task]
        hydra_overrides = [str(o) for o in config.hydra.overrides.hydra if str(o) != "hydra.mode=MULTIRUN"]
        fixed = sorted({_key(o) for o in _parse(task) if not o.is_sweep_override()})
        command = shlex.join(["python", "-m", "ech0.train", "-m", *hydra_overrides, *task])
        tags = {"ech0.kind": "sweep", "ech0.preset": config.preset, "ech0.sweep.command": command,
                "ech0.sweep.overrides": " ".join(task), "ech0.sweep.dir": str(sweep_dir),
                "ech0.sweep.sweeper": str(config.hydra.sweeper._target_).rsplit(".", 1)[-1],
                "ech0.sweep.launcher": str(config.hydra.launcher._target_).rsplit(".", 1)[-1],
                **tracking.git_tags()}
        name = f"sweep-{config.preset}-{stamp()}"
        self.parent_run_id = tracking.open_parent(ctx, config.tracking.experiment, name, tags,
                                                  parent_run_id=config.tracking.parent_run_id)
        info = {"parent_run_id": self.parent_run_id, "tracking_uri": ctx.tracking_uri, "run_name": name,
                "fixed_keys": fixed, "command": command, "started_at": started}
        atomic_write_json(sweep_dir / INFO_FILE, info)  # jobs elsewhere read these: never half-written
        atomic_write_text(sweep_dir / PARENT_FILE, self.parent_run_id + "\n")
        _OPEN[self.parent_run_id] = {"ctx": ctx, "sweep_dir": str(sweep_dir)}
        atexit.register(abort, "FAILED")  # a sweep that dies without on_multirun_end never stays RUNNING
        print(f"  sweep    {self.parent_run_id} ({name}): each job's MLflow run nests under it", flush=True)

    def on_job_end(self, config: DictConfig, job_return, **kwargs: Any) -> None:
        """Runs where the job ran: leaves its outcome beside its outputs for the end of the sweep."""
        from hydra.types import RunMode

        if not self.enabled or config.hydra.mode != RunMode.MULTIRUN:
            return
        out = {"status": job_return.status.name, "overrides": list(job_return.overrides or [])}
        if out["status"] != "COMPLETED":
            err = getattr(job_return, "_return_value", None)  # the exception (return_value would raise it)
            out["error"] = f"{type(err).__name__}: {err}"[:2000]
        atomic_write_json(Path(str(config.hydra.runtime.output_dir), JOB_FILE), out)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is not None:
            finish(self.parent_run_id)


def read_info(sweep_dir: str | Path) -> dict | None:
    """The sweep's record (parent run id, tracking URI, fixed override keys), or None if it has none."""
    path = Path(sweep_dir) / INFO_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_name(job_overrides: list[str], fixed_keys: list[str], job_num: int | None = None) -> str:
    """What this job changes, in Hydra's override_dirname style: ``peft.r=4,trainer.learning_rate=0.001``."""
    fixed = set(fixed_keys)
    differs = [o.input_line for o in _parse(job_overrides) if _key(o) not in fixed]
    return ",".join(differs) or f"job-{job_num if job_num is not None else 0}"


def job_config(cfg: DictConfig) -> DictConfig:
    """In a multirun job: nest the run under the sweep's parent and name it by its overrides.

    Outside a multirun, or when the sweep opened no parent (``tracking.enabled=false``), ``cfg`` is
    returned unchanged; an explicit ``tracking.run_name`` is kept.
    """
    if not _is_multirun():
        return cfg
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    info = read_info(hc.sweep.dir)
    if info is None or not cfg.tracking.enabled:
        return cfg
    cfg.tracking.parent_run_id = info["parent_run_id"]
    if not cfg.tracking.run_name:
        cfg.tracking.run_name = run_name(list(hc.overrides.task), info.get("fixed_keys", []), hc.job.get("num"))
    return cfg


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def job_outcomes(sweep_dir: str | Path, since: float = 0.0) -> dict[str, str]:
    """Each job folder of the sweep -> COMPLETED, FAILED, or UNFINISHED (it started but recorded no end:
    stopped by an error that ends the process, killed, or still running). Folders and records older
    than ``since`` (an earlier sweep into the same folder) are left out."""
    sweep_dir = Path(sweep_dir)
    dirs = {p.parent.parent for p in sweep_dir.rglob(".hydra/hydra.yaml")} | {p.parent for p in sweep_dir.rglob(JOB_FILE)}
    out = {}
    for d in sorted(dirs):
        if max(_mtime(d / ".hydra" / "hydra.yaml"), _mtime(d / JOB_FILE)) < since:
            continue
        status = "UNFINISHED"
        if _mtime(d / JOB_FILE) >= since:
            try:
                status = json.loads((d / JOB_FILE).read_text())["status"]
            except (OSError, ValueError, KeyError):
                pass
        out[str(d.relative_to(sweep_dir))] = status
    return out


def _loss(run) -> float | None:
    try:
        value = float(run.data.tags["ech0.loss_after"])
    except (KeyError, ValueError):
        return None
    return None if math.isnan(value) else value


def finish(parent_run_id: str, status: str | None = None) -> dict:
    """End the sweep's parent run: the best child as tags and a metric, the jobs' outcome, the status.

    ``status`` None: FINISHED, or FAILED when a job or a child run failed. Returns the tags written.
    """
    from ech0 import tracking
    from ech0.context import Context

    opened = _OPEN.get(parent_run_id, {})
    sweep_dir = Path(opened.get("sweep_dir", "."))
    info = read_info(sweep_dir) or {}
    ctx = opened.get("ctx") or Context(home=sweep_dir.resolve(), tracking_uri=info["tracking_uri"])
    children = tracking.child_runs(ctx, parent_run_id)
    jobs = job_outcomes(sweep_dir, since=info.get("started_at", 0.0) - 2) if opened else {}
    failed_jobs = sum(outcome != "COMPLETED" for outcome in jobs.values())
    failed_runs = sum(r.info.status in ("FAILED", "KILLED") for r in children)
    tags: dict[str, Any] = {"ech0.sweep.jobs": max(len(jobs), len(children)),
                            "ech0.sweep.failed_jobs": max(failed_jobs, failed_runs)}
    metrics: dict[str, float] = {"sweep/jobs": tags["ech0.sweep.jobs"], "sweep/failed_jobs": tags["ech0.sweep.failed_jobs"]}
    scored = [(loss, r) for r in children if r.info.status == "FINISHED" and (loss := _loss(r)) is not None]
    if scored:
        loss, best = min(scored, key=lambda x: x[0])
        tags.update({"ech0.best_run_id": best.info.run_id, "ech0.best_run_name": best.info.run_name,
                     "ech0.best_loss_after": f"{loss:.4f}"})
        metrics["sweep/best_loss_after"] = loss
    if status is None:
        status = "FAILED" if tags["ech0.sweep.failed_jobs"] else "FINISHED"
    tracking.close_parent(ctx, parent_run_id, status, tags=tags, metrics=metrics)
    _OPEN.pop(parent_run_id, None)  # only now: if ending it failed, abort() at exit tries again
    best_line = (f"best {tags['ech0.best_run_name']} (run {tags['ech0.best_run_id']}, held-out loss "
                 f"{tags['ech0.best_loss_after']})" if scored else "no finished child run")
    print(f"\n  sweep    {parent_run_id} {status}: {tags['ech0.sweep.jobs']} jobs, "
          f"{tags['ech0.sweep.failed_jobs']} failed; {best_line}", flush=True)
    return tags


def abort(status: str = "FAILED") -> None:
    """End every parent run this process still has open (the sweep stopped early) with ``status``."""
    for run_id in list(_OPEN):
        try:
            finish(run_id, status)
        except Exception as e:  # never mask the error that stopped the sweep
            _OPEN.pop(run_id, None)
            print(f"warning: could not end sweep run {run_id}: {type(e).__name__}: {e}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """``ech0 sweep ARGS`` is ``ech0 train -m ARGS``: every job a training run nested under one parent.

    Run as its own process: the training entry point imports this module (its jobs read the sweep's
    record), so this one does not import it back."""
    import subprocess

    argv = list(sys.argv[1:] if argv is None else argv)
    return subprocess.call([sys.executable, "-m", "ech0.train", "-m", *[a for a in argv if a not in ("-m", "--multirun")]])


if __name__ == "__main__":
    sys.exit(main())
