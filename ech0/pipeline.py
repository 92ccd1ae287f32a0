"""The hub: data → train → eval gate → register → promote (on pass) → serving smoke, under one parent run.

    python -m ech0.pipeline --mode pipeline --promote-on-pass            # + Hydra overrides for training
    python -m ech0.pipeline --mode pipeline --input legacy_dump.json --promote-on-pass
    python -m ech0.pipeline --mode pipeline --preset full trainer.max_steps=50
    python -m ech0.pipeline --mode pipeline registry.best=true           # register the best checkpoint
    python -m ech0.pipeline --mode train --preset lora
    python -m ech0.pipeline --mode eval --model-dir models/<run_id>

    from ech0.pipeline import run
    result = run(ctx, ["trainer.max_steps=50"], promote_on_pass=True)   # a PipelineResult

``main`` builds one :class:`ech0.context.Context` from the composed training config (so
``paths.home=`` / ``tracking.uri=`` overrides and ``ECH0_HOME`` / ``MLFLOW_TRACKING_URI`` all work) and
every stage gets that same value. Each stage ends with one line saying what it did
(``register: version 1 registered from run …``, ``promote: production -> v1 (was none)``,
``smoke: served …``); a summary closes the run.

With ``--input`` (a legacy dump or raw JSONL, or a file already in ``data/raw`` or ``data/clean``) the
data stage runs first (import → clean → processed with dedupe) and training uses its output.
Each stage's MLflow run nests under the parent pipeline run (the eval verdict goes into the training
run); the parent carries the verdict, the registered version and the smoke result. Work already done
for the same inputs is skipped, not redone: the data stage when its manifests record the same input
bytes and options, training when a finished run has the same fingerprint (config, data bytes, base
weights), registration when that run already has a version. With ``registry.best=true`` the run's best
logged model (by ``registry.best_metric``, default the held-out ``eval/loss``: a checkpoint, or the final
model) is picked after training, and that one is evaluated and registered. A failed stage is named with
its run, the pipeline exits non-zero, and nothing is promoted. Ctrl-C or SIGTERM ends the open runs KILLED and the
training status ``interrupted``; re-running the same command picks up from the last finished stage.
Pipelines started at once on one home all succeed: a second one on the same dataset name waits for the
first's data stage and reuses it, and a dataset is never rewritten while a pipeline trains on it
(:func:`data_stage`; README "Several pipelines at once").
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass, field

from ech0.context import Context
from ech0.errors import UserError, cli_errors, sigterm_as_interrupt


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
    dataset: str | None = None  # the processed dataset trained on, when the data stage ran


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a stage (the message names it)."""


def _stage(name: str, fn, *args, **kwargs):
    """Run one stage; any failure is re-raised naming the stage."""
    print(f"\n== {name} ==", flush=True)
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        raise UserError(f"stage {name} failed: {e}") from None
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(f"stage {name}") from None


def _skipped(name: str, why: str) -> None:
    print(f"\n== {name} == skipped: {why}", flush=True)


def data_stage(ctx: Context, input: str, name: str | None = None, dedupe: str = "near", model: dict | None = None,
               experiment: str = "ech0", hold: contextlib.ExitStack | None = None) -> dict:
    """raw dump (or a raw/clean stage file) → ``data/processed/NAME.jsonl``, logged as a nested MLflow run.

    Skipped when the processed manifest chain verifies, starts from the same input bytes and used the
    same dedupe option. Returns :func:`ech0.data.processed_dataset`'s record.

    Concurrency (:class:`ech0.data.manifest.DatasetLock`): the check and the writes happen under the
    dataset's write lock, so a second pipeline on the same name waits for the first's data stage, then
    reuses what it made (one line says whom it waited for). The rows are then held shared; with ``hold``
    until that stack closes (the pipeline's end), so a pipeline with other input under the same name
    waits to rewrite them until no pipeline trains on them.
    """
    from pathlib import Path

    from ech0.data import manifest as mf
    from ech0.data.stage import check_name, default_name
    from ech0.io import sha256_file

    src = Path(input).expanduser()
    if not src.is_file():
        raise UserError(f"--input {input}: not found; pass a legacy dump / JSONL file")
    src = src.resolve()
    name = check_name(name or default_name(src))
    lock = mf.DatasetLock(ctx, name, f"ech0 pipeline --input {src.name}",
                          say=lambda line: print(f"  {line}", flush=True))
    lock.lock_writes()
    try:
        in_sha = sha256_file(src)
        done = _processed_from(ctx, name, src, in_sha, dedupe)
        if done is not None:
            lock.use()
            print(f"  skipped: {ctx.relative(done['path'])} was already made from {src.name} (sha256 {in_sha[:12]}…) "
                  f"with dedupe={dedupe}", flush=True)
            record = done
        else:
            lock.use(exclusive=True)
            record = _make_dataset(ctx, src, in_sha, name, dedupe, model, experiment)
            lock.share()
        lock.unlock_writes()
    except BaseException:
        lock.release()
        raise
    if hold is None:
        lock.release()
    else:
        hold.callback(lock.release)
    return record


