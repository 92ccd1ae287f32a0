"""The only module that opens MLflow runs; everything else logs through a :class:`Tracker`.

    with tracking.start(ctx, "ech0", run_name="lora-20261125-1200", tags={...}) as tracker:
        tracker.log_params(flat_config)
        tracker.log_metrics({"train/loss": 1.2}, step=3)      # asynchronous: never stalls the loop

``ctx`` is the command's :class:`ech0.context.Context`: its ``tracking_uri`` is the store, always
passed explicitly (MLflow's global URI is set from it, never read back).

A run that raises ends FAILED, one interrupted (Ctrl-C, SIGTERM) ends KILLED; ``resume_run_id``
reopens a run (a killed job continues into the same run).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from ech0.context import Context

MAX_PARAM_VALUE = 6000  # MLflow 3's limit on one param value
PARAM_BATCH = 100  # MLflow's limit on params per batch call


def ensure_store(ctx: Context) -> None:
    """Create a new SQLite store's tables once, under a lock beside its file.

    MLflow's tracking store migrates an empty database without a lock: two processes opening a fresh
    ``mlflow.db`` at once both run the migrations and one dies ("duplicate column name: step", alembic's
    "expected to match one row"; measured: 2 of 3 processes failed). Done once, the lock is not needed.
    """
    if not ctx.is_local_store:
        return
    from ech0.io import FileLock

    db = Path(ctx.tracking_uri.removeprefix("sqlite:///"))
    with FileLock(db.with_name(db.name + ".ech0-init.lock"), "creating the MLflow store"):
        from mlflow.tracking import MlflowClient

        MlflowClient(ctx.tracking_uri).search_experiments(max_results=1)  # creates and migrates the tables


def setup(ctx: Context, experiment: str = "ech0") -> str:
    """Point MLflow at ``ctx``'s store (creating the SQLite file and its tables) and the experiment; return its id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if ctx.is_local_store:
        ctx.home.mkdir(parents=True, exist_ok=True)
        ensure_store(ctx)
    mlflow.set_tracking_uri(ctx.tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    artifact_location = ctx.artifact_root.as_uri() if ctx.is_local_store else None
    try:
        return mlflow.create_experiment(experiment, artifact_location=artifact_location)
    except MlflowException:
        exp = mlflow.get_experiment_by_name(experiment)  # another process created it in between
        if exp is None:
            raise
        return exp.experiment_id


def git_tags() -> dict[str, str]:
    from ech0.io import git_info

    git = git_info()
    if not git["commit"]:
        return {}
    return {"mlflow.source.git.commit": git["commit"], "ech0.git_commit": git["commit"],
            "ech0.git_dirty": str(git["dirty"]).lower()}


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix.rstrip(".")] = str(d)
    return out


class Tracker:
    """Logging into one open run. All metric logging is asynchronous."""

    def __init__(self, run):
        self.run = run
        self.run_id = run.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        import mlflow

        items = [(k, (str(v)[: MAX_PARAM_VALUE - 3] + "...") if len(str(v)) > MAX_PARAM_VALUE else str(v))
                 for k, v in params.items()]
        existing = mlflow.get_run(self.run_id).data.params
        items = [(k, v) for k, v in items if k not in existing]  # a resumed run keeps its params
        for i in range(0, len(items), PARAM_BATCH):
            mlflow.log_params(dict(items[i:i + PARAM_BATCH]))

    def log_metrics(self, metrics: dict[str, float], step: int, model_id: str | None = None) -> None:
        """``model_id``: the metrics also belong to that logged model (a checkpoint's held-out loss)."""
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step=step, synchronous=False,
                           model_id=model_id)

    def set_tags(self, tags: dict[str, Any]) -> None:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        import mlflow

        mlflow.log_text(text, artifact_file)

    def log_dataset(self, df, name: str, source: str, digest: str, context: str) -> None:
        """Log a dataset input with our own sha256 digest (MLflow's default hashes only the first rows)."""
        import mlflow

        ds = mlflow.data.from_pandas(df, source=source, name=name, digest=digest[:36])
        mlflow.log_input(ds, context=context, tags={"sha256": digest})

    def log_table(self, df, artifact_file: str) -> None:
        """A per-row table (``mlflow.log_table``): the UI compares tables of the same name across runs."""
        import mlflow

        mlflow.log_table(df, artifact_file, run_id=self.run_id)

    def log_model(self, python_model, artifacts: dict[str, str], signature, pip_requirements: list[str],
                  code_paths: list[str] | None = None, input_example=None, model_config: dict | None = None,
                  name: str = "model", step: int = 0, metrics: dict[str, float] | None = None):
        """An MLflow 3 ``LoggedModel`` of this run at ``step``, with ``metrics`` (logged at ``step`` into the run
        and linked to the model); returns MLflow's ``ModelInfo`` (``.model_id``)."""
        import mlflow

        info = mlflow.pyfunc.log_model(
            name=name, python_model=python_model, artifacts=artifacts, signature=signature,
            pip_requirements=pip_requirements, code_paths=code_paths, input_example=input_example,
            model_config=model_config, step=step)
        if metrics:
            self.log_metrics(metrics, step=step, model_id=info.model_id)
        return info

    def flush(self) -> None:
        import mlflow

        with contextlib.suppress(Exception):
            mlflow.flush_async_logging()


