"""A run's write-ahead spool: what a training run logs waits on disk until the tracking store has it.

    spool = Spool(run_dir / "spool", run_id, tracking_uri)
    spool.add({"kind": "metrics", "metrics": [["train/loss", 1.2, ts_ms, 3, None]]})  # an append, no network
    courier = Courier(spool).start()   # a thread delivers in order, waiting out a server that is down
    courier.drain(timeout=120)         # True once every record is in the store
    deliver(spool)                     # `ech0 sync`: the same delivery in the foreground

Why: a call to a tracking server that is down blocks in MLflow's HTTP retries (7 retries, backoff up to
120 s: minutes per call), so a step loop that tags, logs an artifact or a checkpoint's model during an
outage stalls (measured in issue #15: a 20-step SmolLM2 run took 108 s instead of 60 s with the server
killed for 20 s). Here the loop only appends a line to ``records.jsonl``; one thread, the courier,
delivers the records in order through an ``MlflowClient`` and keeps retrying while the server is down.
A record is marked delivered (``delivered.json``, replaced atomically) only after the store accepted it,
so a process that dies mid-outage leaves everything it logged on disk, and ``ech0 sync`` delivers it later.

Delivering twice duplicates nothing: metrics carry the timestamp they were logged at (the store ignores a
point it already has), params and tags are set to the same values, artifacts overwrite the same paths, and a
model record remembers the ``model_id`` it created (``delivered.json``), so a second pass skips it.

Layout of ``spool/``: ``meta.json`` (run id, the store without credentials), ``records.jsonl`` (record *n* is
line *n*), ``delivered.json`` (``{"seq": records delivered, "models": {seq: model_id}, "refused": [...]}``),
``files/<seq>/`` (copies of small logged files and texts, so the spool does not depend on files that change).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from ech0.io import atomic_write_text

META, RECORDS, DELIVERED, FILES = "meta.json", "records.jsonl", "delivered.json", "files"
COPY_BELOW_BYTES = 64 << 20  # a logged file smaller than this is copied into the spool; a larger one is referenced
MAX_METRICS_PER_CALL = 1000  # MLflow's log_batch limit
POLL_SECONDS = 1.0  # the courier gathers records this long before a call: one log_batch per second, not per step
RETRY_SECONDS = (1, 2, 4, 8, 10)  # waits between attempts while the store is unreachable (then every 10 s)


class Refused(Exception):
    """The store answered and rejected a record (bad value, no permission): retrying cannot help."""


def pending_spools(models_dir: Path) -> list["Spool"]:
    """The spools under ``models_dir/*/spool`` that still hold undelivered records, oldest first."""
    out = []
    for meta in sorted(models_dir.glob(f"*/spool/{META}"), key=lambda p: p.stat().st_mtime):
        spool = Spool.open(meta.parent)
        if spool.pending():
            out.append(spool)
    return out


