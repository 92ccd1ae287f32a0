"""The data CLI: ``import``, ``validate``, ``verify``.

    python -m ech0.data import --input legacy.json --tag crypto
    python -m ech0.data validate --input crypto --stage clean --max-tokens 2048 --min-quality 0.25
    python -m ech0.data validate --input crypto --stage processed --dedupe --fail-on-secrets
    python -m ech0.data verify metadata/crypto.processed.manifest.json

``main(argv)`` is what ``ech0 data ...`` calls. Heavy libraries (numpy, tokenizers, transformers)
are imported only when a command runs, so ``--help`` is instant. Exit codes: 0 ok, 1 verification
failed, 2 user error (one line on stderr), 3 secrets found with ``--fail-on-secrets``.
"""

from __future__ import annotations

import argparse
import sys

from ech0.errors import UserError, cli_errors


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ech0 data", description="Data hygiene: import, validate, verify.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{import,validate,verify}")

    i = sub.add_parser("import", help="legacy JSON/JSONL -> ECH0_HOME/data/raw/<name>.jsonl (canonical schema)")
    i.add_argument("--input", required=True, help="a JSON array, JSONL, or concatenated JSON objects")
    i.add_argument("--name", help="dataset name (default: the input file's stem)")
    i.add_argument("--tag", action="append", default=[], help="tag added to every row (repeatable)")
    i.add_argument("--map", action="append", default=[], metavar="FIELD=KEY",
                   help="override shape detection, e.g. --map prompt=question --map completion=answer "
                        "(KEY may be dotted or joined with +)")
    i.add_argument("--max-line-bytes", type=int, default=None, help="longest line read (default 1 MiB)")
    i.add_argument("--no-progress", action="store_true")

    v = sub.add_parser("validate", help="check, redact, filter, dedupe -> ECH0_HOME/data/<stage>/<name>.jsonl")
    v.add_argument("--input", required=True, help="a JSONL file, or a dataset name from the previous stage")
    v.add_argument("--stage", choices=["clean", "processed"], default="clean")
    v.add_argument("--name", help="dataset name (default: the input file's stem)")
    v.add_argument("--max-tokens", type=int, default=None, help="reject rows over this many tokens")
    v.add_argument("--min-quality", type=float, default=None,
                   help="reject rows whose quality_score is below this (null scores pass)")
    v.add_argument("--tokenizer", default=None,
                   help="tokenizer dir/file or hub id (default: the configured base model's)")
    v.add_argument("--exact-tokens", action="store_true",
                   help="tokenize every row (exact token statistics); by default rows whose UTF-8 length "
                        "proves they fit --max-tokens skip the tokenizer")
    v.add_argument("--dedupe", action="store_true", help="remove exact and near duplicates")
    v.add_argument("--no-near-dedupe", action="store_true", help="with --dedupe: exact duplicates only")
    v.add_argument("--threshold", type=float, default=0.8, help="near-duplicate Jaccard threshold (0.8)")
    v.add_argument("--fail-on-secrets", action="store_true",
                   help="exit 3 without writing anything if any row contains a secret")
    v.add_argument("--no-redact-pii", action="store_true", help="keep e-mails, phones, ... as they are")
    v.add_argument("--max-line-bytes", type=int, default=None, help="longest line read (default 1 MiB)")
    v.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: CPU count for inputs over 8 MiB, else 1)")
    v.add_argument("--no-progress", action="store_true")

    f = sub.add_parser("verify", help="re-hash a manifest's files and its parent chain")
    f.add_argument("manifest", help="a manifest path, or NAME.STAGE (e.g. crypto.processed)")
    return p


def print_summary(man: dict, out=None) -> None:
    out = out or sys.stdout
    c = man["counts"]
    w = out.write
    w(f"ech0 data {man['command']} [{man['stage']}] {man['name']}: {man['input']['path']} "
      f"({man['input']['format']}) -> {man['output']['path']}\n")
    rows = [("read", c["read"]), ("kept", c["kept"]), ("rejected", c["rejected"])]
    for k, v in rows:
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


@cli_errors
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "import":
        from ech0.data.importers import run_import
        from ech0.data.reader import DEFAULT_MAX_LINE_BYTES

        man = run_import(args.input, name=args.name, tags=args.tag, maps=args.map,
                         max_line_bytes=args.max_line_bytes or DEFAULT_MAX_LINE_BYTES,
                         progress=False if args.no_progress else None)
        print_summary(man)
        return 0
    if args.cmd == "validate":
        from ech0.data.reader import DEFAULT_MAX_LINE_BYTES
        from ech0.data.stage import ValidateOptions, run_validate

        if args.workers is not None and args.workers < 1:
            raise UserError(f"--workers {args.workers}: expected 1 or more")
        opts = ValidateOptions(
            input=args.input, stage=args.stage, name=args.name, max_tokens=args.max_tokens,
            min_quality=args.min_quality, dedupe=args.dedupe, near_dedupe=not args.no_near_dedupe,
            threshold=args.threshold, fail_on_secrets=args.fail_on_secrets, redact_pii=not args.no_redact_pii,
            tokenizer=args.tokenizer, exact_tokens=args.exact_tokens, max_line_bytes=args.max_line_bytes or DEFAULT_MAX_LINE_BYTES,
            workers=args.workers, progress=False if args.no_progress else None,
        )
        man = run_validate(opts)
        print_summary(man)
        return 0
    if args.cmd == "verify":
        from pathlib import Path

        from ech0.data import manifest as mf

        target = Path(args.manifest)
        if not target.exists() and "/" not in args.manifest and args.manifest.count(".") == 1:
            target = mf.manifest_path(*args.manifest.split("."))
        results, failures = mf.check(target)
        for r in results:
            print(f"  {'ok  ' if r['ok'] else 'FAIL'}  {r['check']:<40} {r['detail']}")
        if failures:
            raise mf.VerifyFailed(f"{target}: verification failed: {failures[0]}"
                                  + (f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""))
        print(f"verified: {target} (chain of {len(mf.chain(target))}; dataset digest {mf.dataset_digest(target)})")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
