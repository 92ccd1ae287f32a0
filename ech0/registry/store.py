"""Registered model versions: the client, resolving what the user names, ``register`` and ``list``.

    from ech0.registry import register, resolve_uri, alias_version, version_of_run
    mv = register(ctx, run_id, eval_report="models/RUN/reports/regression_report.json")  # version N
    mv = register(ctx, run_id, best=True)   # its best logged model (checkpoints + final) by eval/loss
    picked = best_model(ctx, run_id)        # which one that is: .model_id, .step, .model_dir, .value
    mv = resolve_uri(ctx, "models:/ech0@production")       # or models:/ech0/3; UserError if unknown
    mv = alias_version(ctx, "ech0", "production")          # None when there is no such model or alias
    mv = version_of_run(ctx, run_id)                       # its newest version, or None

This module is the one place that turns ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` and run ids
into model versions; every stage (eval, smoke, pipeline) asks it. ``ctx`` is the command's
:class:`ech0.context.Context`: its store, and its ``registry_name`` when no name is given.

A training run logs each checkpoint as an MLflow 3 ``LoggedModel`` (``checkpoint-<step>``) with its
held-out loss linked, and its final model as ``model``; ``best`` ranks them with
``search_logged_models(filter_string="source_run_id='RUN'", order_by=[metrics.eval/loss])``.
Every version carries ``ech0.*`` tags: run id and folder, the logged model (id, name, kind, ``ech0.step``),
base model, config path and sha256,
dataset digests, the eval report and its sha256, the gate verdict (``passed``/``failed``/``none``)
with where it came from, the score, and later the serving smoke result.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ech0.context import Context
from ech0.errors import UserError, denied_line, mlflow_user
from ech0.io import sha256_file, utc_now
from ech0.registry import access

ALIASES = ("production", "staging")  # the registry's stages: each an alias, models:/NAME@ALIAS
MODEL_ARTIFACT = "model"
TAG_MAX = 5000  # MLflow's limit on one tag value
GATE_METRIC, SCORE_METRIC, PASS_RATE_METRIC, SAFETY_METRIC = (
    "eval/gate_passed", "eval/mean_score", "eval/pass_rate", "eval/safety_flags")


def client(ctx: Context):
    """A client on ``ctx``'s store; also made MLflow's current store (its SQL registry resolves logged
    models through the global URI, and ``models:/`` downloads use it)."""
    import mlflow
    from mlflow import MlflowClient

    uri = ctx.tracking_uri
    if ctx.is_local_store:
        ctx.home.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def error_code(e: BaseException) -> str:
    return getattr(e, "error_code", "") or ""


def is_not_found(e: BaseException) -> bool:
    return error_code(e) in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(e).lower()


def check_stage(stage: str) -> str:
    s = str(stage).strip().lower()
    if s not in ALIASES:
        raise UserError(f"unknown stage {stage!r}; expected one of {', '.join(ALIASES)}")
    return s


def registered_model(c, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_registered_model(name)
    except MlflowException as e:
        if is_not_found(e):
            raise UserError(f"registered model {name!r} not found in {c.tracking_uri}; "
                            f"run `ech0 registry register --run-id RUN` first") from None
        raise


def get_version(c, name: str, version: str | int):
    from mlflow.exceptions import MlflowException

    v = str(version).strip()
    if not v.isdigit():
        raise UserError(f"version {version!r}: expected a version number")
    try:
        return c.get_model_version(name, v)
    except MlflowException as e:
        if is_not_found(e):
            registered_model(c, name)  # a missing model gets its own message
            raise UserError(f"version {v} of {name!r} not found; `ech0 registry list` shows the versions") from None
        raise


def version_by_alias(c, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        registered_model(c, name)
        if is_not_found(e) or error_code(e) == "INVALID_PARAMETER_VALUE":
            raise UserError(f"alias {alias!r} of {name!r} not found; `ech0 registry list` shows the aliases") from None
        raise


def versions(c, name: str, run_id: str | None = None) -> list:
    """All versions of ``name`` (optionally of one run), newest first."""
    flt = f"name='{name}'" + (f" and run_id='{run_id}'" if run_id else "")
    out, token = [], None
    while True:
        page = c.search_model_versions(flt, max_results=1000, page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            break
    return sorted(out, key=lambda mv: int(mv.version), reverse=True)


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (one of the two is None)."""
    rest = uri[len("models:/"):].strip("/") if uri.startswith("models:/") else ""
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias:
            return name, alias, None
    elif "/" in rest and rest.rsplit("/", 1)[1].isdigit():
        name, version = rest.rsplit("/", 1)
        return name, None, version
    raise UserError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")


