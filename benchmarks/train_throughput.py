"""Training throughput: ech0's trainer vs TRL's SFTTrainer (defaults) vs a plain transformers Trainer.

    python -m benchmarks.train_throughput --model smollm2-135m --out benchmarks/results/train_throughput_smollm2.json
    python -m benchmarks.train_throughput --model smollm2-135m --quick --out /tmp/tt.json   # ~5 min: 96 rows
    python -m benchmarks.train_throughput --out benchmarks/results/train_throughput.json    # the 20M toy Llama
    python -m benchmarks.train_throughput --quick --out /tmp/tt.json                        # toy, ~1-2 min

One run, identical inputs for every contender: the same model (same initial weights), the same rows,
learning rate, rows per batch (so the same real tokens per step), seed, epochs and a constant learning
rate. Each contender runs in its own subprocess (so peak RSS is its own). Reported: real (non-padding)
tokens/s, peak RSS, final training loss, held-out completion loss (one evaluator for all: ech0's
completion loss on the same held-out rows); for ech0 also MFU against the fp32 and bf16 matmul peaks
measured in the same run, and the cost of MLflow + status.json logging (ech0 with tracking on vs off,
interleaved ``--repeats`` times, with its spread).

``--model smollm2-135m`` (SmolLM2-135M-Instruct, the real-model issue's base): real rows, the 175 seed
tasks (prompt/completion) and the 500 ShareGPT conversations (multi-turn) of ../shared/data cycled,
or, where that folder is absent, generated rows with their token-length distribution (log-normal,
median ~100). Every contender trains the same objective: the last assistant turn given the
conversation before it (TRL's conversational prompt/completion rows; ech0's ``data.train_on=last``).
Contenders: ech0 on the ``domain_full_finetune`` preset's code path (full fine-tune, packed, bf16
autocast where ``precision=auto`` picks it) and on ``conversation_lora``'s (LoRA r=16 on every
projection); TRL's SFTTrainer with its defaults (full fine-tune; gradient checkpointing, padding to the
longest row, fused AdamW, bf16 where the CPU has fast bf16, as ``precision=auto`` decides), and the
same with ``conversation_lora``'s LoRA (``trl_lora``); a transformers Trainer (full fine-tune, padded).
Learning rates: 2e-5 for full fine-tunes (TRL's default and domain_full_finetune's), 2e-4 for LoRA.
``speedup_vs_trl`` compares like with like: ech0's full fine-tune with TRL's defaults.

The toy model (default ``--model tiny``): a ~20M-parameter Llama on synthetic prompt/completion rows
with long-tailed lengths (32..1024 tokens, median ~150), lr 1e-3; contenders ech0 ``full`` (packed and
padded), ``lora``, TRL defaults, transformers Trainer.
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

SEED = 0
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# Per model: rows per optimizer step (so the same real tokens per step for every contender), learning
# rates, the longest row (TRL's default max_length) and which turns train.
SETUPS = {
    "tiny": {"batch_rows": 8, "lr_full": 1e-3, "lr_lora": 1e-3, "max_length": 1024, "train_on": "assistant",
             "preset_full": "full", "preset_lora": "lora", "rows": 160, "quick_rows": 32},
    # 16 rows: the real-model presets' batch. 2e-5: TRL's default rate and domain_full_finetune's; 2e-4:
    # conversation_lora's. train_on=last: TRL's conversational prompt/completion rows train the last turn.
    "smollm2-135m": {"batch_rows": 16, "lr_full": 2e-5, "lr_lora": 2e-4, "max_length": 1024, "train_on": "last",
                     "preset_full": "domain_full_finetune", "preset_lora": "conversation_lora", "rows": 256,
                     "quick_rows": 96,
                     # the plain Trainer pads 16 rows of up to 1,024 tokens and keeps their fp32 logits over a
                     # 49k vocabulary: killed for memory at 24 GiB, and so were 2 micro-batches of 8 (other
                     # jobs held 14 GB). 4 micro-batches of 4 rows: the same optimizer step.
                     "hf_grad_accum": 4},
}
CONTENDERS = {  # name -> (trainer, fine-tune, tracked, packed)
    "ech0": ("ech0", "full", False, True), "ech0_tracked": ("ech0", "full", True, True),
    "ech0_padded": ("ech0", "full", False, False), "ech0_lora": ("ech0", "lora", False, True),
    "trl": ("trl", "full", False, False), "trl_lora": ("trl", "lora", False, False), "hf": ("hf", "full", False, False),
}


def recipe(quick: bool):
    from ech0.models.tiny import TinyRecipe

    if quick:
        return TinyRecipe(name="bench-quick", pretrain_steps=0)
    # ~20M parameters: 8 layers of width 448 (the tokenizer of the generated corpus is small, so
    # nearly all parameters are in the transformer blocks, where the FLOPs are).
    return TinyRecipe(name="bench-20m", hidden_size=448, intermediate_size=1536, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=4, pretrain_steps=0)


def model_folder(model: str, quick: bool) -> str:
    from ech0.context import Context
    from ech0.models import ensure_base_model, resolve_config

    ctx = Context.from_env()
    if model == "tiny":
        return str(ensure_base_model(ctx.base_models, recipe(quick), verbose=True))
    from ech0.config import compose

    return resolve_config(compose("train", [f"model={model}"]).model, ctx.base_models, verbose=True)


def make_rows(tok, n: int, seed: int) -> list[dict]:
    """Prompt/completion rows whose token lengths follow a log-normal (median ~150) clipped to 32..1024."""
    return _generated_rows(tok, n, seed, median=150)


def _generated_rows(tok, n: int, seed: int, median: int) -> list[dict]:
    from ech0.sample_data import pretraining_corpus

    rng = random.Random(seed)
    lines = pretraining_corpus(4000, seed=seed + 7)
    rows = []
    for _ in range(n):
        target = int(min(1024, max(32, rng.lognormvariate(math.log(median), 0.75))))
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


def real_rows(tok, n: int, seed: int) -> tuple[list[dict], str]:
    """``n`` rows of the shared real data (seed tasks and multi-turn conversations, shuffled and cycled),
    else generated rows with their length distribution; and where they came from."""
    seed_file, conv_file = SHARED / "seed_tasks.jsonl", SHARED / "dummy_conversation.json"
    if not (seed_file.is_file() and conv_file.is_file()):
        return _generated_rows(tok, n, seed, median=100), "generated (../shared/data absent): log-normal lengths, median ~100"
    pool = []
    for line in seed_file.read_text().splitlines():
        task = json.loads(line)
        for inst in task["instances"]:
            prompt = task["instruction"] + (f"\n\n{inst['input']}" if inst.get("input") else "")
            pool.append({"prompt": prompt, "completion": inst["output"]})
    for conv in json.loads(conv_file.read_text()):
        msgs = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
                for t in conv["conversations"]]
        while msgs and msgs[-1]["role"] != "assistant":
            msgs.pop()
        if len(msgs) >= 2:
            pool.append({"messages": msgs})
    rng = random.Random(seed)
    rng.shuffle(pool)
    return [pool[i % len(pool)] for i in range(n)], f"{seed_file.name} + {conv_file.name} ({len(pool)} rows, cycled)"


def as_prompt_completion(row: dict) -> dict:
    """TRL's conversational prompt/completion form of a row: everything before the last assistant turn."""
    msgs = row.get("messages") or [{"role": "user", "content": row["prompt"]},
                                   {"role": "assistant", "content": row["completion"]}]
    return {"prompt": msgs[:-1], "completion": msgs[-1:]}


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