class NullTracker(Tracker):
    """``tracking.enabled=false``: the same calls, nothing logged (used to measure logging overhead)."""

    def __init__(self):
        import uuid

        self.run = None
        self.run_id = "local-" + uuid.uuid4().hex[:24]

    def __getattribute__(self, name):
        if name in ("run", "run_id") or name.startswith("__"):
            return object.__getattribute__(self, name)
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def start(ctx: Context, experiment: str, run_name: str | None = None, tags: dict | None = None,
          resume_run_id: str | None = None, parent_run_id: str | None = None,
          log_system_metrics: bool = False, enabled: bool = True) -> Iterator[Tracker]:
    """Open (or reopen) a run; end it FINISHED, FAILED or KILLED whatever happens inside."""
    if not enabled:
        yield NullTracker()
        return
    import mlflow

    experiment_id = setup(ctx, experiment)
    if log_system_metrics and "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL" not in os.environ:
        mlflow.set_system_metrics_sampling_interval(5)  # MLflow's default of 10 s misses short runs
    active = mlflow.active_run()  # inside a pipeline's parent run: this one nests under it
    if active is not None and parent_run_id is None:
        parent_run_id = active.info.run_id
    # `mlflow run` creates the run itself and hands its id down in MLFLOW_RUN_ID: the outermost run adopts it.
    adopted = os.environ.pop("MLFLOW_RUN_ID", None) if active is None and not resume_run_id else None
    if adopted:
        run = mlflow.start_run(run_id=adopted, log_system_metrics=log_system_metrics)
        mlflow.set_tags({**(tags or {}), **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})})
    else:
        run = mlflow.start_run(run_id=resume_run_id, experiment_id=None if resume_run_id else experiment_id,
                               run_name=None if resume_run_id else run_name, tags=tags, nested=active is not None,
                               parent_run_id=parent_run_id, log_system_metrics=log_system_metrics)
    tracker = Tracker(run)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.flush()
        mlflow.end_run(status=status)


class RunLogger:
    """Logging into an existing, usually finished run through the client: the run's status, end time and
    the process's active-run stack are left alone (an evaluation that crashes cannot mark the training
    run FAILED, and works while a pipeline's parent run is active). Calls are synchronous, so a reader
    right after sees the values. Used by the eval stage to put its verdict into the training run."""

    def __init__(self, ctx: Context, run_id: str):
        from mlflow.tracking import MlflowClient

        self.uri = ctx.tracking_uri
        self.client = MlflowClient(self.uri)
        self.run_id = run_id
        self.run = self.client.get_run(run_id)  # raises MlflowException when the store lacks it

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()
                                                    if v is not None])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def log_table(self, df, artifact_file: str) -> None:
        """A per-row table (``mlflow.log_table``): the UI's evaluation view compares it across runs."""
        self.client.log_table(self.run_id, data=df, artifact_file=artifact_file)

    def log_dataset(self, df, name: str, source: str, digest: str, context: str) -> None:
        """A dataset input with our own sha256 digest, as :meth:`Tracker.log_dataset` does."""
        import mlflow
        from mlflow.entities import DatasetInput, InputTag

        ds = mlflow.data.from_pandas(df, source=source, name=name, digest=digest[:36])
        tags = [InputTag("mlflow.data.context", context), InputTag("sha256", digest)]
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), tags)])


def attach(ctx: Context, run_id: str) -> RunLogger:
    """A :class:`RunLogger` for an existing run; ``MlflowException`` if the store has no such run."""
    import mlflow

    mlflow.set_tracking_uri(ctx.tracking_uri)  # datasets/artifact repos resolve through the global URI
    return RunLogger(ctx, run_id)


def open_parent(ctx: Context, experiment: str, run_name: str, tags: dict[str, Any] | None = None,
                parent_run_id: str | None = None) -> str:
    """Create a RUNNING run that other runs nest under (a sweep's parent); return its id.

    Made through the client, not ``mlflow.start_run``: the process's active-run stack stays empty, so
    jobs that run in this same process (Hydra's basic launcher) open their own runs beside it.
    """
    from mlflow.tracking import MlflowClient

    experiment_id = setup(ctx, experiment)
    tags = {k: str(v) for k, v in (tags or {}).items()}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = MlflowClient(ctx.tracking_uri).create_run(experiment_id, run_name=run_name, tags=tags)
    return run.info.run_id


def child_runs(ctx: Context, parent_run_id: str) -> list:
    """The runs whose ``mlflow.parentRunId`` is ``parent_run_id``, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(ctx.tracking_uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              max_results=10000, order_by=["attributes.start_time ASC"])


def close_parent(ctx: Context, run_id: str, status: str, tags: dict[str, Any] | None = None,
                 metrics: dict[str, float] | None = None) -> None:
    """Record ``tags``/``metrics`` on a run made by :func:`open_parent` and end it with ``status``
    (FINISHED, FAILED or KILLED). Ending a run that already ended changes nothing but the tags."""
    logger = RunLogger(ctx, run_id)
    if tags:
        logger.set_tags(tags)
    if metrics:
        logger.log_metrics(metrics)
    if logger.client.get_run(run_id).info.status == "RUNNING":
        logger.client.set_terminated(run_id, status=status)