def resolve_uri(ctx: Context, uri: str):
    """The model version a ``models:/`` URI names (an alias resolved now: pin ``models:/NAME/VERSION``
    before loading, an alias may move); ``UserError`` for a bad URI or an unknown model/alias/version."""
    name, alias, version = parse_model_uri(uri)
    c = client(ctx)
    return version_by_alias(c, name, alias) if alias else get_version(c, name, version)


def alias_version(ctx: Context, name: str | None, alias: str):
    """The version ``name@alias`` points at, or None when there is no such registered model or alias."""
    from mlflow.exceptions import MlflowException

    try:
        return client(ctx).get_model_version_by_alias(name or ctx.registry_name, alias)
    except MlflowException as e:
        if is_not_found(e) or error_code(e) == "INVALID_PARAMETER_VALUE":
            return None
        raise


def version_of_run(ctx: Context, run_id: str, name: str | None = None):
    """The newest version of ``name`` (default ``ctx.registry_name``) registered from ``run_id``, or None."""
    found = versions(client(ctx), name or ctx.registry_name, run_id=run_id)
    return found[0] if found else None


def tag_version(ctx: Context, mv, tags: dict[str, Any]) -> None:
    """Set ``tags`` on model version ``mv`` (values cut to MLflow's limit)."""
    c = client(ctx)
    with access.refusals(c, mv.name, f"record {', '.join(tags)} on v{mv.version} of {mv.name!r}"):
        for k, v in tags.items():
            c.set_model_version_tag(mv.name, str(mv.version), k, str(v)[:TAG_MAX])


def resolve(c, name: str, *, version=None, run_id=None, alias=None):
    """The model version the user named by exactly one of version / run id (its newest) / alias."""
    given = [k for k, v in (("--version", version), ("--run-id", run_id), ("--alias", alias)) if v]
    if len(given) != 1:
        raise UserError("name the model version with exactly one of --version, --run-id, --alias")
    if version:
        return get_version(c, name, version)
    if alias:
        return version_by_alias(c, name, alias)
    registered_model(c, name)
    found = versions(c, name, run_id=run_id)
    if not found:
        raise UserError(f"run {run_id!r} has no version in {name!r}; run `ech0 registry register --run-id {run_id}` first")
    return found[0]


# -- evaluation evidence ---------------------------------------------------------------------------

def _dig(d: Any, *keys: str):
    for k in keys:
        cur = d
        for part in k.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if cur is not None:
            return cur
    return None


def read_report(path: str | Path) -> dict:
    """Gate verdict and scores from ``regression_report.json`` (``verdict.passed``, ``aggregates.*``, as
    ech0.eval writes it; flat ``passed``/``mean_score`` layouts are read too)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: eval report not found")
    try:
        rep = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a JSON eval report ({e})") from None
    passed = _dig(rep, "verdict.passed", "gate.passed", "gate_passed", "passed")
    if isinstance(passed, str):
        passed = passed.strip().lower() in ("pass", "passed", "true", "1", "yes")
    if passed is None and isinstance(rep.get("verdict"), str):
        passed = rep["verdict"].strip().lower() in ("pass", "passed")
    return {"gate": None if passed is None else ("passed" if passed else "failed"),
            "score": _dig(rep, "aggregates.mean_score", "mean_score", "summary.mean_score", "score"),
            "pass_rate": _dig(rep, "aggregates.pass_rate", "pass_rate", "summary.pass_rate"),
            "safety_flags": _dig(rep, "aggregates.safety_flags", "safety_flags", "summary.safety_flags")}


def run_evidence(run) -> dict | None:
    """The gate verdict and scores the evaluation stage logged into the training run, or None."""
    m = run.data.metrics
    if GATE_METRIC not in m:
        return None
    return {"gate": "passed" if m[GATE_METRIC] >= 0.5 else "failed", "score": m.get(SCORE_METRIC),
            "pass_rate": m.get(PASS_RATE_METRIC), "safety_flags": m.get(SAFETY_METRIC)}


def gate_verdict(c, mv) -> tuple[str, str]:
    """(``passed``/``failed``/``none``, source) for a version: its recorded verdict, else the run's metrics now."""
    tags = mv.tags or {}
    if tags.get("ech0.gate") in ("passed", "failed"):
        return tags["ech0.gate"], tags.get("ech0.gate_source", "version tag")
    if mv.run_id:
        from mlflow.exceptions import MlflowException

        try:
            ev = run_evidence(c.get_run(mv.run_id))
        except MlflowException:
            ev = None
        if ev:
            return ev["gate"], f"run {mv.run_id} metrics"
    return "none", "no evaluation recorded"


