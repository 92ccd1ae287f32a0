"""Eval throughput: the batched runner vs a naive one-``generate``-per-case loop, same model, same cases.

    python -m benchmarks.eval_throughput --cases 64 --out benchmarks/results/eval_throughput.json
    python -m benchmarks.eval_throughput --cases 64 --model-dir models/<run_id> --batch-size 32
    python -m benchmarks.eval_throughput --cases 64 --model smollm2-135m --baseline ech0/eval/baselines/persona.jsonl \
        --out benchmarks/results/eval_throughput_smollm2.json      # the real model, its content gate's cases

Cases are the shipped baseline's, cycled to ``--cases``. The model defaults to the newest finished
run under ``$ECH0_HOME/models`` (else the untrained base, whose answers are much shorter); ``--model
NAME`` takes a conf/model preset's base instead (``smollm2-135m``: SmolLM2-135M-Instruct). Both
paths generate greedily with the same per-case ``max_new_tokens``; ``outputs_identical`` is the share
of cases where the batched output equals the one-at-a-time output. Each path is timed ``--repeats``
times after one warm-up; the best run counts. Writes JSON and prints a markdown table row.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path


def _default_model(ctx) -> str:
    from ech0.models import ensure_base_model

    runs = [p.parent.parent for p in ctx.models_dir.glob("*/model/ech0_model.json")]
    if runs:
        return str(max(runs, key=lambda p: p.stat().st_mtime))
    return str(ensure_base_model(ctx.base_models, verbose=False))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.eval_throughput", description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=64)
    p.add_argument("--out", required=True)
    p.add_argument("--model-dir", default=None)
    p.add_argument("--model", default=None, help="a conf/model preset (e.g. smollm2-135m): its base model")
    p.add_argument("--baseline", default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)

    import torch

    from ech0.cli_common import quiet_libraries
    from ech0.context import Context
    from ech0.eval import DEFAULT_BASELINE
    from ech0.eval.cases import load_baseline
    from ech0.eval.scoring import generate_outputs, reference_losses
    from ech0.eval.subject import load_subject
    from ech0.generation import generate

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_baseline(args.baseline or DEFAULT_BASELINE)
    cases = [base.cases[i % len(base.cases)] for i in range(args.cases)]
    ctx = Context.from_env()
    if args.model:
        from ech0.config import compose
        from ech0.models import resolve_config

        model_ref = resolve_config(compose("train", [f"model={args.model}"]).model, ctx.base_models, verbose=False)
    else:
        model_ref = args.model_dir or _default_model(ctx)
    subject = load_subject(ctx, model_ref)
    mnt = args.max_new_tokens

    def batched():
        return generate_outputs(subject, cases, mnt, args.batch_size)

    def naive():
        return [generate(subject.model, subject.tokenizer, [c.request],
                         max_new_tokens=c.max_new_tokens or mnt, batch_size=1)[0] for c in cases]

    def best(fn):
        fn()  # warm-up
        times, out = [], None
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        return min(times), out

    t_batched, out_b = best(batched)
    t_naive, out_n = best(naive)
    t = time.perf_counter()
    reference_losses(subject.model, subject.tokenizer, cases, args.batch_size)
    t_loss = time.perf_counter() - t
    new_tokens = sum(len(subject.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in out_b)
    result = {
        "model": model_ref, "cases": args.cases, "batch_size": args.batch_size, "max_new_tokens": mnt,
        "repeats": args.repeats, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "baseline": str(args.baseline or DEFAULT_BASELINE),
        "batched_seconds": round(t_batched, 3), "naive_seconds": round(t_naive, 3),
        "cases_per_sec": {"batched": round(args.cases / t_batched, 2), "naive": round(args.cases / t_naive, 2)},
        "speedup_vs_naive": round(t_naive / t_batched, 2),
        "outputs_identical": round(sum(a == b for a, b in zip(out_b, out_n)) / len(cases), 4),
        "new_tokens_per_case": round(new_tokens / len(cases), 1),
        "reference_loss_seconds": round(t_loss, 3),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from ech0.io import atomic_write_json

    atomic_write_json(out, result)
    print(json.dumps(result, indent=2))
    print("\n| cases | batch | batched cases/s | naive cases/s | speedup | identical outputs |\n|---|---|---|---|---|---|")
    print(f"| {args.cases} | {args.batch_size} | {result['cases_per_sec']['batched']} | {result['cases_per_sec']['naive']} "
          f"| {result['speedup_vs_naive']}x | {result['outputs_identical']:.0%} |")


if __name__ == "__main__":
    sys.exit(main())
