"""``ech0 registry`` (also ``python -m ech0.registry``, and the seed's ``python scripts/model_registry.py``,
which forwards here): argparse over ech0.registry's functions, with the command's Context built once."""

from __future__ import annotations

import argparse
import json
import sys

from ech0.errors import UserError, cli_errors, mlflow_refusal

COMMANDS = "{register,list,promote,rollback,history,package,export,verify}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ech0 registry", description="MLflow Model Registry: versions, aliases "
                                "(stages), promotion history, packages.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", default=None, help="registered model name (default: $ECH0_REGISTRY_NAME or ech0)")
    common.add_argument("--home", default=None, help="ech0's folder (default: $ECH0_HOME, else the current folder)")
    common.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///$ECH0_HOME/mlflow.db)")
    moves = argparse.ArgumentParser(add_help=False)
    moves.add_argument("--no-stage-mirror", dest="mirror_stages", action="store_false",
                       help="do not mirror the move into MLflow's deprecated stage field (default: mirror)")
    moves.add_argument("--lock-timeout", type=float, default=120.0, help="seconds to wait for the registry lock")
    sub = p.add_subparsers(dest="cmd", required=True, metavar=COMMANDS)

    r = sub.add_parser("register", parents=[common], help="create a version from a run's logged model")
    r.add_argument("--run-id", help="the training run (default: the --run-dir folder's name)")
    r.add_argument("--run-dir", help="ECH0_HOME/models/<run_id> (default: the run's ech0.run_dir tag)")
    r.add_argument("--base-model", help="base model recorded on the version (default: the run's ech0.base_model)")
    r.add_argument("--config", help="config file to record and hash (default: RUN_DIR/config.yaml)")
    r.add_argument("--datasets", nargs="+", metavar="D", help="dataset files to hash (default: the run's inputs)")
    r.add_argument("--eval-report", help="regression report JSON (default: the run's eval/* metrics, "
                                         "else RUN_DIR/reports/regression_report.json)")
    r.add_argument("--score", type=float, help="score to record (default: the report's / eval/mean_score)")
    r.add_argument("--description", help="version description (default: a generated one)")
    r.add_argument("--best", action="store_true", help="register the run's best logged model (its checkpoints "
                   "and final model) by --best-metric, not the final one")
    r.add_argument("--best-metric", default="eval/loss", help="the metric --best ranks by (default: eval/loss, "
                   "the held-out loss)")
    r.add_argument("--best-mode", choices=("min", "max"), default="min", help="min: lower is better (default)")
    r.add_argument("--json", action="store_true", help="print the version as JSON")

    ls = sub.add_parser("list", parents=[common], help="versions with aliases, score, gate, smoke, run id")
    ls.add_argument("--json", action="store_true")

    pr = sub.add_parser("promote", parents=[common, moves], help="point a stage's alias at a version")
    pr.add_argument("--run-id", help="promote the newest version of this run")
    pr.add_argument("--version", help="promote this version number")
    pr.add_argument("--stage", default="production", help="production | staging (an alias: models:/NAME@STAGE)")
    pr.add_argument("--force", action="store_true", help="promote even if the gate failed or never ran")
    pr.add_argument("--reason", default="", help="why (required with --force; recorded in the history)")

    rb = sub.add_parser("rollback", parents=[common, moves], help="move a stage back to its previous version")
    rb.add_argument("--stage", default="production")
    rb.add_argument("--to-version", help="an earlier version of that stage (default: the one before)")
    rb.add_argument("--reason", default="", help="recorded in the history")

    h = sub.add_parser("history", parents=[common, moves], help="the promotion history; exit 1 if inconsistent")
    h.add_argument("--stage", help="only this stage")
    h.add_argument("--repair", action="store_true", help="make the aliases agree with the history")
    h.add_argument("--json", action="store_true")

    pk = sub.add_parser("package", parents=[common], help="a self-contained, hashed model directory")
    src = pk.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", help="package a run folder (no tracking store needed)")
    src.add_argument("--version", help="package this registered version")
    src.add_argument("--alias", help="package the version an alias points at (e.g. production)")
    pk.add_argument("--dest", required=True, help="destination folder, inside --root")
    pk.add_argument("--root", help="the folder --dest must stay inside (default: HOME/packages)")
    pk.add_argument("--force", action="store_true", help="replace an existing destination")

    ex = sub.add_parser("export", parents=[common], help="a standalone Hugging Face folder: the LoRA merged into "
                        "its base (loads without peft)")
    src = ex.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", help="export a run folder (no tracking store needed)")
    src.add_argument("--version", help="export this registered version")
    src.add_argument("--alias", help="export the version an alias points at (e.g. production)")
    ex.add_argument("--merged", action="store_true", help="merge the adapter into its full-precision base "
                    "(required: the one export form)")
    ex.add_argument("--dest", required=True, help="the folder to write (must not exist unless --force)")
    ex.add_argument("--format", default="hf", help="hf (the only one; GGUF: see the README)")
    ex.add_argument("--force", action="store_true", help="replace an existing export at --dest")

    v = sub.add_parser("verify", help="re-hash a package against its manifest (exit 1 on any difference)")
    v.add_argument("dir")
    return p


