"""The data CLI: ``import``, ``validate``, ``verify``; ``ech0 data ...`` and ``python -m ech0.data ...`` run it.

    python -m ech0.data import --input legacy.json --tag crypto
    python -m ech0.data import --input chats.json --flatten      # chats as prompt/completion, not messages
    python -m ech0.data validate --input crypto --stage clean --max-tokens 2048 --min-quality 0.25
    python -m ech0.data validate --input crypto --stage processed --dedupe --fail-on-secrets model=mistral-7b
    python -m ech0.data verify metadata/crypto.processed.manifest.json

Options compose through Hydra like every stage's: the root ``conf/data.yaml`` on the typed schema
``ech0.config.DataStageConfig``. The seed's flags are kept and each one sets one config key
(``--max-tokens N`` -> ``max_tokens=N``, ``--dedupe`` -> ``dedupe.enabled=true``; ``--help`` names
them); ``KEY=VALUE`` overrides may follow (``model=mistral-7b`` picks the chat template every row must
render through and the tokenizer that measures ``--max-tokens``; a flag wins over an override of the same key). A bad flag, override or value
prints one line and exits 2 before any heavy import. ``main(argv)`` is what ``ech0 data ...``
calls; numpy, tokenizers and transformers are imported only when a command runs, so ``--help`` is
instant. Exit codes: 0 ok, 1 verification failed, 2 user error (one line on stderr), 3 secrets found
with ``--fail-on-secrets``.
"""

from __future__ import annotations

import argparse
import sys

from ech0.errors import UserError, cli_errors

OVERRIDES_HELP = ("KEY=VALUE overrides of conf/data.yaml may follow the flags, e.g. model=mistral-7b "
                  "dedupe.threshold=0.9 paths.home=DIR")


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one-line user errors (exit 2, no usage block)."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message} (see --help)")


def _flag(p: argparse.ArgumentParser, flag: str, key: str, **kw) -> None:
    """A flag that sets config ``key``; left unset (None) it leaves the config's value alone."""
    if kw.get("action") not in ("store_true", "store_false"):
        kw.setdefault("metavar", flag.lstrip("-").replace("-", "_").upper())
    p.add_argument(flag, dest=key, default=None, **kw)


def _common(p: argparse.ArgumentParser, what: str) -> None:
    _flag(p, "--input", "input", help=f"{what} (key: input)")
    _flag(p, "--name", "name", help="dataset name (default: the input file's stem)")
    _flag(p, "--max-line-bytes", "max_line_bytes", type=int, help="longest line read (default 1 MiB)")
    _flag(p, "--no-progress", "progress", action="store_false", help="no progress bar (key: progress=false)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ech0 data", description="Data hygiene: import, validate, verify. Flags set keys of "
                                              "conf/data.yaml; KEY=VALUE overrides may follow them.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{import,validate,verify}")

    i = sub.add_parser("import", epilog=OVERRIDES_HELP,
                       help="legacy JSON/JSONL -> ECH0_HOME/data/raw/<name>.jsonl (canonical schema)")
    _common(i, "a JSON array, JSONL, or concatenated JSON objects")
    _flag(i, "--tag", "tags", action="append", help="tag added to every row (repeatable)")
    _flag(i, "--map", "map", action="append", metavar="FIELD=KEY",
          help="override shape detection, e.g. --map prompt=question --map completion=answer "
               "(KEY may be dotted or joined with +)")
    _flag(i, "--flatten", "flatten", action="store_true",
          help="import chats (messages, conversations) as prompt/completion: the last assistant turn is the "
               "completion, the turns before it the prompt (default: keep every turn as messages)")

    v = sub.add_parser("validate", epilog=OVERRIDES_HELP,
                       help="check, redact, filter, dedupe -> ECH0_HOME/data/<stage>/<name>.jsonl")
    _common(v, "a JSONL file, or a dataset name from the previous stage")
    _flag(v, "--stage", "stage", choices=["clean", "processed"], help="clean (default) or processed")
    _flag(v, "--max-tokens", "max_tokens", type=int,
          help="reject rows whose conversation, as the model's chat template renders it, has more tokens")
    _flag(v, "--max-turns", "max_turns", type=int, help="reject conversations with more turns (default 64)")
    _flag(v, "--min-quality", "min_quality", type=float,
          help="reject rows whose quality_score is below this (null scores pass)")
    _flag(v, "--tokenizer", "tokenizer",
          help="tokenizer dir or hub id whose chat template renders every row (default: the configured "
               "model's, key: model=...)")
    _flag(v, "--exact-tokens", "exact_tokens", action="store_true",
          help="tokenize every row (exact token statistics); by default rows whose UTF-8 length "
               "proves they fit --max-tokens skip the tokenizer")
    _flag(v, "--dedupe", "dedupe.enabled", action="store_true", help="remove exact and near duplicates")
    _flag(v, "--no-near-dedupe", "dedupe.near", action="store_false", help="with --dedupe: exact duplicates only")
    _flag(v, "--threshold", "dedupe.threshold", type=float, help="near-duplicate Jaccard threshold (0.8)")
    _flag(v, "--fail-on-secrets", "fail_on_secrets", action="store_true",
          help="exit 3 without writing anything if any row contains a secret")
    _flag(v, "--no-redact-pii", "redact.pii", action="store_false", help="keep e-mails, phones, ... as they are")
    _flag(v, "--workers", "workers", type=int,
          help="worker processes (default: CPU count for inputs over 8 MiB, else 1)")

    f = sub.add_parser("verify", epilog=OVERRIDES_HELP, help="re-hash a manifest's files and its parent chain")
    f.add_argument("manifest", help="a manifest path, or NAME.STAGE (e.g. crypto.processed)")
    return p