def model_flops_per_token(config, avg_len: float, frozen: bool = False, trained_fraction: float = 1.0) -> float:
    """Training FLOPs per token that the objective needs: 6 x matmul parameters + causal attention scores.

    The LM head counts only for the ``trained_fraction`` of tokens whose next token has a label: the
    others need no logits (ech0 computes none for them, ech0/train/loop.py), so counting them would
    flatter ech0's MFU. ``frozen`` (LoRA): the base weights get no gradient, so 4 x (forward, and the
    backward to the inputs); the adapters' own FLOPs are under 1% at r=16 and left out."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    kv = h * config.num_key_value_heads // config.num_attention_heads
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter
    body, head = layers * per_layer, h * config.vocab_size
    attention = 6 * layers * h * avg_len  # QK^T and AV over a causal context of avg_len/2, forward+backward
    return (4 if frozen else 6) * (body + head * trained_fraction) + attention


def heldout_loss(model, tok, rows, spec) -> float:
    """One evaluator for every contender: ech0's mean completion loss on the held-out rows (fp32)."""
    from ech0.train.data import tokenize_rows
    from ech0.train.loop import completion_loss

    examples, _ = tokenize_rows(rows, tok, spec["max_length"], "right", spec["train_on"])
    return completion_loss(model.eval(), examples, tok.pad_token_id, "cpu", None, batch_size=8)


