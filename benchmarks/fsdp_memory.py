"""Peak memory per rank, DDP against FSDP2: the same full fine-tune in 2 gloo processes on this CPU, and in 1.

    python -m benchmarks.fsdp_memory --out benchmarks/results/fsdp_memory.json     # ~75M-parameter Llama, ~2.5 min here
    python -m benchmarks.fsdp_memory --quick --out /tmp/fm.json                   # the tiny base model, ~1 min

Each strategy is a real job: ``torchrun --standalone --nproc_per_node=2 -m benchmarks.fsdp_memory --worker``,
whose every rank runs :class:`ech0.train.recipe.TrainRecipe` (``+preset=full``, fp32, ``trainer.strategy=ddp|fsdp``,
MLflow on in a throw-away home, no checkpoints or logged models) while a thread samples its RSS every 2 ms:
the peak overall and of three phases (loading + wrapping the model, the step loop, saving the model folder),
and the floor before training (torch, transformers and mlflow imported: what every process pays). The
elements each rank holds of weights, gradients and AdamW state come from the run's own ``dist/*`` metrics
(measured after its first step). One process (``--worker`` without torchrun) is the reference. glibc's mmap
threshold is pinned for every job (``MALLOC`` below says why); the full run repeats DDP and FSDP without it.
On a CPU, RSS also counts what a GPU keeps elsewhere (the full weights rank 0 gathers to save the folder are
host RAM on a GPU box), activations and the allocator's cache; the state itself is 1/N exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS, BATCH, MAX_LENGTH = 3, 4, 256
PAGE = os.sysconf("SC_PAGE_SIZE")
# glibc raises its mmap threshold (up to 32 MB) each time a big block is freed, and from then on keeps such
# blocks in the heap: FSDP's per-layer all-gather and gradient buffers, allocated and freed every layer, then
# pile up there and RSS measures the allocator's hoard, not live tensors (measured on the 75M model: 1.4 GB
# of heap per FSDP rank). A fixed threshold returns them to the kernel on free, as a GPU's caching allocator
# would reuse them; both strategies run with it, and the full run repeats DDP and FSDP with glibc's default.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def recipe(quick: bool):
    from ech0.models.tiny import TinyRecipe

    if quick:
        return TinyRecipe(name="bench-quick", pretrain_steps=0)
    # ~75M parameters, nearly all in 12 blocks of width 768 (GQA 12/4 heads): 1.2 GB of fp32 training state
    # (weights, gradients, 2 AdamW moments: 16 bytes a parameter), big enough to stand out of the RSS floor
    return TinyRecipe(name="bench-75m", hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=12, num_key_value_heads=4, pretrain_steps=0)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


class Sampler:
    """The process's RSS every 2 ms on a thread: the peak of each phase and overall (the kernel's own high-water
    marks, VmHWM and ru_maxrss, are only updated now and then and miss short peaks)."""

    def __init__(self):
        import threading

        self.phase, self.peaks, self.stop = "start", {}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.002):
            rss = _rss_mb()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)

    def during(self, phase: str, fn):
        self.phase = phase
        try:
            return fn()
        finally:
            self.peaks[phase] = max(self.peaks.get(phase, 0.0), _rss_mb())
            self.phase = "other"


def worker(args) -> None:
    """One rank (or the one process): train, then write what it measured to ``--work``/<label>-rank<N>.json."""
    import mlflow  # noqa: F401  (the floor: everything a training process imports, before it trains)
    import torch  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401

    from ech0.config import compose
    from ech0.context import Context
    from ech0.train.recipe import TrainRecipe

    class Measured(TrainRecipe):
        """The recipe, with the peak RSS of three phases: load + shard, the step loop, the final model save."""

        def setup_model(self):
            sampler.during("load_and_wrap", super().setup_model)

        def train(self):
            sampler.during("step_loop", super().train)

        def save(self):
            sampler.during("save_model", super().save)

    rank = int(os.environ.get("RANK", "0"))
    home = Path(args.work) / args.label
    cfg = compose("train", ["+preset=full", f"paths.home={home}", f"model.name_or_path={args.model}",
                            f"trainer.strategy={args.strategy}", "trainer.precision=fp32", f"trainer.max_steps={STEPS}",
                            f"trainer.batch_size={BATCH}", f"trainer.max_length={MAX_LENGTH}", "trainer.warmup_steps=0",
                            "trainer.checkpoint_every=0", "trainer.eval_every=0", "trainer.generations=0",
                            "trainer.progress=false", "data.eval_file=null", "data.eval_max_rows=8",
                            "tracking.log_model=false", "tracking.log_system_metrics=false", f"tracking.run_name={args.label}"])
    before = _rss_mb()
    t = time.perf_counter()
    sampler = Sampler()
    result = Measured(cfg, Context.from_config(cfg)).run()
    sampler.stop.set()
    out = {"rank": rank, "rss_before_mb": before, "peak_rss_mb": max(sampler.peaks.values()),
           "phase_peak_rss_mb": {k: v for k, v in sampler.peaks.items() if k not in ("start", "other")},
           "seconds": time.perf_counter() - t, "loss_after": result.loss_after, "run_id": result.run_id,
           "tracking_uri": result.tracking_uri}
    (Path(args.work) / f"{args.label}-rank{rank}.json").write_text(json.dumps(out))


def run(label: str, strategy: str, procs: int, work: Path, model_dir: Path, malloc: str = "fixed") -> dict:
    """One job of ``procs`` processes; ``malloc=fixed`` pins glibc's mmap threshold (see MALLOC)."""
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] if procs > 1 \
        else [sys.executable]
    cmd = [*head, "-m", "benchmarks.fsdp_memory", "--worker", "--label", label, "--strategy", strategy,
           "--work", str(work), "--model", str(model_dir)]
    t = time.time()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(MALLOC if malloc == "fixed" else {})}
    if malloc != "fixed":
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
    ranks = [json.loads((work / f"{label}-rank{r}.json").read_text()) for r in range(procs)]
    from mlflow.tracking import MlflowClient

    metrics = MlflowClient(ranks[0]["tracking_uri"]).get_run(ranks[0]["run_id"]).data.metrics
    held = {k.removeprefix("dist/"): v for k, v in metrics.items() if k.startswith("dist/")}
    out = {"processes": procs, "strategy": strategy if procs > 1 else "one process", "malloc": malloc,
           "peak_rss_mb": [round(r["peak_rss_mb"], 1) for r in ranks],
           "rss_before_training_mb": [round(r["rss_before_mb"], 1) for r in ranks],
           "training_rss_mb": [round(r["peak_rss_mb"] - r["rss_before_mb"], 1) for r in ranks],
           "step_loop_peak_rss_mb": [round(r["phase_peak_rss_mb"]["step_loop"], 1) for r in ranks],
           "phase_peak_rss_mb": [{k: round(v, 1) for k, v in r["phase_peak_rss_mb"].items()} for r in ranks],
           "held_per_rank": held, "loss_after": ranks[0]["loss_after"], "wall_seconds": round(time.time() - t, 1)}
    print(f"{label:<10} peak RSS per rank {out['peak_rss_mb']} MB (step loop: {out['step_loop_peak_rss_mb']}; floor "
          f"{out['rss_before_training_mb']}), state per rank {held.get('state_mb_per_rank', '-')} MB, "
          f"loss {out['loss_after']:.5f}, {out['wall_seconds']}s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/fsdp_memory.json")
    ap.add_argument("--quick", action="store_true", help="the tiny base model: a one-minute smoke version")
    for hidden in ("--worker", "--label", "--strategy", "--work", "--model"):
        ap.add_argument(hidden, action="store_true" if hidden == "--worker" else None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ech0.context import Context
    from ech0.models import ensure_base_model

    model_dir = ensure_base_model(Context.from_env().base_models, recipe(args.quick), verbose=True)
    work = Path(tempfile.mkdtemp(prefix="ech0-fsdp-bench-"))
    results = {"ddp": run("ddp", "ddp", 2, work, model_dir), "fsdp": run("fsdp", "fsdp", 2, work, model_dir)}
    if not args.quick:
        results["one"] = run("one", "ddp", 1, work, model_dir)
        for strategy in ("ddp", "fsdp"):
            results[f"{strategy}_glibc_default"] = run(f"{strategy}-glibc", strategy, 2, work, model_dir, malloc="default")
    from transformers import AutoConfig

    ddp, fsdp = results["ddp"], results["fsdp"]
    report = {"machine": {"cpus": os.cpu_count()}, "model": AutoConfig.from_pretrained(model_dir).to_diff_dict(),
              "model_params": int(ddp["held_per_rank"]["params_per_rank"]), "steps": STEPS, "batch_rows": BATCH,
              "max_length": MAX_LENGTH, "precision": "fp32", "results": results,
              "state_fsdp_over_ddp": fsdp["held_per_rank"]["state_mb_per_rank"] / ddp["held_per_rank"]["state_mb_per_rank"],
              "peak_rss_fsdp_over_ddp": max(fsdp["peak_rss_mb"]) / max(ddp["peak_rss_mb"]),
              "training_rss_fsdp_over_ddp": max(fsdp["training_rss_mb"]) / max(ddp["training_rss_mb"]),
              "step_loop_peak_rss_fsdp_over_ddp": max(fsdp["step_loop_peak_rss_mb"]) / max(ddp["step_loop_peak_rss_mb"]),
              "loss_after_fsdp_minus_ddp": fsdp["loss_after"] - ddp["loss_after"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()
                      if k not in ("model", "results")}, indent=1))


if __name__ == "__main__":
    main()