def parse(argv: list[str]) -> tuple[str, dict, list[str], argparse.Namespace]:
    """argv -> (command, {config key: flag value} for the flags given, overrides, all arguments)."""
    args, overrides = _parser().parse_known_args(argv)
    for o in overrides:
        if "=" not in o or o.startswith("-"):
            raise UserError(f"ech0 data {args.cmd}: unrecognized argument {o!r}: neither a flag nor a KEY=VALUE "
                            f"override (see --help)")
    skip = {"cmd", "manifest"}
    flags = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    return args.cmd, flags, overrides, args


def compose_config(flags: dict, overrides: list[str]):
    """``conf/data.yaml`` with ``overrides``, then each flag's key set (type-checked by the schema)."""
    from omegaconf import OmegaConf

    from ech0.config import compose

    cfg = compose("data", overrides)
    for key, value in flags.items():
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except Exception as e:  # ValidationError: a value the schema refuses
            raise UserError(f"{key}={value!r}: {str(e).splitlines()[0]}") from None
    return cfg


def validate_options(cfg):
    """The composed config -> :class:`ech0.data.stage.ValidateOptions`."""
    from omegaconf import OmegaConf

    from ech0.data.stage import ValidateOptions

    return ValidateOptions(
        input=cfg.input, stage=cfg.stage, name=cfg.name, max_tokens=cfg.max_tokens, min_quality=cfg.min_quality,
        max_turns=cfg.max_turns, chat_template=cfg.chat_template,
        dedupe=cfg.dedupe.enabled, near_dedupe=cfg.dedupe.near, threshold=cfg.dedupe.threshold,
        num_perm=cfg.dedupe.num_perm, ngram=cfg.dedupe.ngram, fail_on_secrets=cfg.fail_on_secrets,
        redact_secrets=cfg.redact.secrets, redact_pii=cfg.redact.pii, tokenizer=cfg.tokenizer,
        model=cfg.model.name_or_path, model_config=OmegaConf.to_container(cfg.model, resolve=True),
        exact_tokens=cfg.exact_tokens, max_line_bytes=cfg.max_line_bytes,
        workers=cfg.workers, progress=cfg.progress,
    )


