"""Evaluate a model on regression cases; the gate decides. Run it as ``python -m ech0.eval`` (= ``ech0 eval``).

    python -m ech0.eval --model-dir models/<run_id> --baseline ech0/eval/baselines/regression.jsonl
    python -m ech0.eval --model-dir models:/ech0@production gate.min_pass_rate=0.9

From Python (the pipeline)::

    from ech0.eval.evaluate import evaluate
    report = evaluate(ctx, "models/<run_id>")       # shipped baseline, conf/eval.yaml settings
    report.passed, report.reasons, report.report_path

``ctx`` is the command's :class:`ech0.context.Context` (its home, store and registry name); the
model is anything :func:`ech0.eval.subject.resolve_ref` accepts. Outputs: ``regression_report.json``
and ``.md`` under ``<run dir>/reports/`` (else ``<home>/reports/eval/<model>/``); in MLflow, the
metrics ``eval/*``, the per-case table, the reports and the baseline (dataset input, context ``eval``)
go into the model's training run, or into a new eval-only run when the model has none (a base model);
with ``gate.genai_view`` (default on) the cases also go to MLflow's evaluation view, in a run nested under
that one (:mod:`ech0.eval.genai_view`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ech0.context import Context
from ech0.errors import UserError
from ech0.eval.subject import Subject, load_subject, resolve_ref

REPORT_JSON = "regression_report.json"
REPORT_MD = "regression_report.md"
TABLE_FILE = "eval/regression_cases.json"


@dataclass
class Report:
    """The outcome of one evaluation (``data`` is what regression_report.json holds)."""

    passed: bool
    reasons: list[str]
    report_path: Path
    markdown_path: Path
    aggregates: dict
    data: dict = field(repr=False)
    run_id: str | None = None  # the MLflow run the verdict was logged into (None: not logged)
    genai_view: dict | None = None  # the evaluation-view runs (gate.genai_view): ech0.eval.genai_view.log_views


def output_settings(cfg) -> dict:
    """The settings that change a model's outputs (they key the champion's cache)."""
    return {"max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size,
            "seed": cfg.seed}


def compose_config(overrides: list[str] | None = None, **fields):
    """conf/eval.yaml with Hydra ``overrides``, then ``fields`` (dotted keys; None leaves a key as composed).

    A bad override raises :class:`UserError` with one line, before torch is imported."""
    from omegaconf import OmegaConf

    from ech0.config import compose

    cfg = compose("eval", list(overrides or []))
    OmegaConf.set_struct(cfg, False)
    for k, v in fields.items():
        if v is not None:
            OmegaConf.update(cfg, k, v, merge=False)
    return cfg


def _reporter(quiet: bool):
    if quiet:
        return lambda msg: None
    return lambda msg: print(f"eval: {msg}", file=sys.stderr, flush=True)


def _report_dir(ctx: Context, cfg, subject: Subject, report_dir) -> Path:
    if report_dir or cfg.report_dir:
        return Path(report_dir or cfg.report_dir)
    if subject.local_run_dir is not None:
        return subject.local_run_dir / "reports"
    return ctx.home / "reports" / "eval" / subject.label


def _report_data(cfg, model_ref, subject: Subject, base, agg: dict, results: list[dict], champ: dict,
                 verdict: tuple[bool, list[str]], timing: dict) -> dict:
    """What regression_report.json holds."""
    from omegaconf import OmegaConf

    from ech0.io import utc_now

    return {
        "schema": 1,
        "created_at": utc_now(),
        "model": {"ref": str(model_ref), "kind": subject.kind, "label": subject.label, "run_id": subject.run_id,
                  **subject.info},
        "baseline": {"path": str(base.path), "name": base.name, "sha256": base.sha256, "cases": len(base.cases)},
        "settings": {**output_settings(cfg), "chat_template": getattr(subject.tokenizer, "chat_template", None),
                     "generation": "greedy" if subject.pyfunc is None else "pyfunc.predict"},
        "gate": OmegaConf.to_container(cfg.gate, resolve=True),
        "verdict": {"passed": verdict[0], "reasons": verdict[1]},
        "aggregates": agg,
        "champion": champ,
        "timing": timing,
        "cases": results,
    }


def evaluate(ctx: Context, model_ref: str | Path, baseline: str | Path | None = None, *,
             overrides: list[str] | None = None, cfg=None, log: bool | None = None,
             report_dir: str | Path | None = None, quiet: bool = False) -> Report:
    """Evaluate ``model_ref`` on ``baseline`` (default: the shipped one), decide, write reports, log to MLflow.

    ``overrides`` are Hydra overrides of conf/eval.yaml (``["gate.min_pass_rate=0.9"]``); ``cfg`` a
    composed config instead. Where things live (home, store, registry name) comes from ``ctx``, not
    from ``cfg``. ``log=False`` skips MLflow (reports are still written). Never exits: user errors
    raise :class:`UserError`; a failed gate is ``report.passed == False``.
    """
    from ech0.eval import DEFAULT_BASELINE, champion, report as report_mod
    from ech0.eval.cases import load_baseline
    from ech0.eval.gate import decide
    from ech0.eval.safety import Scanner
    from ech0.eval.scoring import score_cases

    cfg = compose_config(overrides) if cfg is None else cfg
    say = _reporter(quiet)
    started = time.time()
    base = load_baseline(baseline or cfg.baseline or DEFAULT_BASELINE)  # bad input fails before any model loads
    scanner = Scanner(list(cfg.safety.blocklist), secrets=cfg.safety.secrets, pii=cfg.safety.pii)
    if cfg.max_new_tokens < 1 or cfg.batch_size < 1:
        raise UserError("max_new_tokens and batch_size must be at least 1")
    resolve_ref(ctx, model_ref)  # a wrong path fails now, before torch loads
    import torch

    torch.manual_seed(cfg.seed)
    say(f"loading {model_ref}")
    subject = load_subject(ctx, model_ref)
    say(f"{len(base.cases)} cases from {base.path} (sha256 {base.sha256[:12]})")
    results, agg, timing = score_cases(subject, base, cfg, scanner)
    say(f"pass rate {agg['pass_rate']:.3f}, mean score {agg['mean_score']:.3f}, "
        f"safety flags {agg['safety_flags']} ({timing['cases_per_sec']} cases/s)")
    champ = champion.compare(ctx, cfg, subject, base, output_settings(cfg),
                             lambda s: score_cases(s, base, cfg, scanner), say=say)
    champ_results = champ.pop("results", None)  # the champion's answers: for the genai view, not the report
    passed, reasons = decide(agg, cfg.gate, champ)
    if champ.get("status") == "error":
        passed, reasons = False, reasons + [f"champion comparison failed: {champ['error']}"]
    untrained = None
    if cfg.gate.get("compare_base"):
        from ech0.eval.margins import margins, score_base

        say("the untrained base on the same cases (gate.compare_base)")
        untrained = score_base(ctx, subject, lambda s: score_cases(s, base, cfg, scanner), cfg.gate)
        if untrained["status"] == "compared":
            untrained["margins"] = margins(agg, untrained, cfg.gate)
            m = untrained["margins"]["pass_rate"]
            say(f"pass rate: candidate {m['candidate']:.3f} ({m['candidate_margin']:+.3f}), base {m['base']:.3f} "
                f"({-m['base_margin']:+.3f}) against gate.min_pass_rate {m['threshold']}; the base "
                f"{'PASSES: these cases do not measure the fine-tune' if untrained['verdict']['passed'] else 'fails'}")
        else:
            say(f"base comparison unavailable: {untrained['error']}")
    timing["total_seconds"] = round(time.time() - started, 2)
    data = _report_data(cfg, model_ref, subject, base, agg, results, champ, (passed, reasons), timing)
    if untrained is not None:
        data["base_model"] = untrained
    json_path, md_path = report_mod.write(data, _report_dir(ctx, cfg, subject, report_dir), REPORT_JSON, REPORT_MD)
    run_id = view = None
    if cfg.tracking.enabled if log is None else log:
        run_id = _log_mlflow(ctx, cfg, subject, base, data, results, json_path, md_path, say)
        if cfg.gate.get("genai_view", False):
            view = _genai_view(ctx, run_id, subject, base, results, data, champ_results, scanner, say,
                              bool(cfg.gate.get("genai_view_checks", False)))
    say(f"report {json_path}")
    return Report(passed, reasons, json_path, md_path, agg, data, run_id, view)


def _genai_view(ctx: Context, run_id: str, subject: Subject, base, results: list[dict], data: dict,
                champ_results, scanner, say, checks: bool = False) -> dict | None:
    """The cases in MLflow's evaluation view, under the verdict's run. A view that fails is said and tagged,
    never a change of the verdict (already decided and logged)."""
    from ech0 import tracking
    from ech0.eval.genai_view import log_views

    try:
        view = log_views(ctx, run_id, subject, base, results, data, champ_results, scanner, say, checks)
    except Exception as e:  # MLflow's evaluation harness: an old server, a store error
        why = f"{type(e).__name__}: {scanner.redact(str(e))[:300]}"
        say(f"genai view not logged ({why})")
        tracking.attach(ctx, run_id).set_tags({"ech0.eval.genai_view": f"failed: {why}"})
        return None
    c = view["candidate"]
    tracking.attach(ctx, run_id).set_tags({"ech0.eval.genai_view": c["run_id"]})
    say(f"genai view: run {c['run_id']}, {c['logged']}/{c['records']} records in {c['seconds']}s"
        + (f"; champion's run {view['champion']['run_id']}" if view["champion"] else ""))
    return view


def _metrics(data: dict) -> dict:
    agg = data["aggregates"]
    metrics = {"eval/pass_rate": agg["pass_rate"], "eval/mean_score": agg["mean_score"],
               "eval/safety_flags": agg["safety_flags"], "eval/gate_passed": int(data["verdict"]["passed"]),
               "eval/cases": agg["cases"]}
    if agg["reference_loss"] is not None:
        metrics["eval/reference_loss"] = agg["reference_loss"]
    untrained = data.get("base_model") or {}
    if untrained.get("status") == "compared":  # gate.compare_base: the same measures for the untrained base
        metrics.update({f"eval/base_{k}": v for k, v in untrained["aggregates"].items()
                        if k in ("pass_rate", "mean_score", "reference_loss") and v is not None})
    return metrics


def _case_table(results: list[dict]):
    """The per-case table the UI's evaluation view compares across runs (texts already redacted)."""
    import pandas as pd

    return pd.DataFrame({
        "id": [r["id"] for r in results], "tags": [",".join(r["tags"]) for r in results],
        "prompt": [r["prompt"] for r in results], "reference": [r["reference"] for r in results],
        "output": [r["output"] for r in results], "passed": [r["passed"] for r in results],
        "score": [r["score"] for r in results], "loss": [r["loss"] for r in results],
        "failed_checks": ["; ".join(f"{c['check']}: {c['detail']}" for c in r["checks"] if not c["passed"])
                          for r in results],
        "safety_flags": [len(r["safety_flags"]) for r in results]})


