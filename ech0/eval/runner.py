"""Evaluate a model on regression cases; the gate decides. Exit 0 passed, 1 failed (reasons printed), 2 usage/input error.

    python -m ech0.eval.runner --model-dir models/<run_id> --baseline ech0/eval/baselines/regression.jsonl
    python -m ech0.eval.runner --model-dir models:/ech0@production gate.min_pass_rate=0.9
    ech0 eval --model-dir .cache/base_models/tiny-llama-<hash>        # a plain Hugging Face model dir

From Python (the pipeline)::

    from ech0.eval.runner import evaluate
    report = evaluate("models/<run_id>")            # shipped baseline, conf/eval.yaml settings
    report.passed, report.reasons, report.report_path

The model is a run dir (``models/<run_id>`` or its ``model/`` folder), a plain HF model dir, or an
MLflow URI (``runs:/<id>/model``, ``models:/ech0@production``). Outputs: ``regression_report.json``
and ``.md`` under ``<run dir>/reports/`` (else ``$ECH0_HOME/reports/eval/<model>/``); in MLflow, the
metrics ``eval/*``, the per-case table, the reports and the baseline (dataset input, context ``eval``)
go into the model's training run, or into a new eval-only run when the model has none (a base model).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ech0.errors import UserError, cli_errors

REPORT_JSON = "regression_report.json"
REPORT_MD = "regression_report.md"
TABLE_FILE = "eval/regression_cases.json"
MLFLOW_SCHEMES = ("runs:/", "models:/")


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


@dataclass
class Subject:
    """A loaded model and how to reach it: generation, reference loss, where its verdict goes."""

    ref: str
    kind: str  # run | hf | mlflow
    label: str
    run_id: str | None = None  # its training run, when it has one
    model: Any = None  # torch model (None: a foreign pyfunc without one)
    tokenizer: Any = None
    template: str | None = None
    pyfunc: Any = None  # set when generation must go through the pyfunc's own predict()
    local_run_dir: Path | None = None
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- loading


def _default_template() -> str:
    from ech0.config import DataConfig

    return DataConfig.prompt_template


def _load_error(ref: str, e: BaseException) -> UserError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return UserError(f"{ref}: could not load the model ({type(e).__name__}: {first[:300]})")


META_FILE = "ech0_model.json"  # = ech0.mlflow_model.META_FILE (not imported: it pulls in mlflow.pyfunc)


def resolve_ref(ref: str) -> tuple[str, Path | None]:
    """(kind, folder) for a model reference, checked without loading anything: ``run``, ``hf`` or ``mlflow``."""
    from ech0 import paths

    ref = str(ref)
    if ref.startswith(MLFLOW_SCHEMES):
        return "mlflow", None
    if "://" in ref or ref.startswith(("models:", "runs:")):
        raise UserError(f"{ref}: unsupported URI; use runs:/<run_id>/model or models:/<name>@<alias> (or /<version>)")
    p = Path(ref).expanduser()
    if not p.exists() and not p.is_absolute() and (paths.home() / p).exists():
        p = paths.home() / p
    if not p.is_dir():
        raise UserError(f"{ref}: no such model folder; pass a run dir (models/<run_id>), a Hugging Face model "
                        f"dir, or an MLflow URI (runs:/<run_id>/model, models:/ech0@production)")
    p = p.resolve()
    if (p / "model" / META_FILE).is_file():
        return "run", p / "model"
    if (p / META_FILE).is_file():
        return "run", p
    if (p / "config.json").is_file():
        return "hf", p
    raise UserError(f"{ref}: neither a run dir (model/{META_FILE}) nor a Hugging Face model dir (config.json)")


def load_subject(ref: str, prompt_template: str | None = None, tracking_uri: str | None = None) -> Subject:
    """Resolve and load ``ref``; any problem the user can fix raises :class:`UserError`."""
    ref = str(ref)
    kind, p = resolve_ref(ref)
    if kind == "mlflow":
        return _load_mlflow(ref, prompt_template, tracking_uri)
    if kind == "run":
        from ech0.mlflow_model import load_trained

        try:
            model, tok, meta = load_trained(p)
        except Exception as e:  # missing base model, corrupt weights ...
            raise _load_error(ref, e) from None
        run_id = meta.get("run_id") or p.parent.name
        return Subject(ref, "run", run_id, run_id, model, tok, prompt_template or meta["prompt_template"],
                       local_run_dir=p.parent, info={"model_dir": str(p), "base_model": meta.get("base_model")})
    from ech0.models import load_model, load_tokenizer

    try:
        model, tok = load_model(str(p)), load_tokenizer(str(p))
    except Exception as e:
        raise _load_error(ref, e) from None
    model.eval()
    return Subject(ref, "hf", p.name, None, model, tok, prompt_template or _default_template(), info={"model_dir": str(p)})


def _load_mlflow(ref: str, prompt_template: str | None, tracking_uri: str | None) -> Subject:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ech0 import paths, tracking
    from ech0.mlflow_model import Ech0Generator

    uri = tracking.tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    info: dict = {"uri": ref}
    run_id = None
    try:
        if ref.startswith("runs:/"):
            run_id = ref[len("runs:/"):].split("/", 1)[0]
        else:
            client = MlflowClient(uri)
            spec = ref[len("models:/"):]
            if "@" in spec:
                name, alias = spec.split("@", 1)
                mv = client.get_model_version_by_alias(name, alias)
            else:
                name, _, version = spec.partition("/")
                mv = client.get_model_version(name, version)
            run_id = mv.run_id
            info.update(model_name=mv.name, version=str(mv.version))
            ref_pinned = f"models:/{mv.name}/{mv.version}"  # an alias may move while we load
            info["pinned"] = ref_pinned
        loaded = mlflow.pyfunc.load_model(info.get("pinned", ref))
    except MlflowException as e:
        raise _load_error(ref, e) from None
    except OSError as e:
        raise _load_error(ref, e) from None
    try:
        pm = loaded.unwrap_python_model()
    except Exception:
        pm = None
    label = f"{info['model_name']}-v{info['version']}" if "version" in info else (run_id or "mlflow-model")
    local = paths.run_dir(run_id) if run_id and (paths.run_dir(run_id) / "status.json").exists() else None
    subject = Subject(ref, "mlflow", label, run_id, local_run_dir=local, info=info)
    if pm is not None and all(hasattr(pm, a) for a in ("model", "tokenizer", "meta")):
        subject.model, subject.tokenizer = pm.model, pm.tokenizer
        subject.template = prompt_template or pm.meta.get("prompt_template") or _default_template()
    # Our generator's predict() is generate() itself: call it directly (batched, per-case lengths).
    # Anything else (a wrapper, a foreign pyfunc) is asked through its own predict().
    if not (isinstance(pm, Ech0Generator) and type(pm).predict is Ech0Generator.predict):
        subject.pyfunc = loaded
    return subject


# ---------------------------------------------------------------------------------------- running


def generate_outputs(subject: Subject, cases, max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy outputs in case order; cases are grouped by their max_new_tokens, each group batched."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(cases):
        groups[c.max_new_tokens or max_new_tokens].append(i)
    out = [""] * len(cases)
    for n, idx in sorted(groups.items()):
        prompts = [cases[i].prompt for i in idx]
        if subject.pyfunc is None:
            from ech0.generation import generate

            texts = generate(subject.model, subject.tokenizer, prompts, subject.template, max_new_tokens=n,
                             batch_size=batch_size)
        else:
            import pandas as pd

            texts = subject.pyfunc.predict(pd.DataFrame({"prompt": prompts}), params={"max_new_tokens": n})
            texts = list(texts.iloc[:, 0] if hasattr(texts, "iloc") and getattr(texts, "ndim", 1) == 2 else texts)
        for i, t in zip(idx, texts):
            out[i] = str(t)
    return out


def reference_losses(model, tokenizer, template: str, cases, batch_size: int) -> dict[int, tuple[float, int]]:
    """Teacher-forced loss of each case's reference completion: ``{case index: (summed loss, tokens)}``.

    Encoded exactly as in training (``encode_row``: BOS + template + completion + EOS, loss on the
    completion only), batched by length with right padding masked out.
    """
    import torch

    from ech0.trainer.data import collate, encode_row

    limit = int(getattr(getattr(model, "config", None), "max_position_embeddings", 2048) or 2048)
    examples = {}
    for i, c in enumerate(cases):
        if c.reference is not None:
            ex = encode_row({"prompt": c.prompt, "completion": c.reference}, tokenizer, template, limit, "right")
            if not isinstance(ex, str):
                examples[i] = ex
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = sorted(examples, key=lambda i: len(examples[i]))
    out: dict[int, tuple[float, int]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                b = collate([examples[i] for i in idx], pad)
                logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
                labels = b["labels"][:, 1:].to(device)
                ce = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels,
                                                       ignore_index=-100, reduction="none")
                sums, counts = ce.sum(1).tolist(), (labels != -100).sum(1).tolist()
                for row, i in enumerate(idx):
                    out[i] = (float(sums[row]), int(counts[row]))
    finally:
        model.train(was_training)
    return out


def score_cases(subject: Subject, baseline, cfg, scanner) -> tuple[list[dict], dict, dict]:
    """Run every case: (per-case results, aggregates, timings). Outputs in results are redacted."""
    from ech0.eval.checks import run_check

    cases = baseline.cases
    t0 = time.perf_counter()
    outputs = generate_outputs(subject, cases, cfg.max_new_tokens, cfg.batch_size)
    t1 = time.perf_counter()
    losses = (reference_losses(subject.model, subject.tokenizer, subject.template, cases, cfg.batch_size)
              if subject.model is not None else {})
    t2 = time.perf_counter()
    results, flags_by_rule = [], Counter()
    for i, (case, output) in enumerate(zip(cases, outputs)):
        loss = losses[i][0] / max(losses[i][1], 1) if i in losses else None
        checks = []
        for check in case.checks:
            ok, score, detail = run_check(check, output, case.reference, loss)
            checks.append({"type": check.type, "check": scanner.redact(check.describe()), "passed": ok,
                           "score": round(score, 4), "detail": detail})
        flags, redacted = scanner(output)
        flags_by_rule.update(f"{f['kind']}:{f['rule']}" for f in flags)
        score = sum(c["score"] for c in checks) / len(checks)
        results.append({"id": case.id, "line": case.line, "tags": case.tags, "weight": case.weight,
                        "prompt": scanner.redact(case.prompt), "reference": scanner.redact(case.reference),
                        "output": redacted, "passed": all(c["passed"] for c in checks), "score": round(score, 4),
                        "loss": None if loss is None else round(loss, 4), "checks": checks, "safety_flags": flags})
    agg = aggregate(results, losses)
    agg["safety_by_rule"] = dict(flags_by_rule)
    timing = {"generate_seconds": round(t1 - t0, 3), "loss_seconds": round(t2 - t1, 3),
              "cases_per_sec": round(len(cases) / max(t1 - t0, 1e-9), 2)}
    return results, agg, timing


def aggregate(results: list[dict], losses: dict) -> dict:
    total_w = sum(r["weight"] for r in results)
    if total_w <= 0:
        raise UserError("every case has weight 0; at least one case must count")

    def stats(rows):
        """Weighted rates over cases with weight > 0; weight-0 cases are counted apart (reported, not gating)."""
        gating = [r for r in rows if r["weight"] > 0]
        w = sum(r["weight"] for r in gating)
        out = {"cases": len(gating), "passed": sum(r["passed"] for r in gating),
               "pass_rate": round(sum(r["weight"] for r in gating if r["passed"]) / w, 4) if w else None,
               "mean_score": round(sum(r["weight"] * r["score"] for r in gating) / w, 4) if w else None}
        if len(gating) < len(rows):
            out["ungated"] = {"cases": len(rows) - len(gating), "passed": sum(r["passed"] for r in rows if r["weight"] <= 0)}
        return out

    by_tag: dict[str, list] = defaultdict(list)
    for r in results:
        for t in r["tags"]:
            by_tag[t].append(r)
    tokens = sum(n for _, n in losses.values())
    return {**stats(results),
            "reference_loss": round(sum(s for s, _ in losses.values()) / tokens, 4) if tokens else None,
            "safety_flags": sum(len(r["safety_flags"]) for r in results),
            "by_tag": {t: stats(rows) for t, rows in sorted(by_tag.items())}}


# ---------------------------------------------------------------------------------------- the stage


def _settings(cfg) -> dict:
    return {"max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size,
            "prompt_template": cfg.prompt_template, "seed": cfg.seed}


def _compose(overrides: list[str] | None, **fields):
    from omegaconf import OmegaConf

    from ech0.eval.config import compose_eval

    cfg = compose_eval(list(overrides or []))
    OmegaConf.set_struct(cfg, False)
    for k, v in fields.items():
        if v is not None:
            OmegaConf.update(cfg, k, v, merge=False)
    return cfg


def evaluate(model_ref: str | Path, baseline: str | Path | None = None, *, overrides: list[str] | None = None,
             cfg=None, log: bool | None = None, report_dir: str | Path | None = None, quiet: bool = False) -> Report:
    """Evaluate ``model_ref`` on ``baseline`` (default: the shipped one), decide, write reports, log to MLflow.

    ``overrides`` are Hydra overrides of conf/eval.yaml (``["gate.min_pass_rate=0.9"]``); ``cfg`` a
    composed config instead. ``log=False`` skips MLflow (reports are still written). Never exits:
    user errors raise :class:`UserError`; a failed gate is ``report.passed == False``.
    """
    import os

    from ech0 import paths
    from ech0.eval import DEFAULT_BASELINE, champion as champion_mod, report as report_mod
    from ech0.eval.cases import load_baseline
    from ech0.eval.gate import decide
    from ech0.eval.safety import Scanner

    if cfg is None:
        cfg = _compose(overrides)
    os.environ["ECH0_HOME"] = str(Path(cfg.paths.home).expanduser().resolve())
    say = (lambda *a: None) if quiet else (lambda msg: print(f"eval: {msg}", file=sys.stderr, flush=True))
    started = time.time()
    base = load_baseline(baseline or cfg.baseline or DEFAULT_BASELINE)  # bad input fails before any model loads
    scanner = Scanner(list(cfg.safety.blocklist), secrets=cfg.safety.secrets, pii=cfg.safety.pii)
    if cfg.max_new_tokens < 1 or cfg.batch_size < 1:
        raise UserError("max_new_tokens and batch_size must be at least 1")
    resolve_ref(str(model_ref))  # a wrong path fails now, before torch loads
    import torch

    torch.manual_seed(cfg.seed)
    say(f"loading {model_ref}")
    subject = load_subject(str(model_ref), cfg.prompt_template, cfg.tracking.uri)
    say(f"{len(base.cases)} cases from {base.path} (sha256 {base.sha256[:12]})")
    results, agg, timing = score_cases(subject, base, cfg, scanner)
    say(f"pass rate {agg['pass_rate']:.3f}, mean score {agg['mean_score']:.3f}, "
        f"safety flags {agg['safety_flags']} ({timing['cases_per_sec']} cases/s)")
    generation = "greedy" if subject.pyfunc is None else "pyfunc.predict"
    champ = champion_mod.compare(cfg, subject, base, _settings(cfg), lambda s: score_cases(s, base, cfg, scanner),
                                 say=say)
    passed, reasons = decide(agg, cfg.gate, champ)
    if champ.get("status") == "error":
        passed, reasons = False, reasons + [f"champion comparison failed: {champ['error']}"]
    from omegaconf import OmegaConf

    data = {
        "schema": 1,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"ref": str(model_ref), "kind": subject.kind, "label": subject.label, "run_id": subject.run_id,
                  **subject.info},
        "baseline": {"path": str(base.path), "name": base.name, "sha256": base.sha256, "cases": len(base.cases)},
        "settings": {**_settings(cfg), "template": subject.template,
                     "generation": generation},
        "gate": OmegaConf.to_container(cfg.gate, resolve=True),
        "verdict": {"passed": passed, "reasons": reasons},
        "aggregates": agg,
        "champion": champ,
        "timing": {**timing, "total_seconds": round(time.time() - started, 2)},
        "cases": results,
    }
    if report_dir or cfg.report_dir:
        out_dir = Path(report_dir or cfg.report_dir)
    elif subject.local_run_dir is not None:
        out_dir = subject.local_run_dir / "reports"
    else:
        out_dir = paths.home() / "reports" / "eval" / subject.label
    json_path, md_path = report_mod.write(data, out_dir, REPORT_JSON, REPORT_MD)
    run_id = None
    if (cfg.tracking.enabled if log is None else log):
        run_id = _log_mlflow(cfg, subject, base, data, results, json_path, md_path, say)
    say(f"report {json_path}")
    return Report(passed, reasons, json_path, md_path, agg, data, run_id)


def _log_mlflow(cfg, subject: Subject, base, data: dict, results: list[dict], json_path: Path, md_path: Path,
                say) -> str:
    """Into the model's training run when the store has it, else into a new eval-only run."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from ech0 import tracking

    agg = data["aggregates"]
    metrics = {"eval/pass_rate": agg["pass_rate"], "eval/mean_score": agg["mean_score"],
               "eval/safety_flags": agg["safety_flags"], "eval/gate_passed": int(data["verdict"]["passed"]),
               "eval/cases": agg["cases"]}
    if agg["reference_loss"] is not None:
        metrics["eval/reference_loss"] = agg["reference_loss"]
    tags = {"ech0.eval.gate_passed": str(data["verdict"]["passed"]).lower(), "ech0.eval.baseline": base.name,
            "ech0.eval.baseline_sha256": base.sha256, "ech0.eval.report": str(json_path),
            "ech0.eval.reasons": ("; ".join(data["verdict"]["reasons"]) or "-")[:4900]}
    table = pd.DataFrame({
        "id": [r["id"] for r in results], "tags": [",".join(r["tags"]) for r in results],
        "prompt": [r["prompt"] for r in results], "reference": [r["reference"] for r in results],
        "output": [r["output"] for r in results], "passed": [r["passed"] for r in results],
        "score": [r["score"] for r in results], "loss": [r["loss"] for r in results],
        "failed_checks": ["; ".join(f"{c['check']}: {c['detail']}" for c in r["checks"] if not c["passed"])
                          for r in results],
        "safety_flags": [len(r["safety_flags"]) for r in results]})

    def log_into(logger) -> None:
        logger.log_metrics(metrics, step=0)
        logger.set_tags(tags)
        logger.log_table(table, TABLE_FILE)
        logger.log_artifact(json_path, "eval")
        logger.log_artifact(md_path, "eval")
        logger.log_dataset(base.frame(), f"{base.name}-baseline", str(base.path), base.sha256, "eval")

    if subject.run_id:
        try:
            logger = tracking.attach(subject.run_id, cfg.tracking.uri)
        except MlflowException:
            say(f"run {subject.run_id} is not in {tracking.tracking_uri(cfg.tracking.uri)}; logging an eval-only run")
        else:
            log_into(logger)
            say(f"logged into training run {subject.run_id}")
            return subject.run_id
    with tracking.start(cfg.tracking.uri, cfg.tracking.experiment, run_name=f"eval-{subject.label}",
                        tags={"ech0.kind": "eval", "ech0.eval.model": subject.ref,
                              **({"ech0.eval.candidate_run_id": subject.run_id} if subject.run_id else {})}) as tr:
        log_into(tracking.attach(tr.run_id, cfg.tracking.uri))
    say(f"logged eval-only run {tr.run_id}")
    return tr.run_id