class Spool:
    """The records of one run and how far delivery got. Thread-safe: the loop adds, the courier takes."""

    def __init__(self, folder: Path, run_id: str, tracking_uri: str):
        from ech0.errors import safe_uri

        self.folder, self.run_id = Path(folder), run_id
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / META
        if not meta.exists():
            atomic_write_text(meta, json.dumps({"run_id": run_id, "tracking_uri": safe_uri(tracking_uri)}))
        self.tracking_uri = tracking_uri  # with credentials, if any: kept in memory, never written
        self.lock = threading.Lock()
        self.records: list[dict] = []
        path = self.folder / RECORDS
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        for n, line in enumerate(lines):
            try:
                self.records.append(json.loads(line))
            except ValueError:
                if n != len(lines) - 1:
                    raise
                # the last line of a writer killed mid-write was never a whole record: drop it from the file
                atomic_write_text(path, "".join(x + "\n" for x in lines[:-1]))
        self.state = json.loads((self.folder / DELIVERED).read_text()) if (self.folder / DELIVERED).exists() \
            else {"seq": 0, "models": {}, "refused": []}
        self._out = open(path, "a", encoding="utf-8")

    @classmethod
    def open(cls, folder: Path, tracking_uri: str | None = None) -> "Spool":
        """An existing spool (``ech0 sync``); ``tracking_uri`` overrides the store it recorded."""
        meta = json.loads((Path(folder) / META).read_text())
        return cls(folder, meta["run_id"], tracking_uri or meta["tracking_uri"])

    @property
    def recorded_uri(self) -> str:
        return json.loads((self.folder / META).read_text())["tracking_uri"]

    # ------------------------------------------------------------------ the writer's side
    def add(self, record: dict) -> int:
        """Append ``record``; returns its sequence number (its line in ``records.jsonl``)."""
        line = json.dumps(record, ensure_ascii=False, default=str)
        with self.lock:
            self._out.write(line + "\n")
            self._out.flush()  # in the OS's hands: a killed process loses nothing it logged
            self.records.append(record)
            return len(self.records) - 1

    def keep_file(self, path: str | Path) -> str:
        """A copy of a small file in the spool (a large one is referenced where it is); returns the path."""
        path = Path(path)
        if path.is_dir() or path.stat().st_size >= COPY_BELOW_BYTES:
            return str(path.resolve())
        folder = self.folder / FILES / str(len(self.records))
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{path.name}.tmp"
        shutil.copyfile(path, tmp)
        os.replace(tmp, folder / path.name)
        return str(folder / path.name)

    def keep_text(self, text: str, name: str) -> str:
        folder = self.folder / FILES / str(len(self.records))
        atomic_write_text(folder / name, text)
        return str(folder / name)

    def close(self) -> None:
        with self.lock:
            if not self._out.closed:
                self._out.flush()
                os.fsync(self._out.fileno())
                self._out.close()

    # ------------------------------------------------------------------ the courier's side
    def pending(self) -> int:
        with self.lock:
            return len(self.records) - self.state["seq"]

    def take(self) -> tuple[int, list[dict]]:
        with self.lock:
            return self.state["seq"], self.records[self.state["seq"]:]

    def mark(self, seq: int, models: dict[int, str] | None = None, refused: list | None = None,
             creating: dict[int, str] | None = None) -> None:
        """Records before ``seq`` are delivered (atomically on disk); ``models``: the ids they created."""
        with self.lock:
            self.state["seq"] = seq
            self.state["models"].update({str(k): v for k, v in (models or {}).items()})
            self.state.setdefault("creating", {}).update({str(k): v for k, v in (creating or {}).items()})
            self.state["refused"].extend(refused or [])
            text = json.dumps(self.state)
        # written outside the lock (the courier is its only writer): the loop's add() never waits on an fsync
        atomic_write_text(self.folder / DELIVERED, text)

    def summary(self) -> dict[str, int]:
        """How many undelivered records of each kind."""
        counts: dict[str, int] = {}
        for r in self.take()[1]:
            counts[r["kind"]] = counts.get(r["kind"], 0) + 1
        return counts


# ---------------------------------------------------------------------------------------- delivery

def reachable(tracking_uri: str, timeout: float = 2.0) -> bool:
    """Whether the store answers now (a server's ``/health``, without MLflow's minutes of retries). Any answer
    below 500 counts: a proxy in front of the server may not route ``/health`` but still passes the API."""
    if not tracking_uri.startswith(("http://", "https://")):
        return True
    import requests

    try:
        return requests.get(tracking_uri.rstrip("/") + "/health", timeout=timeout).status_code < 500
    except requests.RequestException:
        return False


def _refused(e: BaseException) -> bool:
    """An answer from a live store that retrying cannot change (a 4xx: bad value, no permission)."""
    from mlflow.exceptions import MlflowException

    if not isinstance(e, MlflowException):
        return False
    return e.get_http_status_code() in range(400, 500) and "Max retries" not in str(e)