def _make_dataset(ctx: Context, src, in_sha: str, name: str, dedupe: str, model: dict | None, experiment: str) -> dict:
    """Import → clean → processed for ``data_stage`` (the caller holds the dataset's locks)."""
    from ech0 import tracking
    from ech0.data import manifest as mf, processed_dataset
    from ech0.data.cli import print_manifest
    from ech0.data.importers import run_import
    from ech0.data.stage import ValidateOptions, run_validate

    first = next((s for s in ("raw", "clean") if src.parent == ctx.data_dir(s).resolve()), None)
    with tracking.start(ctx, experiment, f"data-{name}", tags={"ech0.kind": "data", "ech0.dataset": name}) as run:
        run.log_params({"data.input": str(src), "data.input_sha256": in_sha, "data.name": name, "data.dedupe": dedupe,
                        "data.first_stage": first or "import"})
        manifests = []
        if first is None:
            manifests.append(run_import(ctx, str(src), name=name, lock=False))
        # rows are checked against the chat template of the model that will train on them
        renders = {"model": model["name_or_path"], "model_config": model} if model else {}
        if first in (None, "raw"):
            manifests.append(run_validate(ctx, ValidateOptions(input=name if first is None else str(src),
                                                               stage="clean", name=name, **renders), lock=False))
        manifests.append(run_validate(ctx, ValidateOptions(input=name if first != "clean" else str(src),
                                                           stage="processed", name=name, dedupe=dedupe != "none",
                                                           near_dedupe=dedupe == "near", **renders), lock=False))
        for man in manifests:
            print_manifest(man)
            stage = man["stage"]
            run.log_metrics({f"{stage}/{k}": v for k, v in man["counts"].items()}, step=0)
            run.log_metrics({f"{stage}/rejected.{k}": v for k, v in man.get("reject_reasons", {}).items()}, step=0)
            run.log_artifact(mf.manifest_path(ctx, name, stage), "manifests")
        record = processed_dataset(ctx, name)
        run.set_tags({"ech0.data_digest": record["digest"], "ech0.data_path": str(record["path"])})
    return record


def _processed_from(ctx: Context, name: str, src, in_sha: str, dedupe: str) -> dict | None:
    """The processed dataset ``name`` if its verified chain starts from ``src``'s bytes with ``dedupe``."""
    from ech0.data import manifest as mf, processed_dataset

    try:
        record = processed_dataset(ctx, name)  # verifies every file of the chain
    except UserError:
        return None
    chain = [mf.load(m) for m in record["chain"]]
    options = chain[0].get("options", {})
    same_dedupe = (dedupe != "none") == bool(options.get("dedupe")) and \
        (dedupe != "near" or bool(options.get("near_dedupe")))
    starts_here = any(m["input"]["sha256"] == in_sha and ctx.resolve(m["input"]["path"]).resolve() == src
                      for m in chain)
    return record if same_dedupe and starts_here else None