# -- register --------------------------------------------------------------------------------------

BEST_METRIC, BEST_MODES = "eval/loss", ("min", "max")  # the held-out loss each checkpoint and the final model carry


@dataclass
class Picked:
    """One of a run's logged models, chosen to be registered."""

    model_id: str
    name: str  # "model" (the final one) or "checkpoint-<step>"
    step: int | None  # the training step it was logged at
    kind: str  # final | checkpoint
    model_dir: str | None  # its loadable model folder on this machine, when training recorded one
    metric: str | None = None  # what ranked it, and its value (None: the final model, not ranked)
    value: float | None = None

    @property
    def source(self) -> str:
        return f"models:/{self.model_id}"

    def line(self) -> str:
        by = f" ({self.metric} {self.value:.6g}, the best)" if self.metric else ""
        return f"{self.name} at step {self.step if self.step is not None else '?'}{by}"


def _step_of(lm, run) -> int | None:
    step = (lm.tags or {}).get("ech0.step")
    if step is None:
        step = next((o.step for o in getattr(run.outputs, "model_outputs", None) or [] if o.model_id == lm.model_id),
                    None)
    return int(step) if step is not None else None


def _picked(lm, run, metric: str | None = None, value: float | None = None) -> Picked:
    tags = lm.tags or {}
    return Picked(lm.model_id, lm.name, _step_of(lm, run), tags.get("ech0.kind") or
                  ("final" if lm.name == MODEL_ARTIFACT else "checkpoint"), tags.get("ech0.model_dir"), metric, value)


def best_logged_model(c, run, metric: str = BEST_METRIC, mode: str = "min") -> Picked:
    """The run's logged model (its checkpoints and its final model) with the lowest (``mode=max``: highest)
    ``metric`` linked to it; ``UserError`` when none of them has that metric."""
    if mode not in BEST_MODES:
        raise UserError(f"best mode {mode!r}: expected min (lower is better) or max")
    run_id, found, token = run.info.run_id, None, None
    while found is None:
        page = c.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id='{run_id}'",
                                      order_by=[{"field_name": f"metrics.{metric}", "ascending": mode == "min"}],
                                      max_results=100, page_token=token)
        for lm in page:  # ranked; a model without the metric sorts last
            points = [m for m in lm.metrics or [] if m.key == metric]
            if points:  # the value it was ranked by: the latest point, as the store orders them
                found = _picked(lm, run, metric, max(points, key=lambda m: (m.timestamp, m.step)).value)
                break
        token = getattr(page, "token", None)
        if not token:
            break
    if found is None:
        raise UserError(f"run {run_id}: none of its logged models has the metric {metric!r}; train with held-out "
                        "rows (data.eval_file or data.eval_fraction) and tracking.log_model=true, or pick another "
                        "--best-metric")
    return found


def best_model(ctx: Context, run_id: str, metric: str = BEST_METRIC, mode: str = "min") -> Picked:
    """:func:`best_logged_model` of run ``run_id`` in ``ctx``'s store (the pipeline picks before it evaluates)."""
    from mlflow.exceptions import MlflowException

    c = client(ctx)
    try:
        run = c.get_run(run_id)
    except MlflowException as e:
        if is_not_found(e):
            raise UserError(f"run {run_id!r} not found in {c.tracking_uri}") from None
        raise
    return best_logged_model(c, run, metric, mode)