def delete_logged_models(client, run_id: str, name: str) -> int:
    """Delete run ``run_id``'s logged models named ``name``, files first; returns how many."""
    import contextlib

    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    run = client.get_run(run_id)
    found = client.search_logged_models([run.info.experiment_id],
                                        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'")
    for lm in found:
        with contextlib.suppress(FileNotFoundError):  # its files already gone
            get_artifact_repository(lm.artifact_location).delete_artifacts()
        client.delete_logged_model(lm.model_id)
    return len(found)


class Delivery:
    """Delivers records in order into the run through one client. ``step()`` does one batch. Every call is
    ``synchronous=True``: with ``MLFLOW_ENABLE_ASYNC_LOGGING`` set, MLflow's client would otherwise only queue
    the batch, and a record would be marked delivered before the store has it."""

    def __init__(self, spool: Spool):
        from mlflow.tracking import MlflowClient

        self.spool = spool
        self.client = MlflowClient(spool.tracking_uri)
        self.run_id = spool.run_id

    def step(self) -> int:
        """Deliver what is pending (metrics records merged into batches); returns how many records went."""
        start, records = self.spool.take()
        if not records:
            return 0
        done = 0
        while done < len(records):
            seq = start + done
            rec = records[done]
            n = 1
            models: dict[int, str] = {}
            refused: list = []
            if rec["kind"] == "metrics":  # consecutive metric records: one call
                batch = list(rec["metrics"])
                while done + n < len(records) and records[done + n]["kind"] == "metrics" and \
                        len(batch) + len(records[done + n]["metrics"]) <= MAX_METRICS_PER_CALL:
                    batch.extend(records[done + n]["metrics"])
                    n += 1
                rec = {"kind": "metrics", "metrics": batch}
            try:
                model_id = self.one(seq, rec, records[done + 1:])
                if model_id:
                    models[seq] = model_id
            except Exception as e:
                if not _refused(e):
                    raise
                refused.append([seq, rec["kind"], str(e).splitlines()[0][:300]])
            self.spool.mark(seq + n, models, refused)
            done += n
        return done

    def _model_id(self, ref: int) -> str | None:
        return self.spool.state["models"].get(str(ref))

    def one(self, seq: int, rec: dict, later: list[dict]) -> str | None:
        from mlflow.entities import Metric, Param, RunTag

        c, run_id, kind = self.client, self.run_id, rec["kind"]
        if kind == "metrics":
            c.log_batch(run_id, metrics=[Metric(k, v, ts, step, model_id=self._model_id(m) if m is not None else None)
                                         for k, v, ts, step, m in rec["metrics"]], synchronous=True)
        elif kind == "params":
            existing = c.get_run(run_id).data.params  # a resumed run keeps its params
            c.log_batch(run_id, params=[Param(k, v) for k, v in rec["params"].items() if k not in existing],
                        synchronous=True)
        elif kind == "tags":
            c.log_batch(run_id, tags=[RunTag(k, v) for k, v in rec["tags"].items()], synchronous=True)
        elif kind == "artifact":
            c.log_artifact(run_id, rec["path"], artifact_path=rec.get("artifact_path"))
        elif kind == "table":
            self._table(rec)
        elif kind == "dataset":
            from mlflow.entities import Dataset, DatasetInput, InputTag

            tags = [InputTag(k, v) for k, v in rec["tags"].items()]
            c.log_inputs(run_id, datasets=[DatasetInput(Dataset(**rec["dataset"]), tags)])
        elif kind == "model":
            # Deleted (retention) before it was delivered: never sent (a model created by a failed earlier
            # attempt is found by name when the delete is delivered).
            if self._model_id(seq) or any(r["kind"] == "delete_model" and r["name"] == rec["name"] for r in later):
                return self._model_id(seq)
            return self._model(seq, rec)
        elif kind == "delete_model":
            delete_logged_models(c, run_id, rec["name"])
        elif kind == "end":
            c.set_terminated(run_id, rec["status"], end_time=rec["end_time"])
        else:
            raise ValueError(f"{self.spool.folder / RECORDS}: record {seq} has unknown kind {kind!r}")
        return None

    def _table(self, rec: dict) -> None:
        """The whole table replaces the artifact, and the run's table list (what the UI compares) names it."""
        from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

        path, artifact_file = rec["path"], rec["artifact_file"]
        folder = os.path.dirname(artifact_file) or None
        self.client.log_artifact(self.run_id, path, artifact_path=folder)
        tables = json.loads(self.client.get_run(self.run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
        entry = {"path": artifact_file, "type": "table"}
        if entry not in tables:
            self.client.set_tag(self.run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps(tables + [entry]), synchronous=True)

    def _model(self, seq: int, rec: dict) -> str:
        import mlflow.pyfunc
        from mlflow.models import Model, ModelSignature

        kw = dict(rec["spec"])
        kw["signature"] = ModelSignature.from_dict(kw["signature"]) if kw.get("signature") else None
        # Created here, in the run's experiment: Model.log alone would take this thread's active experiment
        # (the default one), since the courier has no active run. Params as Model.log copies them: the run's.
        # A retry after a failure mid-upload reuses the model it created (recorded before the upload).
        model_id = self.spool.state.get("creating", {}).get(str(seq))
        if model_id is None:
            run = self.client.get_run(self.run_id)
            model_id = self.client.create_logged_model(
                run.info.experiment_id, name=rec["name"], source_run_id=self.run_id, tags=rec.get("tags") or None,
                params=dict(run.data.params) or None).model_id
            self.spool.mark(seq, creating={seq: model_id})
        Model.log(None, flavor=mlflow.pyfunc, model_id=model_id, run_id=self.run_id, step=rec["step"], **kw)
        return model_id

def deliver(spool: Spool, wait_seconds: float = 0.0) -> int:
    """Deliver everything pending in the foreground (``ech0 sync``), waiting up to ``wait_seconds`` for a
    server that is down; returns how many records went. Raises :class:`ConnectionError` if it stays down."""
    delivery, sent, deadline = Delivery(spool), 0, time.monotonic() + wait_seconds
    while spool.pending():
        if not reachable(spool.tracking_uri):
            if time.monotonic() >= deadline:
                raise ConnectionError(spool.tracking_uri)
            time.sleep(1)
            continue
        sent += delivery.step()
    return sent


class Courier(threading.Thread):
    """The background delivery of one run's spool while it trains."""

    def __init__(self, spool: Spool, poll_seconds: float = POLL_SECONDS):
        super().__init__(name=f"ech0-spool-{spool.run_id[:8]}", daemon=True)
        self.spool, self.poll = spool, poll_seconds
        self.wake = threading.Event()
        self.stopping = False
        self.failures = 0  # attempts in a row that found the store unreachable
        self.cpu_seconds = 0.0  # this thread's CPU time spent delivering (what it can take from the loop)

    def start(self) -> "Courier":
        super().start()
        return self

    def run(self) -> None:
        delivery = Delivery(self.spool)
        while True:
            self.wake.wait(self.poll)
            self.wake.clear()
            if not self.spool.pending():
                if self.stopping:
                    return
                continue
            t = time.thread_time()
            try:
                if not reachable(self.spool.tracking_uri):
                    raise ConnectionError(self.spool.tracking_uri)
                delivery.step()
                self.failures = 0
            except Exception:  # unreachable, or failed mid-call: wait and take the same records again
                self.failures += 1
                time.sleep(RETRY_SECONDS[min(self.failures, len(RETRY_SECONDS)) - 1])
                self.wake.set()
            finally:
                self.cpu_seconds += time.thread_time() - t  # sleeping takes no CPU time

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every record to be delivered; True if it was."""
        deadline = time.monotonic() + timeout
        self.wake.set()
        while self.spool.pending() and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.05)
            self.wake.set()
        return not self.spool.pending()

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()


def describe(counts: dict[str, Any]) -> str:
    """``{"metrics": 40, "artifact": 2}`` -> ``"40 metrics, 2 artifact records"`` for one-line messages."""
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + " records" if counts else "no records"