def run(ctx: Context, overrides: list[str], *, preset: str = "lora", baseline: str | None = None,
        promote_on_pass: bool = False, smoke: bool = True, force_train: bool = False, input: str | None = None,
        dataset_name: str | None = None, dedupe: str = "near", gate: str | None = None) -> PipelineResult:
    """Every stage against ``ctx``'s store and home; see the module docstring."""
    from ech0 import registry, tracking
    from omegaconf import OmegaConf

    from ech0.config import compose
    from ech0.eval.evaluate import evaluate
    from ech0.io import stamp
    from ech0.train.recipe import find_finished, fit

    cfg = compose("train", [f"+preset={preset}", *overrides])
    with tracking.start(ctx, cfg.tracking.experiment, f"pipeline-{stamp()}",
                        tags={"ech0.kind": "pipeline", "ech0.preset": preset}) as parent, \
            contextlib.ExitStack() as held:  # the dataset stays locked shared until the pipeline ends
        out = PipelineResult(parent.run_id)
        if input:
            record = _stage("data", data_stage, ctx, input, dataset_name, dedupe,
                            OmegaConf.to_container(cfg.model, resolve=True), cfg.tracking.experiment, hold=held)
            out.dataset = str(record["path"])
            parent.set_tags({"ech0.dataset": record["name"], "ech0.data_digest": record["digest"]})
            # the processed file replaces the training data; held-out rows are a content split of it unless
            # an override names an eval file (data=processed has none: the default's is the toy sample's)
            cfg = compose("train", [f"+preset={preset}", "data=processed", f"data.train_file={record['path']}",
                                    f"data.name={record['name']}", *overrides])
        trained = None if force_train else find_finished(cfg, ctx)
        if trained is not None:
            _skipped("train", f"run {trained.run_id} already trained this config, data and base model")
        else:
            trained = _stage("train", fit, cfg, ctx)
            print(f"train: run {trained.run_id}, {trained.steps} steps in {trained.wall_seconds:.0f}s, completion loss "
                  f"{trained.loss_before:.3f} -> {trained.loss_after:.3f} on "
                  f"{'held-out rows' if trained.heldout else 'training rows'}", flush=True)
        out.train_run_id = trained.run_id
        parent.set_tags({"ech0.train_run_id": trained.run_id})
        subject, best = trained.run_dir, cfg.registry
        if best.best:  # the gate judges what gets registered: the run's best logged model, checkpoint or final
            picked = _stage("pick", registry.best_model, ctx, trained.run_id, best.best_metric, best.best_mode)
            print(f"pick: {picked.line()} of run {trained.run_id}", flush=True)
            if picked.kind == "checkpoint":
                subject = picked.model_dir or trained.run_dir / "checkpoints" / f"step-{picked.step:07d}" / "model"
        report = _stage("eval", evaluate, ctx, subject, baseline, overrides=[f"gate={gate}"] if gate else None,
                        report_dir=trained.run_dir / "reports")
        out.gate_passed, out.reasons, out.report = report.passed, list(report.reasons), str(report.report_path)
        agg = report.aggregates
        print(f"eval: gate {'PASSED' if report.passed else 'FAILED'}, {agg['passed']}/{agg['cases']} cases "
              f"(pass rate {agg['pass_rate']:.3f}, mean score {agg['mean_score']:.3f})", flush=True)

        mv = registry.version_of_run(ctx, trained.run_id)
        if mv is not None:  # the same training run is registered once; a re-run reuses its version
            _skipped("register", f"version {mv.version} already holds run {trained.run_id}")
        else:
            mv = _stage("register", registry.register, ctx, trained.run_id, eval_report=report.report_path,
                        score=report.aggregates.get("mean_score"), best=best.best, best_metric=best.best_metric,
                        best_mode=best.best_mode)
            t = mv.tags or {}
            print(f"register: version {mv.version} registered from run {trained.run_id}, "
                  f"{t.get('ech0.logged_model', 'model')} at step {t.get('ech0.step', '?')}", flush=True)
        out.version = str(mv.version)
        if promote_on_pass and report.passed:
            current = registry.alias_version(ctx, mv.name, "production")
            if current is not None and str(current.version) == out.version:
                _skipped("promote", f"version {out.version} already holds production")
            else:
                move = _stage("promote", registry.promote, ctx, version=mv.version, stage="production",
                              reason=f"pipeline {parent.run_id}")
                was = f"v{move.event.from_version}" if move.event and move.event.from_version else "none"
                print(f"promote: {move.stage} -> v{move.version} (was {was})", flush=True)
            out.promoted = True
        if smoke:
            from ech0.smoke import smoke as smoke_check

            uri = f"models:/{mv.name}@production" if out.promoted else f"models:/{mv.name}/{mv.version}"
            checked = _stage("smoke", smoke_check, ctx, uri)
            print(checked.line(), flush=True)
            out.smoke_passed = bool(checked.passed)
        parent.log_metrics({"pipeline/gate_passed": int(report.passed), "pipeline/promoted": int(out.promoted)}, step=0)
        parent.set_tags({"ech0.gate": "passed" if report.passed else "failed", "ech0.registered_version": out.version,
                         "ech0.smoke": {None: "skipped", True: "passed", False: "failed"}[out.smoke_passed]})
    return out


