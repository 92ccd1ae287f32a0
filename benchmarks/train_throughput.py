"""Training throughput: ech0's trainer vs TRL's SFTTrainer (defaults) vs a plain transformers Trainer.

    python -m benchmarks.train_throughput --out benchmarks/results/train_throughput.json
    python -m benchmarks.train_throughput --quick --out /tmp/tt.json      # ~1-2 min smoke version

One run, identical inputs for every contender: the same Llama-architecture model (~20M parameters,
same initial weights), the same synthetic prompt/completion rows with long-tailed lengths (32..1024
tokens, median ~150), learning rate, rows per batch, seed and epochs. Each contender runs in its own
subprocess (so peak RSS is its own). Reported: real (non-padding) tokens/s, peak RSS, final training
loss, held-out completion loss; for ech0 also MFU against the fp32 and bf16 matmul peaks measured in
the same run, and the cost of MLflow + status.json logging (ech0 with tracking on vs off).

Contenders: ech0 with the `full` preset's code path (packed; and padded, as a control), the same with
MLflow + status.json on, the `lora` preset's path, TRL's SFTTrainer with its defaults (bf16 only
where bf16 matmuls are faster than fp32, as ech0's `precision=auto` decides: on a CPU without bf16
units TRL's default bf16=True would make its run hours long), and a transformers Trainer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LR, BATCH_ROWS, SEED = 1e-3, 8, 0


def recipe(quick: bool):
    from ech0.models.tiny import TinyRecipe

    if quick:
        return TinyRecipe(name="bench-quick", pretrain_steps=0)
    # ~20M parameters: 8 layers of width 448 (the tokenizer of the generated corpus is small, so
    # nearly all parameters are in the transformer blocks, where the FLOPs are).
    return TinyRecipe(name="bench-20m", hidden_size=448, intermediate_size=1536, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=4, pretrain_steps=0)


def make_rows(tok, n: int, seed: int) -> list[dict]:
    """Prompt/completion rows whose token lengths follow a log-normal (median ~150) clipped to 32..1024."""
    from ech0.sample_data import pretraining_corpus

    rng = random.Random(seed)
    lines = pretraining_corpus(4000, seed=seed + 7)
    rows = []
    for _ in range(n):
        target = int(min(1024, max(32, rng.lognormvariate(math.log(150), 0.75))))
        words, ids = [], 0
        while ids < target:
            line = rng.choice(lines)
            words.append(line)
            ids += len(tok(line, add_special_tokens=False)["input_ids"])
        text = " ".join(words)
        cut = text.find(" ", max(1, int(len(text) * rng.uniform(0.2, 0.4))))  # on a word boundary
        cut = cut if cut > 0 else len(text) // 2
        rows.append({"prompt": text[:cut], "completion": text[cut:], "tags": [], "quality_score": None, "metadata": {}})
    return rows


def peak_matmul_gflops(dtype_name: str, sizes=(512, 1024, 2048), seconds: float = 1.0) -> float:
    """The best square-matmul rate over a few sizes: the machine's practical peak (a high peak keeps MFU honest)."""
    import torch

    dtype = getattr(torch, dtype_name)
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        t = time.perf_counter()
        a @ b
        if time.perf_counter() - t > seconds:  # a slow dtype (bf16 without bf16 units): larger sizes only cost time
            best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
            break
        reps, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            a @ b
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def model_flops_per_token(config, avg_len: float) -> float:
    """Training FLOPs per token: 6 x matmul parameters (incl. LM head) + causal attention scores."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    kv = h * config.num_key_value_heads // config.num_attention_heads
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter
    matmul_params = layers * per_layer + h * config.vocab_size
    attention = 6 * layers * h * avg_len  # QK^T and AV over a causal context of avg_len/2, forward+backward
    return 6 * matmul_params + attention


def heldout_loss(model, tok, rows) -> float:
    from ech0.train.data import tokenize_rows
    from ech0.train.loop import completion_loss

    examples, _ = tokenize_rows(rows, tok, 1024, "right")
    return completion_loss(model, examples, tok.pad_token_id, "cpu", None, batch_size=8)


# ---- contenders (each runs in its own process) ---------------------------------------------------

def run_ech0(work: Path, model_dir: str, epochs: int, tracking: bool, packing: bool, preset: str = "full") -> dict:
    from ech0.config import compose
    from ech0.context import Context
    from ech0.train.recipe import fit

    rows = sum(1 for _ in open(work / "train.jsonl"))
    steps = epochs * math.ceil(rows / BATCH_ROWS)
    home = work / ("home-on" if tracking else "home-off")
    cfg = compose("train", [f"+preset={preset}", f"paths.home={home}", f"model.name_or_path={model_dir}", f"data.train_file={work / 'train.jsonl'}",
                            "data.eval_file=null", f"trainer.max_steps={steps}", f"trainer.batch_size={BATCH_ROWS}",
                            f"trainer.learning_rate={LR}", "trainer.warmup_steps=0", "trainer.lr_scheduler=constant",
                            "trainer.max_length=1024", "trainer.checkpoint_every=0", "trainer.eval_every=0",
                            f"trainer.packing={str(packing).lower()}", "trainer.progress=false", f"seed={SEED}",
                            f"tracking.enabled={str(tracking).lower()}", "tracking.log_model=false",
                            "tracking.log_system_metrics=false"])
    result = fit(cfg, Context.from_config(cfg))
    return {"tokens_per_sec": result.train_tokens / result.train_seconds, "train_seconds": result.train_seconds,
            "model": result.model, "tok": result.tokenizer, "final_loss": _last_loss(result.run_dir)}


def _last_loss(run_dir: Path) -> float | None:
    s = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").exists() else {}
    return s.get("loss")


def _hf_args(work: Path, epochs: int):
    return dict(output_dir=str(work / "hf-out"), per_device_train_batch_size=BATCH_ROWS, learning_rate=LR,
                num_train_epochs=epochs, seed=SEED, lr_scheduler_type="constant", warmup_steps=0, logging_steps=10,
                save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)


def _hf_last_loss(trainer, out) -> float:
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return logged[-1] if logged else out.training_loss


def run_trl(work: Path, model_dir: str, epochs: int) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(SEED)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ds = load_dataset("json", data_files=str(work / "train.jsonl"), split="train").select_columns(["prompt", "completion"])
    # TRL's conversational prompt/completion format: it renders the same chat template ech0 trains with.
    ds = ds.map(lambda r: {"prompt": [{"role": "user", "content": r["prompt"]}],
                           "completion": [{"role": "assistant", "content": r["completion"]}]})
    # TRL's defaults, except bf16: SFTConfig turns it on, and bf16 matmuls on a CPU without bf16 units
    # (this one) run 35-300x slower than fp32 -- the run would take hours. Everything else stays default
    # (gradient checkpointing on, padding to the longest row, fused AdamW, max_length 1024).
    trainer = SFTTrainer(model=model, args=SFTConfig(**_hf_args(work, epochs), max_length=1024, bf16=_bf16_fast()),
                         train_dataset=ds,
                         processing_class=tok)
    out = trainer.train()
    real = sum(sum(m) for m in trainer.train_dataset["attention_mask"]) if "attention_mask" in trainer.train_dataset.column_names \
        else sum(len(x) for x in trainer.train_dataset["input_ids"])
    return {"tokens_per_sec": real * epochs / out.metrics["train_runtime"], "train_seconds": out.metrics["train_runtime"],
            "model": model, "tok": tok, "final_loss": _hf_last_loss(trainer, out)}


def _bf16_fast() -> bool:
    import torch

    from ech0.train.precision import choose

    return choose("auto", "cuda" if torch.cuda.is_available() else "cpu")[0] is not None


def run_hf(work: Path, model_dir: str, epochs: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from ech0.train.data import read_rows, tokenize_rows

    torch.manual_seed(SEED)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    examples, _ = tokenize_rows(read_rows(work / "train.jsonl"), tok, 1024, "right")
    ds = Dataset.from_dict({"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples],
                            "attention_mask": [[1] * len(e) for e in examples]})
    trainer = Trainer(model=model, args=TrainingArguments(**_hf_args(work, epochs)), train_dataset=ds,
                      data_collator=DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100))
    out = trainer.train()
    real = sum(len(e) for e in examples)
    return {"tokens_per_sec": real * epochs / out.metrics["train_runtime"], "train_seconds": out.metrics["train_runtime"],
            "model": model, "tok": tok, "final_loss": _hf_last_loss(trainer, out)}


def child(args) -> None:
    work = Path(args.work)
    spec = json.loads((work / "spec.json").read_text())
    if args.contender.startswith("ech0"):
        out = run_ech0(work, spec["model_dir"], spec["epochs"], tracking=args.contender == "ech0_tracked",
                       packing=args.contender != "ech0_padded", preset="lora" if args.contender == "ech0_lora" else "full")
    elif args.contender == "trl":
        out = run_trl(work, spec["model_dir"], spec["epochs"])
    else:
        out = run_hf(work, spec["model_dir"], spec["epochs"])
    held = [json.loads(line) for line in open(work / "heldout.jsonl")]
    out["heldout_loss"] = heldout_loss(out.pop("model"), out.pop("tok"), held)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=False, default="benchmarks/results/train_throughput.json")
    ap.add_argument("--quick", action="store_true", help="tiny model, few rows: a one-minute smoke version")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=None, help="runs of ech0 with tracking on/off (default 2; --quick 1)")
    ap.add_argument("--contender", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.contender:
        return child(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoTokenizer

    from ech0.context import Context
    from ech0.models import ensure_base_model

    args.repeats = args.repeats or (1 if args.quick else 2)
    model_dir = ensure_base_model(Context.from_env().base_models, recipe(args.quick), verbose=True)
    tok = AutoTokenizer.from_pretrained(model_dir)
    n = args.rows or (32 if args.quick else 160)
    rows = make_rows(tok, n + max(8, n // 10), SEED)
    work = Path(tempfile.mkdtemp(prefix="ech0-bench-"))
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    (work / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[n:]))
    (work / "spec.json").write_text(json.dumps({"model_dir": str(model_dir), "epochs": args.epochs}))
    lengths = sorted(len(tok(r["prompt"] + r["completion"])["input_ids"]) for r in rows[:n])
    results, samples = {}, {}
    # Tracking on vs off differs by a few percent, less than one run's noise here: those two run
    # --repeats times, interleaved, and each keeps its fastest run (the least disturbed by the machine).
    controls = [] if args.quick else ["ech0_padded", "ech0_lora"]  # not compared with TRL: left out of the smoke run
    order = [n for _ in range(args.repeats) for n in ("ech0", "ech0_tracked")] + controls + ["trl", "hf"]
    for name in order:
        t = time.time()
        proc = subprocess.run([sys.executable, "-m", "benchmarks.train_throughput", "--contender", name, "--work", str(work)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        out = json.loads(line[7:])
        samples.setdefault(name, []).append(round(out["tokens_per_sec"], 1))
        if name not in results or out["tokens_per_sec"] > results[name]["tokens_per_sec"]:
            results[name] = out
        print(f"{name:<13} {out['tokens_per_sec']:>9,.0f} real tok/s  held-out loss {out['heldout_loss']:.3f}"
              f"  peak RSS {out['peak_rss_mb']:,.0f} MB  ({time.time() - t:.0f}s)", flush=True)
    config = AutoConfig.from_pretrained(model_dir)
    flops = model_flops_per_token(config, sum(lengths) / len(lengths))
    secs = 0.3 if args.quick else 1.0
    peaks = {"fp32": peak_matmul_gflops("float32", seconds=secs), "bf16": peak_matmul_gflops("bfloat16", seconds=secs)}
    e = results["ech0"]
    achieved = e["tokens_per_sec"] * flops / 1e9
    from transformers import AutoModelForCausalLM

    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    report = {
        "machine": {"cpus": os.cpu_count(), "processor": _cpu_name()},
        "model_params": n_params, "rows": n, "epochs": args.epochs, "batch_rows": BATCH_ROWS, "learning_rate": LR,
        "length_median": lengths[len(lengths) // 2], "length_min": lengths[0], "length_max": lengths[-1],
        "ech0_tokens_per_sec": e["tokens_per_sec"], "trl_tokens_per_sec": results["trl"]["tokens_per_sec"],
        "hf_tokens_per_sec": results["hf"]["tokens_per_sec"],
        "ech0_padded_tokens_per_sec": results.get("ech0_padded", {}).get("tokens_per_sec"),
        "ech0_lora_tokens_per_sec": results.get("ech0_lora", {}).get("tokens_per_sec"),  # the lora preset's path
        "speedup_vs_trl": e["tokens_per_sec"] / results["trl"]["tokens_per_sec"],
        "speedup_vs_hf": e["tokens_per_sec"] / results["hf"]["tokens_per_sec"],
        "ech0_heldout_loss": e["heldout_loss"], "trl_heldout_loss": results["trl"]["heldout_loss"],
        "hf_heldout_loss": results["hf"]["heldout_loss"],
        "ech0_final_loss": e["final_loss"], "trl_final_loss": results["trl"]["final_loss"], "hf_final_loss": results["hf"]["final_loss"],
        "precision": "fp32", "peak_gflops_fp32": peaks["fp32"], "peak_gflops_bf16": peaks["bf16"],
        "achieved_gflops": achieved, "mfu": achieved / peaks["fp32"], "mfu_vs_bf16_peak": achieved / peaks["bf16"],
        "peak_rss_mb": e["peak_rss_mb"], "peak_rss_mb_by_contender": {k: v["peak_rss_mb"] for k, v in results.items()},
        "logging_overhead": e["tokens_per_sec"] / results["ech0_tracked"]["tokens_per_sec"] - 1,
        "tokens_per_sec_samples": samples,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in report.items()}, indent=1))


def _cpu_name() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
