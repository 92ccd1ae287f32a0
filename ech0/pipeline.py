"""The hub: train → eval gate → register → promote (on pass) → serving smoke, under one parent MLflow run.

    python -m ech0.pipeline --mode pipeline --promote-on-pass            # + Hydra overrides for training
    python -m ech0.pipeline --mode pipeline --preset full trainer.max_steps=50
    python -m ech0.pipeline --mode train --preset lora
    python -m ech0.pipeline --mode eval --model-dir models/<run_id>

Each stage's MLflow run nests under the parent pipeline run (the eval verdict goes into the training
run); the parent carries the verdict, the registered version and the smoke result. A training job whose
fingerprint (config, data bytes, base weights) matches a finished run is skipped, not redone. A failed
stage is named with its run, the pipeline exits non-zero, and nothing is promoted.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

from ech0.errors import UserError, cli_errors


@dataclass
class PipelineResult:
    run_id: str  # the parent pipeline run
    train_run_id: str | None = None
    gate_passed: bool | None = None
    reasons: list = field(default_factory=list)
    report: str | None = None
    version: str | None = None
    promoted: bool = False
    smoke_passed: bool | None = None


def _stage(name: str, fn, *args, **kwargs):
    """Run one stage; any failure is re-raised naming the stage."""
    print(f"\n== {name} ==", flush=True)
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        raise UserError(f"stage {name} failed: {e}") from None


def store_has(c, name: str) -> bool:
    from ech0.registry import store

    try:
        store.registered_model(c, name)
        return True
    except UserError:
        return False


def run(overrides: list[str], *, preset: str = "lora", baseline: str | None = None, promote_on_pass: bool = False,
        smoke: bool = True, force_train: bool = False) -> PipelineResult:
    from ech0 import tracking
    from ech0.cli_common import compose
    from ech0.eval.runner import evaluate
    from ech0.registry import promote, register
    from ech0.trainer.fit import find_finished, fit

    cfg = compose("train", [f"+preset={preset}", *overrides])
    with tracking.start(cfg.tracking.uri, cfg.tracking.experiment, f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}",
                        tags={"ech0.kind": "pipeline", "ech0.preset": preset}) as parent:
        out = PipelineResult(parent.run_id)
        trained = None if force_train else find_finished(cfg)
        if trained is not None:
            print(f"\n== train == skipped: run {trained.run_id} already trained this config, data and base model")
        else:
            trained = _stage("train", fit, cfg)
        out.train_run_id = trained.run_id
        parent.set_tags({"ech0.train_run_id": trained.run_id})
        report = _stage("eval", evaluate, trained.run_dir, baseline)
        out.gate_passed, out.reasons, out.report = report.passed, list(report.reasons), str(report.report_path)
        from ech0.registry import store

        c, name = store.client(cfg.tracking.uri), store.default_name()
        existing = store.versions(c, name, run_id=trained.run_id) if store_has(c, name) else []
        if existing:  # the same training run is registered once; a re-run reuses its version
            mv = existing[0]
            print(f"\n== register == skipped: version {mv.version} already holds run {trained.run_id}")
        else:
            mv = _stage("register", register, trained.run_id, eval_report=report.report_path,
                        score=report.aggregates.get("mean_score"))
        out.version = str(mv.version)
        if promote_on_pass and report.passed:
            current = (c.get_registered_model(name).aliases or {}).get("production")
            if str(current) == out.version:
                print(f"\n== promote == skipped: version {out.version} already holds production")
            else:
                _stage("promote", promote, version=mv.version, stage="production", reason=f"pipeline {parent.run_id}")
            out.promoted = True
        if smoke:
            from ech0.serving import smoke as smoke_check

            uri = f"models:/{mv.name}@production" if out.promoted else f"models:/{mv.name}/{mv.version}"
            out.smoke_passed = bool(_stage("smoke", smoke_check, uri).passed)
        parent.log_metrics({"pipeline/gate_passed": int(report.passed), "pipeline/promoted": int(out.promoted)}, step=0)
        parent.set_tags({"ech0.gate": "passed" if report.passed else "failed", "ech0.registered_version": out.version,
                         "ech0.smoke": {None: "skipped", True: "passed", False: "failed"}[out.smoke_passed]})
    return out


def print_result(r: PipelineResult, tracking_uri: str) -> None:
    print("\n== summary ==")
    print(f"  pipeline run   {r.run_id}   (training run {r.train_run_id})")
    print(f"  gate           {'PASSED' if r.gate_passed else 'FAILED'}" + ("" if r.gate_passed else f": {'; '.join(r.reasons)}"))
    print(f"  report         {r.report}")
    print(f"  registered     version {r.version}" + ("  -> alias production" if r.promoted else "  (not promoted)"))
    if r.smoke_passed is not None:
        print(f"  served smoke   {'passed' if r.smoke_passed else 'FAILED'}")
    print(f"  see it all     mlflow ui --backend-store-uri {tracking_uri}")


@cli_errors
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ech0 pipeline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("pipeline", "train", "eval"), default="pipeline")
    ap.add_argument("--preset", default="lora", help="training preset (conf/preset/NAME.yaml)")
    ap.add_argument("--config", dest="preset", help="alias of --preset (the seed's flag)")
    ap.add_argument("--model-dir", help="--mode eval: run folder, HF model folder or MLflow model URI")
    ap.add_argument("--baseline", help="regression cases (default: the shipped baseline)")
    ap.add_argument("--promote-on-pass", action="store_true", help="move alias production to the new version if the gate passes")
    ap.add_argument("--no-smoke", action="store_true", help="skip the `mlflow models serve` smoke check")
    ap.add_argument("--force-train", action="store_true", help="train even when an identical run already finished")
    from ech0.train import expand_overrides

    args, overrides = ap.parse_known_args(expand_overrides(list(sys.argv[1:] if argv is None else argv)))
    from ech0 import tracking
    from ech0.cli_common import compose_or_exit, quiet_libraries

    quiet_libraries()
    if args.mode == "eval":
        if not args.model_dir:
            raise UserError("--mode eval needs --model-dir")
        from ech0.eval.runner import main as eval_main

        return eval_main(["--model-dir", args.model_dir] + (["--baseline", args.baseline] if args.baseline else []))
    compose_or_exit("train", [f"+preset={args.preset}", *overrides])
    if args.mode == "train":
        from ech0.train import main as train_main

        return train_main([f"+preset={args.preset}", *overrides])
    result = run(overrides, preset=args.preset, baseline=args.baseline, promote_on_pass=args.promote_on_pass,
                 smoke=not args.no_smoke, force_train=args.force_train)
    print_result(result, tracking.tracking_uri())
    return 0 if result.gate_passed and result.smoke_passed is not False else 1


if __name__ == "__main__":
    sys.exit(main())