# ---- contenders (each runs in its own process) ---------------------------------------------------

def run_ech0(work: Path, spec: dict, tune: str, tracking: bool, packing: bool) -> dict:
    from ech0.config import compose
    from ech0.context import Context
    from ech0.train.recipe import fit

    rows = sum(1 for _ in open(work / "train.jsonl"))
    steps = spec["epochs"] * math.ceil(rows / spec["batch_rows"])
    home = work / ("home-on" if tracking else "home-off")
    lr = spec["lr_lora" if tune == "lora" else "lr_full"]
    cfg = compose("train", [f"+preset={spec['preset_' + tune]}", f"paths.home={home}", f"model.name_or_path={spec['model_dir']}",
                            f"data.train_file={work / 'train.jsonl'}", f"data.eval_file={work / 'heldout.jsonl'}",
                            f"data.train_on={spec['train_on']}", f"trainer.max_steps={steps}",
                            f"trainer.batch_size={spec['batch_rows']}", f"trainer.learning_rate={lr}",
                            "trainer.warmup_steps=0", "trainer.lr_scheduler=constant", "trainer.weight_decay=0.0",
                            f"trainer.max_length={spec['max_length']}", "trainer.checkpoint_every=0", "trainer.eval_every=0",
                            "trainer.generations=0", f"trainer.packing={str(packing).lower()}", "trainer.progress=false",
                            f"seed={SEED}", f"tracking.enabled={str(tracking).lower()}", "tracking.log_model=false",
                            "tracking.log_system_metrics=false"])
    result = fit(cfg, Context.from_config(cfg))
    status = json.loads((result.run_dir / "status.json").read_text()) if (result.run_dir / "status.json").exists() else {}
    model = result.model.merge_and_unload() if tune == "lora" else result.model
    return {"tokens_per_sec": result.train_tokens / result.train_seconds, "train_seconds": result.train_seconds,
            "steps": steps, "model": model, "tok": result.tokenizer, "final_loss": status.get("loss"),
            "precision": result.precision, "logging_seconds": result.logging_seconds,
            "courier_cpu_seconds": result.courier_cpu_seconds}


def _hf_args(work: Path, spec: dict, lr: float) -> dict:
    return dict(output_dir=str(work / "hf-out"), per_device_train_batch_size=spec["batch_rows"], learning_rate=lr,
                num_train_epochs=spec["epochs"], seed=SEED, lr_scheduler_type="constant", warmup_steps=0,
                weight_decay=0.0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                dataloader_num_workers=0, bf16=_bf16_fast())


def _hf_last_loss(trainer, out) -> float:
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return logged[-1] if logged else out.training_loss


def _lora_config(spec: dict):
    """conversation_lora's adapter, as a peft LoraConfig for TRL."""
    from peft import LoraConfig

    lo = spec["lora"]
    return LoraConfig(r=lo["r"], lora_alpha=lo["lora_alpha"], lora_dropout=lo["lora_dropout"],
                      target_modules=list(lo["target_modules"]), task_type="CAUSAL_LM")


