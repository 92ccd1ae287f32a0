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
from ech0.errors import UserError

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
                  name: str = "model", step: int = 0, metrics: dict[str, float] | None = None,
                  tags: dict[str, Any] | None = None):
        """An MLflow 3 ``LoggedModel`` of this run at ``step``, with ``metrics`` (logged at ``step`` into the run
        and linked to the model) and ``tags`` on it; returns MLflow's ``ModelInfo`` (``.model_id``)."""
        import mlflow

        info = mlflow.pyfunc.log_model(
            name=name, python_model=python_model, artifacts=artifacts, signature=signature,
            pip_requirements=pip_requirements, code_paths=code_paths, input_example=input_example,
            model_config=model_config, step=step, tags={k: str(v) for k, v in (tags or {}).items()} or None)
        if metrics:
            self.log_metrics(metrics, step=step, model_id=info.model_id)
        return info

    def flush(self) -> None:
        import mlflow

        with contextlib.suppress(Exception):
            mlflow.flush_async_logging()

    def delete_logged_models(self, name: str) -> None:
        """Delete this run's logged models named ``name`` (a checkpoint retention dropped): their files in the
        artifact store, then the models (marked deleted: ``search_logged_models`` no longer finds them)."""
        from mlflow import MlflowClient

        from ech0.spool import delete_logged_models

        delete_logged_models(MlflowClient(), self.run_id, name)


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


class ModelRef:
    """What :meth:`SpooledTracker.log_model` returns: the spool record of a model that may not be delivered yet;
    ``model_id`` is MLflow's id once it is (None before). Pass it back as ``model_id=`` or to
    :meth:`SpooledTracker.delete_logged_model`."""

    def __init__(self, spool, seq: int):
        self.spool, self.seq = spool, seq

    @property
    def model_id(self) -> str | None:
        return self.spool.state["models"].get(str(self.seq))