def print_result(r: PipelineResult, ctx: Context) -> None:
    print("\n== summary ==")
    print(f"  pipeline run   {r.run_id}   (training run {r.train_run_id})")
    if r.dataset:
        print(f"  trained on     {r.dataset}")
    print(f"  gate           {'PASSED' if r.gate_passed else 'FAILED'}" + ("" if r.gate_passed else f": {'; '.join(r.reasons)}"))
    print(f"  report         {r.report}")
    print(f"  registered     version {r.version}" + ("  -> alias production" if r.promoted else "  (not promoted)"))
    if r.smoke_passed is not None:
        print(f"  served smoke   {'passed' if r.smoke_passed else 'FAILED'}")
    print("  see it all     " + (f"mlflow ui --backend-store-uri {ctx.tracking_uri}" if ctx.is_local_store
                                  else f"open {ctx.tracking_uri}"))


@cli_errors
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ech0 pipeline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("pipeline", "train", "eval"), default="pipeline")
    ap.add_argument("--preset", default="lora", help="training preset (conf/preset/NAME.yaml)")
    ap.add_argument("--config", dest="preset", help="alias of --preset (the seed's flag)")
    ap.add_argument("--model-dir", help="--mode eval: run folder, HF model folder or MLflow model URI")
    ap.add_argument("--baseline", help="regression cases (default: the shipped baseline)")
    ap.add_argument("--gate", help="gate thresholds (conf/gate/NAME.yaml; default: default)")
    ap.add_argument("--promote-on-pass", action="store_true", help="move alias production to the new version if the gate passes")
    ap.add_argument("--no-smoke", action="store_true", help="skip the `mlflow models serve` smoke check")
    ap.add_argument("--force-train", action="store_true", help="train even when an identical run already finished")
    ap.add_argument("--input", help="run the data stage first on this legacy dump / raw or clean JSONL file")
    ap.add_argument("--name", dest="dataset_name", help="dataset name for --input (default: the file's stem)")
    ap.add_argument("--dedupe", choices=("near", "exact", "none"), default="near",
                    help="duplicate removal in the data stage's processed step (default: near = exact + MinHash)")
    from ech0.cli_common import quiet_libraries
    from ech0.config import compose_or_exit, expand_overrides

    args, overrides = ap.parse_known_args(expand_overrides(list(sys.argv[1:] if argv is None else argv)))

    quiet_libraries()
    if args.mode == "eval":
        if not args.model_dir:
            raise UserError("--mode eval needs --model-dir")
        from ech0.eval.cli import main as eval_main

        return eval_main(["--model-dir", args.model_dir] + (["--baseline", args.baseline] if args.baseline else [])
                         + ([f"gate={args.gate}"] if args.gate else []))
    cfg = compose_or_exit("train", [f"+preset={args.preset}", *overrides])
    if args.mode == "train":
        from ech0.train.cli import main as train_main

        return train_main([f"+preset={args.preset}", *overrides])
    if cfg is None:
        raise UserError("--mode pipeline runs one job: Hydra's -m / --cfg / --help flags belong to `ech0 train`")
    ctx = Context.from_config(cfg)  # one context for every stage: paths.home= and tracking.uri= reach them all
    sigterm_as_interrupt()
    try:
        result = run(ctx, overrides, preset=args.preset, baseline=args.baseline, promote_on_pass=args.promote_on_pass,
                     smoke=not args.no_smoke, force_train=args.force_train, input=args.input,
                     dataset_name=args.dataset_name, dedupe=args.dedupe, gate=args.gate)
    except KeyboardInterrupt as e:
        where = f" during {e}" if isinstance(e, Interrupted) else ""
        print(f"\ninterrupted{where}: the open runs are marked KILLED and no later stage ran; "
              "re-run the same command to continue (finished stages are skipped)", file=sys.stderr)
        return 130
    print_result(result, ctx)
    return 0 if result.gate_passed and result.smoke_passed is not False else 1


if __name__ == "__main__":
    sys.exit(main())