def _picked_tags(picked: Picked | None) -> dict[str, Any]:
    """What a version records of the logged model it was made from: id, name, kind, step (and what ranked it)."""
    if picked is None:
        return {}
    tags = {"ech0.logged_model_id": picked.model_id, "ech0.logged_model": picked.name, "ech0.kind": picked.kind}
    if picked.step is not None:
        tags["ech0.step"] = picked.step
    if picked.metric:
        tags["ech0.best_metric"], tags["ech0.best_value"] = picked.metric, f"{picked.value:.6g}"
    return tags


def _logged_model_source(c, run) -> tuple[str, str | None]:
    """(source, model_id) of the run's pyfunc logged at artifact path ``model``."""
    run_id = run.info.run_id
    for out in getattr(run.outputs, "model_outputs", None) or []:
        lm = c.get_logged_model(out.model_id)
        if lm.name == MODEL_ARTIFACT:
            return f"models:/{lm.model_id}", lm.model_id
    names = {a.path for a in c.list_artifacts(run_id, MODEL_ARTIFACT)}
    if f"{MODEL_ARTIFACT}/MLmodel" in names:
        return f"{run.info.artifact_uri}/{MODEL_ARTIFACT}", None
    raise UserError(f"run {run_id} has no logged model at `{MODEL_ARTIFACT}`; train with tracking.log_model=true")


def register(ctx: Context, run_id: str | None = None, *, run_dir: str | Path | None = None,
             base_model: str | None = None, config: str | Path | None = None, datasets: list[str] | None = None,
             eval_report: str | Path | None = None, score: float | None = None, name: str | None = None,
             description: str | None = None, best: bool = False, best_metric: str = BEST_METRIC,
             best_mode: str = "min"):
    """Create a new version of ``name`` (default ``ctx.registry_name``) from the run's logged model
    (``model``, the final one; ``best``: the one of its checkpoints and final model with the lowest
    ``best_metric``, ``best_mode=max`` the highest), with its provenance and step as tags. On a server
    with the auth app the user needs EDIT on ``name`` (when it exists) and READ on the run's experiment;
    a refusal writes nothing."""
    name = name or ctx.registry_name
    if run_dir is not None:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: run folder not found")
        run_id = run_id or run_dir.name
    if not run_id:
        raise UserError("register needs --run-id (or --run-dir)")
    c = client(ctx)
    doing = f"register run {run_id} as a new version of {name!r}"
    with access.refusals(c, name, doing):
        return _register(ctx, c, name, doing, run_id, run_dir, base_model, config, datasets, eval_report, score,
                         description, best=(best_metric, best_mode) if best else None)


