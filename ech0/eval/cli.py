"""``python -m ech0.eval`` = ``ech0 eval``: run regression cases against a model; the gate decides.

    python -m ech0.eval --model-dir models/<run_id> [--baseline cases.jsonl] [KEY=VALUE ...]

Exit 0: gate passed, 1: gate failed (reasons printed), 2: usage or input error (one line, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys

from ech0.errors import UserError, cli_errors


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


def _config(args):
    from ech0.eval.evaluate import compose_config

    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise UserError(f"unexpected argument {bad[0]!r}; overrides are KEY=VALUE (see --help)")
    cfg = compose_config(args.overrides, model_dir=args.model_dir, baseline=args.baseline,
                         max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, report_dir=args.report_dir,
                         **{"tracking.enabled": False if args.no_track else None,
                            "gate.champion.enabled": False if args.no_champion else None})
    if not cfg.model_dir:
        raise UserError("no model: pass --model-dir models/<run_id> (or a HF dir, runs:/..., models:/...)")
    return cfg


def _verdict_text(model: str, report) -> str:
    agg = report.aggregates
    loss = "n/a" if agg["reference_loss"] is None else f"{agg['reference_loss']:.3f}"
    extra = f"; weight-0 cases {agg['ungated']['passed']}/{agg['ungated']['cases']}" if "ungated" in agg else ""
    lines = [f"\n  model      {model}",
             f"  cases      {agg['passed']}/{agg['cases']} passed{extra} (pass rate {agg['pass_rate']:.3f}, "
             f"mean score {agg['mean_score']:.3f}, reference loss {loss})",
             f"  safety     {agg['safety_flags']} flag(s)", f"  report     {report.report_path}",
             f"  gate       {'PASSED' if report.passed else 'FAILED'}"]
    return "\n".join(lines + [f"    - {r}" for r in report.reasons])


def _verdict_json(report) -> str:
    agg = report.aggregates
    return json.dumps({"passed": report.passed, "reasons": report.reasons, "report": str(report.report_path),
                       **{k: agg[k] for k in ("pass_rate", "mean_score", "reference_loss", "safety_flags")}})


@cli_errors
def main(argv: list[str] | None = None) -> int:
    """0: gate passed, 1: gate failed; a user error prints one line and exits 2."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    cfg = _config(args)
    from ech0.cli_common import quiet_libraries
    from ech0.context import Context
    from ech0.eval.evaluate import evaluate

    quiet_libraries()
    report = evaluate(Context.from_config(cfg), cfg.model_dir, cfg=cfg)
    print(_verdict_json(report) if args.json else _verdict_text(cfg.model_dir, report))
    return 0 if report.passed else 1
