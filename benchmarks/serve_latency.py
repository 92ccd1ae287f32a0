"""Serving latency and throughput of ``mlflow models serve`` at 1, 8 and 32 concurrent clients, and its answer to abuse.

    python -m benchmarks.serve_latency --out benchmarks/results/serve_latency.json
    python -m benchmarks.serve_latency --model-dir models/<run_id> --requests 64 --max-tokens 32 --form prompt

The model defaults to the newest finished run under ``$ECH0_HOME/models``; it is packaged with its base
(:func:`ech0.mlflow_model.save_pyfunc`) and served as a real ``mlflow models serve --env-manager local``
(one worker, as ``ech0 smoke`` serves it). Each client sends greedy requests back to back (``--form
chat``: one user turn, ``max_tokens``; ``prompt``: one ``dataframe_split`` prompt) from the shipped eval
prompts, until ``--requests`` have been answered at that concurrency, after one warm-up request.
Reported per concurrency: p50/p95/p99 latency, requests/s and completion tokens/s (chat), and whether
every answer equals the same request's answer alone. Then the oversized requests of issue #15 (a
1 MB prompt, 10,000 prompts, ``max_tokens`` 10^6): status, seconds, and the server's RSS before and
after. The CPU (``lscpu``: model, cores, avx512_bf16) and the load average are recorded: on a shared
machine the latencies are only as quiet as its neighbours. Writes JSON and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ech0.errors import UserError, cli_errors


def cpu_info() -> dict:
    """The CPU as ``lscpu`` names it, and whether it has AVX512-BF16."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return {"model": fields.get("Model name", "unknown"), "cpus": int(fields.get("CPU(s)", os.cpu_count() or 0)),
            "avx512_bf16": "avx512_bf16" in fields.get("Flags", "").split()}


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile by linear interpolation (numpy's default)."""
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def _newest_model(ctx) -> Path:
    """The newest run's ``model/`` folder under ``$ECH0_HOME/models``."""
    runs = [p.parent for p in ctx.models_dir.glob("*/model/ech0_model.json")]
    if not runs:
        raise UserError(f"{ctx.models_dir}: no trained run; train one first (ech0 train +preset=lora) or pass --model-dir")
    return max(runs, key=lambda p: p.stat().st_mtime)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_latency", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/serve_latency.json")
    p.add_argument("--model-dir", default=None, help="a trained model folder (default: the newest run's model/)")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--requests", type=int, default=64, help="requests answered at each concurrency")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--form", choices=("chat", "prompt"), default="chat")
    p.add_argument("--timeout", type=int, default=600, help="the server's --timeout and the model's max_seconds")
    args = p.parse_args(argv)

    import psutil

    from ech0.cli_common import quiet_libraries
    from ech0.context import Context
    from ech0.io import atomic_write_json
    from ech0.mlflow_model import save_pyfunc
    from ech0.model_folder import read_meta
    from ech0.smoke import (_http, chat_body, free_port, golden_prompts, request_body, served_chat, start_server,
                            stop_process, wait_until_up)

    quiet_libraries()
    ctx = Context.from_env()
    model_dir = Path(args.model_dir) if args.model_dir else _newest_model(ctx)
    if not (model_dir / "ech0_model.json").is_file() and (model_dir / "model" / "ech0_model.json").is_file():
        model_dir = model_dir / "model"  # a run folder
    if not (model_dir / "ech0_model.json").is_file():
        raise UserError(f"{model_dir}: not a trained model folder (no ech0_model.json)")
    prompts = golden_prompts(n=16)
    levels = [int(c) for c in args.concurrency.split(",")]

    def body(i: int) -> bytes:
        prompt = prompts[i % len(prompts)]
        return (chat_body([{"role": "user", "content": prompt}], args.max_tokens) if args.form == "chat"
                else request_body([prompt], args.max_tokens))

    def ask(base: str, payload: bytes):
        t = time.perf_counter()
        status, text = _http("POST", f"{base}/invocations", payload, timeout=args.timeout)
        seconds = time.perf_counter() - t
        out = json.loads(text) if status == 200 else None
        ans = (served_chat(out) if args.form == "chat" else out["predictions"]) if out else None
        return status, seconds, ans

    def rss_mb(proc) -> float:
        root = psutil.Process(proc.pid)
        return round(sum(q.memory_info().rss for q in [root, *root.children(recursive=True)]) / 2**20, 1)

    work = Path(tempfile.mkdtemp(prefix="ech0-serve-bench-"))
    save_pyfunc(work / "pkg", model_dir, read_meta(model_dir).get("base_model"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    load_before = os.getloadavg()
    t_start = time.time()
    proc = start_server(str(work / "pkg"), port, work, tracking_uri=ctx.tracking_uri, timeout=args.timeout,
                        model_config={"max_seconds": args.timeout})
    try:
        if not wait_until_up(base, proc, 300):
            raise SystemExit(f"server not up: {(work / 'serve.log').read_text()[-2000:]}")
        startup = round(time.time() - t_start, 1)
        alone = {}
        for i in range(len(prompts)):  # each distinct request alone: the answer the loaded runs must equal
            status, _, alone[i] = ask(base, body(i))
            assert status == 200, alone[i]
        rows = []
        for c in levels:
            ask(base, body(0))  # warm-up
            results: list = [None] * args.requests

            def client(k: int) -> None:
                for i in range(k, args.requests, c):
                    results[i] = ask(base, body(i))

            t = time.perf_counter()
            with ThreadPoolExecutor(c) as pool:
                list(pool.map(client, range(c)))
            wall = time.perf_counter() - t
            ok = [r for r in results if r[0] == 200]
            lat = [r[1] for r in ok]
            tokens = sum(r[2]["usage"]["completion_tokens"] for r in ok) if args.form == "chat" else None
            rows.append({"concurrency": c, "requests": args.requests, "errors": args.requests - len(ok),
                         "p50_s": round(percentile(lat, 50), 3), "p95_s": round(percentile(lat, 95), 3),
                         "p99_s": round(percentile(lat, 99), 3), "requests_per_s": round(len(ok) / wall, 2),
                         "completion_tokens_per_s": round(tokens / wall, 1) if tokens is not None else None,
                         "answers_equal_alone": all(r[2] == alone[i % len(prompts)] for i, r in enumerate(results)
                                                    if r[0] == 200),
                         "wall_s": round(wall, 2), "rss_mb": rss_mb(proc)})
            print(json.dumps(rows[-1]), flush=True)
        rss_before = rss_mb(proc)
        mb = "x" * 2**20
        abuse = {"1 MB prompt": request_body([mb], args.max_tokens),
                 "1 MB chat turn": chat_body([{"role": "user", "content": mb}]),
                 "10,000 prompts": request_body(["What color is snow?"] * 10_000, args.max_tokens),
                 "max_tokens 10^6": chat_body([{"role": "user", "content": "hi"}], 10**6)}
        refused = []
        for label, payload in abuse.items():
            t = time.perf_counter()
            status, _ = _http("POST", f"{base}/invocations", payload, timeout=60)
            refused.append({"request": label, "bytes": len(payload), "status": status,
                            "seconds": round(time.perf_counter() - t, 3)})
        status, _, after = ask(base, body(0))
        oversized = {"requests": refused, "rss_before_mb": rss_before, "rss_after_mb": rss_mb(proc),
                     "answers_after": status == 200 and after == alone[0]}
    finally:
        stop_process(proc)

    import torch

    result = {"model_dir": str(model_dir), "form": args.form, "max_tokens": args.max_tokens, "workers": 1,
              "server_startup_s": startup, "cpu": cpu_info(), "torch_threads": torch.get_num_threads(),
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "levels": rows, "oversized": oversized}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(json.dumps(result, indent=2))
    print(f"\n{result['cpu']['model']}, {result['cpu']['cpus']} CPUs, avx512_bf16: {result['cpu']['avx512_bf16']}; "
          f"{args.form}, max_tokens {args.max_tokens}\n")
    print("| clients | p50 s | p95 s | p99 s | requests/s | tokens/s | equal to alone |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['p50_s']} | {r['p95_s']} | {r['p99_s']} | {r['requests_per_s']} "
              f"| {r['completion_tokens_per_s']} | {'yes' if r['answers_equal_alone'] else 'NO'} |")


if __name__ == "__main__":
    sys.exit(main())