def _log_mlflow(ctx: Context, cfg, subject: Subject, base, data: dict, results: list[dict], json_path: Path,
                md_path: Path, say) -> str:
    """Into the model's training run when the store has it, else into a new eval-only run."""
    from mlflow.exceptions import MlflowException

    from ech0 import tracking

    verdict = data["verdict"]
    tags = {"ech0.eval.gate_passed": str(verdict["passed"]).lower(), "ech0.eval.baseline": base.name,
            "ech0.eval.baseline_sha256": base.sha256, "ech0.eval.report": str(json_path),
            "ech0.eval.reasons": ("; ".join(verdict["reasons"]) or "-")[:4900]}
    metrics, table = _metrics(data), _case_table(results)

    def log_into(logger) -> None:
        logger.log_metrics(metrics, step=0)
        logger.set_tags(tags)
        logger.log_table(table, TABLE_FILE)
        logger.log_artifact(json_path, "eval")
        logger.log_artifact(md_path, "eval")
        logger.log_dataset(base.frame(), f"{base.name}-baseline", str(base.path), base.sha256, "eval")

    if subject.run_id:
        try:
            logger = tracking.attach(ctx, subject.run_id)
        except MlflowException:
            say(f"run {subject.run_id} is not in {ctx.tracking_uri}; logging an eval-only run")
        else:
            log_into(logger)
            say(f"logged into training run {subject.run_id}")
            return subject.run_id
    with tracking.start(ctx, cfg.tracking.experiment, run_name=f"eval-{subject.label}",
                        tags={"ech0.kind": "eval", "ech0.eval.model": subject.ref,
                              **({"ech0.eval.candidate_run_id": subject.run_id} if subject.run_id else {})}) as tr:
        log_into(tracking.attach(ctx, tr.run_id))
    say(f"logged eval-only run {tr.run_id}")
    return tr.run_id