# ---------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ech0 eval", description="Run regression cases against a model; the gate decides. "
        "Exit 0: gate passed, 1: gate failed (reasons printed), 2: usage or input error.",
        epilog="Trailing KEY=VALUE arguments override conf/eval.yaml, e.g. gate.min_pass_rate=0.9 "
               "tracking.enabled=false safety.blocklist='[forbidden phrase]'. See the README's 'Evaluation gate' section.")
    p.add_argument("--model-dir", "--model", dest="model_dir",
                   help="run dir (models/<run_id>), HF model dir, runs:/<id>/model or models:/ech0@production")
    p.add_argument("--baseline", help="JSONL cases (default: ech0/eval/baselines/regression.jsonl)")
    p.add_argument("--max-new-tokens", type=int, help="default per case (a case's own value wins)")
    p.add_argument("--batch-size", type=int, help="prompts per generate() call")
    p.add_argument("--report-dir", help="where the reports go (default: <run dir>/reports)")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--no-champion", action="store_true", help="skip the comparison with the production model")
    p.add_argument("--json", action="store_true", help="print the aggregates and verdict as JSON on stdout")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return p


@cli_errors
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise UserError(f"unexpected argument {bad[0]!r}; overrides are KEY=VALUE (see --help)")
    cfg = _compose(args.overrides, model_dir=args.model_dir, baseline=args.baseline,
                   max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, report_dir=args.report_dir)
    if args.no_track:
        cfg.tracking.enabled = False
    if args.no_champion:
        cfg.gate.champion.enabled = False
    if not cfg.model_dir:
        raise UserError("no model: pass --model-dir models/<run_id> (or a HF dir, runs:/..., models:/...)")
    from ech0.cli_common import quiet_libraries

    quiet_libraries()
    report = evaluate(cfg.model_dir, cfg=cfg)
    agg = report.aggregates
    if args.json:
        print(json.dumps({"passed": report.passed, "reasons": report.reasons, "report": str(report.report_path),
                          **{k: agg[k] for k in ("pass_rate", "mean_score", "reference_loss", "safety_flags")}}))
    else:
        loss = "n/a" if agg["reference_loss"] is None else f"{agg['reference_loss']:.3f}"
        extra = f"; weight-0 cases {agg['ungated']['passed']}/{agg['ungated']['cases']}" if "ungated" in agg else ""
        print(f"\n  model      {cfg.model_dir}\n  cases      {agg['passed']}/{agg['cases']} passed{extra}"
              f" (pass rate {agg['pass_rate']:.3f}, mean score {agg['mean_score']:.3f}, reference loss {loss})"
              f"\n  safety     {agg['safety_flags']} flag(s)\n  report     {report.report_path}")
        print(f"  gate       {'PASSED' if report.passed else 'FAILED'}")
        for r in report.reasons:
            print(f"    - {r}")
    raise SystemExit(0 if report.passed else 1)


if __name__ == "__main__":
    main()