def run_trl(work: Path, spec: dict, tune: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(SEED)
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"])
    rows = [as_prompt_completion(json.loads(line)) for line in open(work / "train.jsonl")]
    # TRL's conversational prompt/completion rows: it renders the same chat template ech0 trains with and,
    # by default, trains the completion only.
    ds = Dataset.from_list(rows)
    # TRL's defaults (gradient checkpointing on, padding to the longest row, fused AdamW, max_length 1024),
    # with the shared rate, batch, schedule and seed; bf16 only where this CPU has fast bf16 (on a CPU
    # without bf16 units TRL's default bf16=True would make the run hours long).
    lr = spec["lr_lora" if tune == "lora" else "lr_full"]
    trainer = SFTTrainer(model=model, args=SFTConfig(**_hf_args(work, spec, lr), max_length=spec["max_length"]),
                         train_dataset=ds, processing_class=tok,
                         peft_config=_lora_config(spec) if tune == "lora" else None)
    out = trainer.train()
    real = sum(sum(m) for m in trainer.train_dataset["attention_mask"]) if "attention_mask" in trainer.train_dataset.column_names \
        else sum(len(x) for x in trainer.train_dataset["input_ids"])
    model = trainer.model.merge_and_unload() if tune == "lora" else trainer.model
    return {"tokens_per_sec": real * spec["epochs"] / out.metrics["train_runtime"], "train_seconds": out.metrics["train_runtime"],
            "steps": trainer.state.global_step, "model": model, "tok": tok, "final_loss": _hf_last_loss(trainer, out)}


def _bf16_fast() -> bool:
    import torch

    from ech0.train.precision import choose

    return choose("auto", "cuda" if torch.cuda.is_available() else "cpu")[0] is not None


def run_hf(work: Path, spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from ech0.models import load_tokenizer
    from ech0.train.data import read_rows, tokenize_rows

    torch.manual_seed(SEED)
    tok = load_tokenizer(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"])
    examples, _ = tokenize_rows(read_rows(work / "train.jsonl"), tok, spec["max_length"], "right", spec["train_on"])
    ds = Dataset.from_dict({"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples],
                            "attention_mask": [[1] * len(e) for e in examples]})
    accum = spec.get("hf_grad_accum", 1)
    args = {**_hf_args(work, spec, spec["lr_full"]), "per_device_train_batch_size": spec["batch_rows"] // accum,
            "gradient_accumulation_steps": accum}
    trainer = Trainer(model=model, args=TrainingArguments(**args), train_dataset=ds,
                      data_collator=DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100))
    out = trainer.train()
    real = sum(len(e) for e in examples)
    return {"tokens_per_sec": real * spec["epochs"] / out.metrics["train_runtime"], "train_seconds": out.metrics["train_runtime"],
            "steps": trainer.state.global_step, "model": model, "tok": tok, "final_loss": _hf_last_loss(trainer, out)}


def child(args) -> None:
    work = Path(args.work)
    spec = json.loads((work / "spec.json").read_text())
    trainer, tune, tracked, packed = CONTENDERS[args.contender]
    if trainer == "ech0":
        out = run_ech0(work, spec, tune, tracking=tracked, packing=packed)
    elif trainer == "trl":
        out = run_trl(work, spec, tune)
    else:
        out = run_hf(work, spec)
    from ech0.models import load_tokenizer

    held = [json.loads(line) for line in open(work / "heldout.jsonl")]
    out.pop("tok")
    out["heldout_loss"] = heldout_loss(out.pop("model"), load_tokenizer(spec["model_dir"]), held, spec)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


def _spread(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"median": xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2,
            "min": xs[0], "max": xs[-1], "n": len(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=False, default="benchmarks/results/train_throughput.json")
    ap.add_argument("--model", default="tiny", choices=sorted(SETUPS), help="tiny (a 20M toy Llama) or smollm2-135m")
    ap.add_argument("--quick", action="store_true", help="fewer rows and contenders: a few-minute version")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=None, help="runs of ech0 with tracking on/off (default 2; --quick 1)")
    ap.add_argument("--trl-lora", action="store_true", help="smollm2: also TRL with conversation_lora's adapter")
    ap.add_argument("--resume", metavar="DIR", help="the work folder of an interrupted run: run only what it lacks")
    ap.add_argument("--contender", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.contender:
        return child(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig

    from ech0.config import compose
    from ech0.io import atomic_write_text
    from ech0.models import load_tokenizer
    from ech0.train.data import tokenize_rows

    setup = SETUPS[args.model]
    args.repeats = args.repeats or (1 if args.quick else 2)
    model_dir = model_folder(args.model, args.quick)
    tok = load_tokenizer(model_dir)
    n = args.rows or setup["quick_rows" if args.quick else "rows"]
    n_held = max(16, n // 10)
    if args.model == "tiny":
        rows, source = make_rows(tok, n + n_held, SEED), "generated: log-normal lengths, median ~150"
    else:
        rows, source = real_rows(tok, n + n_held, SEED)
    lora = compose("train", [f"+preset={setup['preset_lora']}"]).peft
    spec = {**setup, "model_dir": str(model_dir), "epochs": args.epochs,
            "lora": {k: (list(v) if k == "target_modules" else v) for k, v in lora.items()
                     if k in ("r", "lora_alpha", "lora_dropout", "target_modules")}}
    work = Path(args.resume) if args.resume else Path(tempfile.mkdtemp(prefix="ech0-bench-"))
    if args.resume:  # the same rows and settings, or the figures would not compare
        assert (work / "train.jsonl").read_text() == "".join(json.dumps(r) + "\n" for r in rows[:n]), "other rows"
        assert json.loads((work / "spec.json").read_text()) == spec, "other settings"
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    (work / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[n:]))
    (work / "spec.json").write_text(json.dumps(spec))
    done = [json.loads(line) for line in open(work / "results.jsonl")] if (work / "results.jsonl").exists() else []
    print(f"work folder {work} (--resume {work} continues it)", flush=True)
    examples, _ = tokenize_rows(rows[:n], tok, setup["max_length"], "right", setup["train_on"])
    lengths = sorted(len(e) for e in examples)
    trained = sum(sum(1 for t in e.labels[1:] if t != -100) for e in examples) / sum(lengths)
    samples: dict[str, list] = {}
    # Tracking on vs off differs by a few percent, about one run's noise here: those two run --repeats
    # times in ABBA order (off, on, on, off, ...), so a machine that drifts slower or faster over the
    # run hits both alike; the overhead is the ratio of medians, each ABBA pair's ratio is its spread.
    pair = [c for r in range(args.repeats) for c in (("ech0", "ech0_tracked") if r % 2 == 0 else ("ech0_tracked", "ech0"))]
    if args.model == "tiny":
        rest = ([] if args.quick else ["ech0_padded", "ech0_lora"]) + ["trl", "hf"]
    else:
        rest = ["trl", "hf"] if args.quick else ["ech0_lora", "trl", "hf"] + (["trl_lora"] if args.trl_lora else [])
    for i, name in enumerate(pair + rest):
        t = time.time()
        if i < len(done) and done[i]["name"] == name:
            out = done[i]["out"]
        else:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.train_throughput", "--contender", name, "--work", str(work)],
                                  capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                why = f"killed by signal {-proc.returncode} (memory?)" if proc.returncode < 0 else f"exit {proc.returncode}"
                raise SystemExit(f"{name} failed ({why}); --resume {work} runs what is left:\n{proc.stderr[-3000:]}")
            out = json.loads(line[7:])
            done = done[:i] + [{"name": name, "out": out}]
            atomic_write_text(work / "results.jsonl", "".join(json.dumps(d) + "\n" for d in done))
        samples.setdefault(name, []).append(out)
        print(f"{name:<13} {out['tokens_per_sec']:>9,.0f} real tok/s  held-out loss {out['heldout_loss']:.4f}"
              f"  peak RSS {out['peak_rss_mb']:,.0f} MB  ({time.time() - t:.0f}s)", flush=True)
    # each contender's median run by tokens/s, the slower of two (the headline numbers); all in *_samples
    results = {k: sorted(v, key=lambda o: o["tokens_per_sec"])[(len(v) - 1) // 2] for k, v in samples.items()}
    config = AutoConfig.from_pretrained(model_dir)
    avg_len = sum(lengths) / len(lengths)
    flops = model_flops_per_token(config, avg_len, trained_fraction=trained)
    flops_lora = model_flops_per_token(config, avg_len, frozen=True, trained_fraction=trained)
    secs = 0.3 if args.quick else 1.0
    peaks = {"fp32": peak_matmul_gflops("float32", seconds=secs), "bf16": peak_matmul_gflops("bfloat16", seconds=secs)}
    e = results["ech0"]
    precision = "bf16" if "bf16" in e["precision"] else "fp32"
    achieved = e["tokens_per_sec"] * flops / 1e9
    tps = {k: v["tokens_per_sec"] for k, v in results.items()}
    overheads = [a["tokens_per_sec"] / b["tokens_per_sec"] - 1 for a, b in zip(samples["ech0"], samples["ech0_tracked"])]
    med = {k: _spread([o["tokens_per_sec"] for o in samples[k]])["median"] for k in ("ech0", "ech0_tracked")}
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    n_params = sum(p.numel() for p in base.parameters())
    loss_before = heldout_loss(base, tok, rows[n:], spec)  # the untrained base on the same held-out rows
    report = {
        "machine": {"cpus": os.cpu_count(), "processor": _cpu_name(), "bf16_units": "avx512_bf16" in _cpu_flags()},
        "model": args.model, "model_params": n_params, "rows": n, "heldout_rows": n_held, "data": source,
        "epochs": args.epochs, "steps": e["steps"], "batch_rows": setup["batch_rows"],
        "learning_rate": setup["lr_full"], "learning_rate_lora": setup["lr_lora"], "train_on": setup["train_on"],
        "length_median": lengths[len(lengths) // 2], "length_min": lengths[0], "length_max": lengths[-1],
        "tokens_per_step": sum(lengths) / max(1, e["steps"]),
        "ech0_tokens_per_sec": tps["ech0"], "trl_tokens_per_sec": tps["trl"], "hf_tokens_per_sec": tps["hf"],
        "ech0_padded_tokens_per_sec": tps.get("ech0_padded"), "ech0_lora_tokens_per_sec": tps.get("ech0_lora"),
        "trl_lora_tokens_per_sec": tps.get("trl_lora"),
        "speedup_vs_trl": tps["ech0"] / tps["trl"], "speedup_vs_hf": tps["ech0"] / tps["hf"],
        "speedup_vs_trl_lora": tps["ech0_lora"] / tps["trl_lora"] if "trl_lora" in tps else None,
        **{f"{k}_heldout_loss": v["heldout_loss"] for k, v in results.items()},
        **{f"{k}_final_loss": v["final_loss"] for k, v in results.items()},
        "heldout_loss_before": loss_before,
        "precision": precision, "precision_reason": e["precision"],
        "peak_gflops_fp32": peaks["fp32"], "peak_gflops_bf16": peaks["bf16"], "achieved_gflops": achieved,
        "flops_per_token": flops, "trained_token_fraction": trained,
        "mfu": achieved / peaks[precision], "mfu_vs_fp32_peak": achieved / peaks["fp32"],
        "mfu_vs_bf16_peak": achieved / peaks["bf16"],
        "ech0_lora_mfu": tps["ech0_lora"] * flops_lora / 1e9 / peaks[precision] if "ech0_lora" in tps else None,
        "peak_rss_mb": e["peak_rss_mb"], "peak_rss_mb_by_contender": {k: v["peak_rss_mb"] for k, v in results.items()},
        "logging_overhead": med["ech0"] / med["ech0_tracked"] - 1,
        "logging_overhead_spread": {**_spread(overheads), "pairs": overheads},
        # measured inside each tracked run, free of run-to-run noise: the loop's own time in tracker and
        # status.json calls, and the courier thread's CPU time (at most what it can take from the loop)
        "logging_share_in_loop": _spread([o["logging_seconds"] / o["train_seconds"] for o in samples["ech0_tracked"]
                                          if "logging_seconds" in o]) if "logging_seconds" in samples["ech0_tracked"][0] else None,
        "courier_cpu_share": _spread([o["courier_cpu_seconds"] / o["train_seconds"] for o in samples["ech0_tracked"]
                                      if "courier_cpu_seconds" in o]) if "courier_cpu_seconds" in samples["ech0_tracked"][0] else None,
        "tokens_per_sec_samples": {k: [round(o["tokens_per_sec"], 1) for o in v] for k, v in samples.items()},
    }
    from ech0.io import atomic_write_json

    atomic_write_json(Path(args.out), report)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}, indent=1))


def _cpu_flags() -> str:
    try:
        return next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags"))
    except (OSError, StopIteration):
        return ""


def _cpu_name() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