def _quiet() -> None:
    from ech0.cli_common import quiet_libraries

    quiet_libraries()
    import logging

    import mlflow  # mlflow sets its loggers' levels on import; quiet them after that

    logging.getLogger(mlflow.__name__).setLevel(logging.ERROR)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except Exception as e:  # MLflow's own errors (store unreachable, refused request): one line, no traceback
        if type(e).__module__.startswith("mlflow"):
            line = mlflow_refusal(e)  # a 401/403 no function explained: still who and why, in one line
            if line is None:
                line = f"MLflow: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
            raise UserError(line) from None
        raise


def _run(args) -> None:
    if args.cmd == "verify":
        from ech0.registry.package import verify

        problems = verify(args.dir)
        for line in problems:
            print(line)
        print(f"{args.dir}: " + ("OK" if not problems else f"{len(problems)} problem(s)"))
        raise SystemExit(1 if problems else 0)
    _quiet()
    from ech0.context import Context
    from ech0.registry import history as hist, store

    ctx = Context.from_env(home=args.home, tracking_uri=args.tracking_uri, registry_name=args.name)
    name = ctx.registry_name
    if args.cmd == "register":
        mv = store.register(ctx, args.run_id, run_dir=args.run_dir, base_model=args.base_model, config=args.config,
                            datasets=args.datasets, eval_report=args.eval_report, score=args.score,
                            description=args.description, best=args.best, best_metric=args.best_metric,
                            best_mode=args.best_mode)
        if args.json:
            print(json.dumps({"name": mv.name, "version": mv.version, "run_id": mv.run_id, "tags": mv.tags}, indent=2))
        else:
            t = mv.tags or {}
            best = f" ({t['ech0.best_metric']} {t['ech0.best_value']}, the best)" if "ech0.best_metric" in t else ""
            print(f"registered {mv.name} version {mv.version} from run {mv.run_id}, {t.get('ech0.logged_model', 'model')}"
                  f" at step {t.get('ech0.step', '?')}{best}: gate {t.get('ech0.gate')}"
                  f", score {t.get('ech0.score', '-')} ({t.get('ech0.gate_source')})")
    elif args.cmd == "list":
        rows = store.table(store.client(ctx), name)
        print(json.dumps(rows, indent=2) if args.json else store.format_table(rows))
    elif args.cmd == "promote":
        move = hist.promote(ctx, version=args.version, run_id=args.run_id, stage=args.stage, force=args.force,
                            reason=args.reason, mirror_stages=args.mirror_stages, lock_timeout=args.lock_timeout)
        _print_move(move)
    elif args.cmd == "rollback":
        move = hist.rollback(ctx, stage=args.stage, to_version=args.to_version, reason=args.reason,
                             mirror_stages=args.mirror_stages, lock_timeout=args.lock_timeout)
        _print_move(move)
    elif args.cmd == "history":
        stage = store.check_stage(args.stage) if args.stage else None
        evts, problems = hist.history(ctx, repair=args.repair, mirror_stages=args.mirror_stages)
        evts = [e for e in evts if stage is None or e.stage == stage]
        if args.json:
            print(json.dumps({"events": [e.__dict__ for e in evts], "problems": problems}, indent=2))
        else:
            for e in evts:
                flag = " FORCED" if e.forced else ""
                print(f"#{e.seq:<4} {e.at}  {e.stage:<10} {e.action:<8} v{e.from_version or '-'} -> v{e.to_version}"
                      f"{flag}  {e.who}  {e.reason}")
            if not evts:
                print("(no promotions yet)")
            for line in problems:
                print(f"! {line}")
        raise SystemExit(1 if any(not p.startswith("repaired:") for p in problems) else 0)
    elif args.cmd == "package":
        from ech0.registry.package import package

        out = package(ctx, args.dest, run_dir=args.run_dir, version=args.version, alias=args.alias, root=args.root,
                      force=args.force)
        print(f"packaged -> {out}  (check it: ech0 registry verify {out})")
    elif args.cmd == "export":
        from ech0.registry.export import export

        if not args.merged:
            raise UserError("export writes the merged model only: pass --merged")
        out = export(ctx, args.dest, run_dir=args.run_dir, version=args.version, alias=args.alias, force=args.force,
                     fmt=args.format)
        print(f"exported -> {out}  (check it: cd {out} && sha256sum -c sha256sums.txt)")


def _print_move(move) -> None:
    for r in move.repaired:
        print(f"repaired: {r}")
    print(move.line())
    if move.stage_mirrored is False:
        print("note: the legacy stage field was not updated (this MLflow has no stages)", file=sys.stderr)


if __name__ == "__main__":
    main()