def _register(ctx, c, name, doing, run_id, run_dir, base_model, config, datasets, eval_report, score, description,
              best: tuple[str, str] | None = None):
    from mlflow.exceptions import MlflowException

    access.require(c, name, doing, unknown_ok=True)  # before anything is read or written: the reason that matters
    try:
        run = c.get_run(run_id)
    except MlflowException as e:
        if is_not_found(e):
            raise UserError(f"run {run_id!r} not found in {c.tracking_uri}") from None
        if error_code(e) == "PERMISSION_DENIED":
            raise UserError(denied_line(mlflow_user(), doing, f"READ on the experiment of run {run_id}")) from None
        raise
    rtags = run.data.tags
    if run_dir is None:
        guess = Path(rtags.get("ech0.run_dir") or ctx.run_dir(run_id))
        run_dir = guess if guess.is_dir() else None
    if best is not None:
        picked = best_logged_model(c, run, *best)
        source, model_id = picked.source, picked.model_id
    else:
        source, model_id = _logged_model_source(c, run)
        picked = _picked(c.get_logged_model(model_id), run) if model_id else None

    tags: dict[str, Any] = {"ech0.run_id": run_id, "ech0.run_dir": run_dir or "",
                            "ech0.base_model": base_model or rtags.get("ech0.base_model", ""),
                            "ech0.base_model_hash": rtags.get("ech0.base_model_hash", ""),
                            "ech0.preset": rtags.get("ech0.preset", ""), "ech0.git_commit": rtags.get("ech0.git_commit", "")}
    tags.update(_picked_tags(picked))
    cfg_path = Path(config) if config else (run_dir / "config.yaml" if run_dir else None)
    if config and not cfg_path.is_file():
        raise UserError(f"{config}: config not found")
    if cfg_path and cfg_path.is_file():
        tags["ech0.config"], tags["ech0.config_sha256"] = str(cfg_path), sha256_file(cfg_path)
    digests: dict[str, str] = {}
    for d in datasets or []:
        if not Path(d).is_file():
            raise UserError(f"{d}: dataset not found")
        digests[str(d)] = sha256_file(Path(d))
    if not datasets:
        for inp in getattr(run.inputs, "dataset_inputs", None) or []:
            sha = {t.key: t.value for t in inp.tags}.get("sha256") or inp.dataset.digest
            digests[inp.dataset.name] = sha
    tags["ech0.datasets"] = json.dumps(digests, sort_keys=True)

    report = Path(eval_report) if eval_report else None
    if report is not None:
        evidence, src = read_report(report), f"report {report}"
    elif (ev := run_evidence(run)) is not None:
        evidence, src = ev, f"run {run_id} metrics"
    elif run_dir and (run_dir / "reports" / "regression_report.json").is_file():
        report = run_dir / "reports" / "regression_report.json"
        evidence, src = read_report(report), f"report {report}"
    else:
        evidence, src = {"gate": None}, "no evaluation"
    if report is not None:
        tags["ech0.eval_report"], tags["ech0.eval_report_sha256"] = str(report), sha256_file(report)
    if score is not None:
        evidence["score"] = float(score)
    tags["ech0.gate"] = evidence.get("gate") or "none"
    tags["ech0.gate_source"] = src
    for k in ("score", "pass_rate", "safety_flags"):
        if evidence.get(k) is not None:
            tags[f"ech0.{k}"] = f"{float(evidence[k]):.6g}"
    tags["ech0.registered_at"] = utc_now()
    tags["ech0.registered_by"] = who(ctx)
    description = description or (
        f"ech0 {tags['ech0.preset'] or 'model'} fine-tune of {tags['ech0.base_model'] or '?'} from run {run_id}"
        + (f", {picked.line()}" if picked else "") + "; "
        f"gate {tags['ech0.gate']}" + (f", score {tags['ech0.score']}" if "ech0.score" in tags else ""))
    from ech0.registry.describe import version_description  # that line, then data/config/base/gate with links
    description = version_description(c, run, tags, description)

    try:
        c.create_registered_model(name, description="ech0 fine-tuned causal LM; aliases: production, staging")
    except MlflowException as e:
        if error_code(e) not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    mv = c.create_model_version(name, source=source, run_id=run_id, description=description, model_id=model_id,
                                tags={k: str(v)[:TAG_MAX] for k, v in tags.items()})
    return mv


def who(ctx: Context) -> str:
    """``user@host pid N``: ``ctx.user``, else the login name; on a store that takes a login, `` as MLflow
    user NAME`` too (the name only, never the password)."""
    import getpass
    import socket

    try:
        user = ctx.user or getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    login = mlflow_user() if access.is_server(ctx.tracking_uri) else None
    return f"{user}@{socket.gethostname()} pid {os.getpid()}" + (f" as MLflow user {login}" if login else "")


# -- list ------------------------------------------------------------------------------------------

def table(c, name: str) -> list[dict]:
    with access.refusals(c, name, f"list the versions of {name!r}", need="READ"):
        return _table(c, name)


def _table(c, name: str) -> list[dict]:
    rm = registered_model(c, name)
    aliases: dict[str, list[str]] = {}
    for alias, v in (rm.aliases or {}).items():
        aliases.setdefault(str(v), []).append(alias)
    rows = []
    for mv in versions(c, name):
        t = mv.tags or {}
        rows.append({"version": int(mv.version), "aliases": ",".join(sorted(aliases.get(str(mv.version), []))) or "-",
                     "stage": mv.current_stage or "None", "score": t.get("ech0.score", "-"),
                     "gate": t.get("ech0.gate", "none"), "smoke": t.get("ech0.smoke", "-"),
                     "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mv.creation_timestamp / 1000)),
                     "run_id": mv.run_id or "-"})
    return rows


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no versions)"
    cols = list(rows[0])
    width = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in cols}
    lines = ["  ".join(k.upper().ljust(width[k]) for k in cols)]
    lines += ["  ".join(str(r[k]).ljust(width[k]) for k in cols) for r in rows]
    return "\n".join(line.rstrip() for line in lines)