class SpooledTracker(Tracker):
    """A training run's logging through its spool (:mod:`ech0.spool`): every call is an append to a local
    file and returns at once; a courier thread delivers in order and waits out a tracking server that is down."""

    def __init__(self, run, spool, courier):
        super().__init__(run)
        self.spool, self.courier = spool, courier

    def log_params(self, params: dict[str, Any]) -> None:
        items = {k: (str(v)[: MAX_PARAM_VALUE - 3] + "...") if len(str(v)) > MAX_PARAM_VALUE else str(v)
                 for k, v in params.items()}
        self.spool.add({"kind": "params", "params": items})

    def log_metrics(self, metrics: dict[str, float], step: int, model_id=None) -> None:
        import time

        ts = int(time.time() * 1000)  # the point's own time: a second delivery of it is the same point
        ref = model_id.seq if isinstance(model_id, ModelRef) else model_id
        self.spool.add({"kind": "metrics", "metrics": [[k, float(v), ts, step, ref] for k, v in metrics.items()
                                                       if v is not None]})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.spool.add({"kind": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.spool.add({"kind": "artifact", "path": self.spool.keep_file(path), "artifact_path": artifact_path})

    def log_text(self, text: str, artifact_file: str) -> None:
        folder, _, name = artifact_file.rpartition("/")
        self.spool.add({"kind": "artifact", "path": self.spool.keep_text(text, name), "artifact_path": folder or None})

    def log_table(self, df, artifact_file: str) -> None:
        """The whole table, replacing what was logged under ``artifact_file`` before."""
        name = artifact_file.rpartition("/")[2]
        path = self.spool.keep_text(df.to_json(orient="split", index=False, date_format="iso"), name)
        self.spool.add({"kind": "table", "path": path, "artifact_file": artifact_file})

    def log_dataset(self, df, name: str, source: str, digest: str, context: str) -> None:
        import mlflow

        e = mlflow.data.from_pandas(df, source=source, name=name, digest=digest[:36])._to_mlflow_entity()
        self.spool.add({"kind": "dataset", "tags": {"mlflow.data.context": context, "sha256": digest},
                        "dataset": {"name": e.name, "digest": e.digest, "source_type": e.source_type,
                                    "source": e.source, "schema": e.schema, "profile": e.profile}})

    def log_model(self, python_model, artifacts: dict[str, str], signature, pip_requirements: list[str],
                  code_paths: list[str] | None = None, input_example=None, model_config: dict | None = None,
                  name: str = "model", step: int = 0, metrics: dict[str, float] | None = None,
                  tags: dict[str, Any] | None = None) -> ModelRef:
        """A ``LoggedModel`` at ``step`` (``tags`` on it, ``metrics`` linked to it), delivered from its folder
        (``artifacts``), which must stay until then; returns a :class:`ModelRef`."""
        spec = {"python_model": str(python_model), "artifacts": artifacts, "pip_requirements": pip_requirements,
                "code_paths": code_paths, "model_config": model_config,
                "signature": signature.to_dict() if signature is not None else None}
        if input_example is not None:
            raise ValueError("a spooled model takes no input_example")
        ref = ModelRef(self.spool, self.spool.add({"kind": "model", "name": name, "step": step, "spec": spec,
                                                   "tags": {k: str(v) for k, v in (tags or {}).items()}}))
        if metrics:
            self.log_metrics(metrics, step=step, model_id=ref)
        return ref

    def delete_logged_models(self, name: str) -> None:
        """Delete this run's logged models ``name`` and their files (one not delivered yet is never sent)."""
        self.spool.add({"kind": "delete_model", "name": name})

    def flush(self) -> None:
        self.courier.drain(timeout=0)

    def finish(self, status: str, wait_seconds: float) -> bool:
        """End the run ``status`` (delivered like every record); True once everything is in the store."""
        import time

        self.spool.add({"kind": "end", "status": status, "end_time": int(time.time() * 1000)})
        delivered = self.courier.drain(wait_seconds)
        self.courier.stop()
        self.spool.close()
        if delivered:  # all of it is in the store: the spool has nothing left to keep
            import shutil

            shutil.rmtree(self.spool.folder, ignore_errors=True)
        return delivered


class Undelivered(UserError):
    """Training ended but the tracking store did not take everything: the spool keeps it for ``ech0 sync``."""

    exit_code = 3


def _leave_run(run_id: str, delivered: bool) -> None:
    """Take ``run_id`` off MLflow's active-run stack without a call to the store (``mlflow.end_run`` would
    block in HTTP retries when the server is down; the spool delivers the run's end instead)."""
    from mlflow.tracking import fluent

    stack = fluent._active_run_stack.get()
    if stack and stack[-1].info.run_id == run_id:
        stack.pop()
    fluent._last_active_run_id.set(run_id)
    monitor = fluent.run_id_to_system_metrics_monitor.pop(run_id, None)
    if monitor is not None and delivered:
        monitor.finish()  # joins its thread and sends its last samples
    elif monitor is not None:
        monitor._shutdown_event.set()  # the store is down: joining would wait out the thread's HTTP retries


@contextlib.contextmanager
def start(ctx: Context, experiment: str, run_name: str | None = None, tags: dict | None = None,
          resume_run_id: str | None = None, parent_run_id: str | None = None,
          log_system_metrics: bool = False, enabled: bool = True, spool: bool = False,
          delivery_wait_seconds: float = 120.0) -> Iterator[Tracker]:
    """Open (or reopen) a run; end it FINISHED, FAILED or KILLED whatever happens inside.

    ``spool``: log through the run folder's spool (:class:`SpooledTracker`), so an outage of the tracking
    server never stalls the caller; at the end wait up to ``delivery_wait_seconds`` for the store to take
    everything, else keep the spool and raise :class:`Undelivered` (``ech0 sync`` delivers it later)."""
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
    if spool:
        from ech0 import spool as spooling

        box = spooling.Spool(ctx.run_dir(run.info.run_id) / "spool", run.info.run_id, ctx.tracking_uri)
        tracker = SpooledTracker(run, box, spooling.Courier(box).start())
    else:
        tracker = Tracker(run)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if spool:  # an interrupted run (Ctrl-C) waits 10 s at most: the user asked it to stop
            delivered = tracker.finish(status, delivery_wait_seconds if status != "KILLED" else
                                       min(10.0, delivery_wait_seconds))
            _leave_run(run.info.run_id, delivered)
        else:
            tracker.flush()
            mlflow.end_run(status=status)
    if spool and not delivered:
        from ech0.errors import safe_uri
        from ech0.spool import describe

        raise Undelivered(f"{safe_uri(ctx.tracking_uri)} did not answer within {delivery_wait_seconds:.0f} s: run "
                          f"{run.info.run_id} ended {status} here, its model and folder are kept in "
                          f"{ctx.run_dir(run.info.run_id)}, and {describe(tracker.spool.summary())} wait in its "
                          "spool; run `ech0 sync` once the server is back")


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
                                                    if v is not None], synchronous=True)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

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


def point_at(ctx: Context) -> None:
    """Point MLflow's global URI at ``ctx``'s store (model logging and ``models:/`` downloads read it)."""
    import mlflow

    mlflow.set_tracking_uri(ctx.tracking_uri)


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


@contextlib.contextmanager
def start_child(ctx: Context, parent_run_id: str, run_name: str,
                tags: dict[str, Any] | None = None) -> Iterator[Tracker]:
    """A new run nested under the existing run ``parent_run_id`` (in its experiment), the active run for the
    block, ended FINISHED, FAILED or KILLED whatever happens inside: what ``mlflow.genai.evaluate`` logs
    into (it uses the active run, or opens one of its own in the default experiment).

    Created through the client, then activated by id: MLflow refuses ``start_run(parent_run_id=X)`` while
    another run (a pipeline's parent) is on top of the active-run stack, but nests a resumed run under it.
    The parent (usually a finished training run) keeps its status and end time.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(ctx.tracking_uri)
    client = MlflowClient(ctx.tracking_uri)
    parent = client.get_run(parent_run_id)  # MlflowException when the store lacks it
    run = client.create_run(parent.info.experiment_id, run_name=run_name,
                            tags={**{k: str(v) for k, v in (tags or {}).items()}, "mlflow.parentRunId": parent_run_id})
    try:
        tracker = Tracker(mlflow.start_run(run_id=run.info.run_id, nested=mlflow.active_run() is not None))
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")  # never left RUNNING
        raise
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