def print_manifest(man: dict, out=None) -> None:
    """The summary table of one data manifest, ending with the ``read = kept + rejected`` check."""
    out = out or sys.stdout
    c = man["counts"]
    w = out.write
    w(f"ech0 data {man['command']} [{man['stage']}] {man['name']}: {man['input']['path']} "
      f"({man['input']['format']}) -> {man['output']['path']}\n")
    for k, v in (("read", c["read"]), ("kept", c["kept"]), ("rejected", c["rejected"])):
        w(f"  {k:<28}{v:>10}\n")
    for k, v in man.get("reject_reasons", {}).items():
        w(f"    {k:<26}{v:>10}\n")
    if man.get("shapes"):
        w("  shapes" + "".join(f"\n    {k:<26}{v:>10}" for k, v in man["shapes"].items()) + "\n")
    red = man.get("redactions") or man.get("redactions_in_rejects") or {}
    if red:
        w("  redactions" + ("" if man.get("redactions") else " (in rejects)") + "\n")
        for k, v in red.items():
            w(f"    {k:<26}{v:>10}\n")
    if man.get("normalizations"):
        w("  normalised" + "".join(f"\n    {k:<26}{v:>10}" for k, v in man["normalizations"].items()) + "\n")
    d = man.get("dedupe")
    if d:
        e = d["exact"]
        w(f"  duplicates (exact)          {e['rows_removed']:>10} rows in {e['clusters']} clusters\n")
        if d.get("near"):
            n = d["near"]
            w(f"  duplicates (near, J>={n['threshold']})  {n['rows_removed']:>7} rows in {n['clusters']} clusters "
              f"(largest {n['largest_cluster']}; {n['candidate_pairs']} candidate pairs)\n")
    t = man.get("tokens")
    if t:
        w(f"  tokens                      mean {t['mean']}, p95 {t['p95']}, max {t['max']} "
          f"({t.get('rows_measured', '?')} rows measured)\n")
    w(f"  output   {man['output']['path']}  sha256 {man['output']['sha256'][:16]}…\n")
    w(f"  rejects  {man['rejects']['path']}\n")
    w(f"  manifest {man.get('_manifest_path')}\n")
    ok = c["read"] == c["kept"] + c["rejected"]
    w(f"  check: read {c['read']} = kept {c['kept']} + rejected {c['rejected']}  {'ok' if ok else 'MISMATCH'}\n")


def run_import_cmd(ctx, cfg) -> int:
    from ech0.data.importers import run_import

    print_manifest(run_import(ctx, cfg.input, name=cfg.name, tags=list(cfg.tags), maps=list(cfg.map),
                              max_line_bytes=cfg.max_line_bytes, progress=cfg.progress, flatten=cfg.flatten))
    return 0


def run_validate_cmd(ctx, cfg) -> int:
    from ech0.data.stage import run_validate

    print_manifest(run_validate(ctx, validate_options(cfg)))
    return 0


def run_verify_cmd(ctx, target_arg: str) -> int:
    from pathlib import Path

    from ech0.data import manifest as mf

    target = Path(target_arg)
    if not target.exists() and "/" not in target_arg and target_arg.count(".") == 1:
        target = mf.manifest_path(ctx, *target_arg.split("."))
    results, failures = mf.check(ctx, target)
    for r in results:
        print(f"  {'ok  ' if r['ok'] else 'FAIL'}  {r['check']:<40} {r['detail']}")
    mf.raise_failures(target, failures)
    print(f"verified: {target} (chain of {len(mf.chain(ctx, target))}; dataset digest {mf.dataset_digest(target)})")
    return 0


@cli_errors
def main(argv: list[str] | None = None) -> int:
    cmd, flags, overrides, args = parse(list(sys.argv[1:] if argv is None else argv))
    cfg = compose_config(flags, overrides)  # every config mistake stops here, before heavy imports
    if cmd != "verify" and not cfg.input:
        raise UserError(f"ech0 data {cmd}: --input is required (a file, or a dataset name)")
    from ech0.cli_common import quiet_libraries
    from ech0.context import Context

    quiet_libraries()
    ctx = Context.from_config(cfg)
    if cmd == "import":
        return run_import_cmd(ctx, cfg)
    if cmd == "validate":
        return run_validate_cmd(ctx, cfg)
    return run_verify_cmd(ctx, args.manifest)


if __name__ == "__main__":
    sys.exit(main())
