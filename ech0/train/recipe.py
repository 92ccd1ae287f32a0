"""Training as one recipe: setup → train → evaluate → save → log, with its state on ``self``.

    python -m ech0.train +preset=lora           # ech0/train/cli.py composes the config and calls fit()

    from ech0.train.recipe import fit
    result = fit(cfg, ctx)                      # FitResult: run id, folder, losses, the model in memory

In the spirit of torchtune's recipes, one class reads top to bottom: :meth:`TrainRecipe.setup`
(device, precision, data, base model, adapter, optimizer), :meth:`~TrainRecipe.begin` (a new run's
params and datasets, or a checkpoint's state), :meth:`~TrainRecipe.train` (the step loop, with
evaluation and checkpoints), then :meth:`~TrainRecipe.save` and :meth:`~TrainRecipe.log`. Under
torchrun every process runs the same recipe; rank 0 alone logs and writes: on the other ranks the
tracker and the status writer accept every call and do nothing, so no step needs an ``if``.
Loss is the mean over completion tokens of the whole optimizer step (summed over micro-batches,
divided once), so neither ``grad_accum`` nor the number of processes changes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ech0 import tracking
from ech0.context import Context
from ech0.errors import UserError, sigterm_as_interrupt

EVAL_ROWS_WITHOUT_SPLIT = 256  # training rows measured before/after when there is no eval file


@dataclass
class FitResult:
    run_id: str
    run_dir: Path
    tracking_uri: str
    loss_before: float
    loss_after: float
    steps: int
    wall_seconds: float
    train_seconds: float = 0.0  # wall time of the step loop incl. its logging (no loading, final evaluation, model save)
    train_tokens: int = 0  # real (non-padding) tokens the step loop processed
    logging_seconds: float = 0.0  # of train_seconds, the main thread's time in tracker and status.json calls
    courier_cpu_seconds: float = 0.0  # CPU time the spool's courier thread took during the step loop
    precision: str = ""  # the arithmetic it trained in, and why (derived.precision)
    model: object = field(default=None, repr=False)  # the in-process fine-tuned model (tests, pipeline)
    tokenizer: object = field(default=None, repr=False)
    rank: int = 0  # process rank under torchrun: only rank 0 logged, saved and prints the summary
    heldout: bool = True  # loss_* measured on held-out rows (False: on training rows, no eval file)


# ---------------------------------------------------------------------------------------- lookups


def device_for(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name}: no CUDA device here; use trainer.device=cpu or auto")
    return name


def find_resume(ctx: Context, resume: str) -> str | None:
    """The run id to continue, or None for a fresh run."""
    value = str(resume).strip().lower()
    if value in ("false", "no", "0", "none", ""):
        return None
    from ech0.status import read_status

    if value in ("true", "yes", "1", "latest"):
        candidates = []
        for st in ctx.models_dir.glob("*/status.json"):
            try:
                s = read_status(st)
            except (OSError, ValueError):
                continue
            if s.get("state") != "succeeded" and any((st.parent / "checkpoints").glob("step-*/state.json")):
                candidates.append((s.get("updated_at") or "", st.parent.name))
        if not candidates:
            raise UserError(f"resume=true: no unfinished run with a checkpoint under {ctx.models_dir}")
        return max(candidates)[1]
    if not (ctx.run_dir(str(resume)) / "status.json").exists():
        raise UserError(f"resume={resume}: no run folder {ctx.run_dir(str(resume))}; pass resume=true or a run id")
    return str(resume)


def lineage(ctx: Context, file: str | Path) -> dict | None:
    """The data stage's record of ``file`` (re-verified), when it is one of its outputs."""
    from ech0.context import DATA_LEVELS
    from ech0.data import manifest as mf, processed_dataset

    p = Path(file).resolve()
    for level in reversed(DATA_LEVELS):
        if p.suffix == ".jsonl" and p.parent == ctx.data_dir(level).resolve() and \
                mf.manifest_path(ctx, p.stem, level).is_file():
            try:
                return processed_dataset(ctx, p.stem, level)
            except UserError as e:  # a tampered chain: refuse to train on it (exit 2, like any bad input)
                raise UserError(f"{e}; re-run `ech0 data validate` or restore the file") from None
    return None


def split_by_content(rows: list[dict], fraction: float, floor: int, cap: int) -> tuple[list, list, str | None]:
    """(train rows, held-out rows, the split's digest): the rows whose content hashes lowest are held out,
    ``fraction`` of them within [floor, cap]; the same rows in any order split the same way. A file too
    small to give ``floor`` rows and keep twice as many for training is not split (digest None)."""
    n = min(cap, max(floor, round(len(rows) * fraction)))
    if len(rows) < 3 * n or n < 1:
        return rows, [], None
    key = {id(r): hashlib.sha256(json.dumps({k: v for k, v in r.items() if k != "_line"}, sort_keys=True,
                                            ensure_ascii=False).encode()).hexdigest() for r in rows}
    held = set(sorted(set(key.values()))[:n])  # identical rows share a hash: all held out, or none
    train, heldout = [r for r in rows if key[id(r)] not in held], [r for r in rows if key[id(r)] in held]
    if len(train) < 2 * len(heldout):
        return rows, [], None
    return train, heldout, hashlib.sha256("".join(sorted(held)).encode()).hexdigest()


def dataset_frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame({
        "prompt": [r.get("prompt") for r in rows], "completion": [r.get("completion") for r in rows],
        "messages": [json.dumps(r["messages"], ensure_ascii=False) if "messages" in r else None for r in rows],
        "tags": [json.dumps(r.get("tags", [])) for r in rows],
        "quality_score": [r.get("quality_score") for r in rows],
        "metadata": [json.dumps(r.get("metadata", {}), ensure_ascii=False) for r in rows],
    })


def base_path_of(cfg: DictConfig, ctx: Context) -> str:
    """The base model's folder (``local:*`` built once under the context's base models) or hub id."""
    from ech0.models import resolve_config

    return resolve_config(OmegaConf.to_container(cfg.model, resolve=True), ctx.base_models)


def base_hash(cfg: DictConfig, base_path: str) -> str:
    from ech0.models import content_hash

    return content_hash(base_path) if Path(base_path).is_dir() else "hub:" + (cfg.model.revision or "unpinned")


def fingerprint(cfg: DictConfig, base_digest: str) -> str:
    """What makes two training jobs the same: resolved config (minus names/paths), data bytes, base weights."""
    from ech0.io import sha256_file

    c = OmegaConf.to_container(cfg, resolve=True)
    for key in ("resume", "paths", "registry"):  # registry: what gets registered afterwards, not how it trains
        c.pop(key, None)
    for key in ("run_name", "parent_run_id"):
        c["tracking"].pop(key, None)
    c["trainer"].pop("progress", None)
    data = {k: sha256_file(cfg.data[k]) for k in ("train_file", "eval_file") if cfg.data[k]}
    blob = json.dumps({"config": c, "data": data, "base": base_digest}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def find_finished(cfg: DictConfig, ctx: Context) -> FitResult | None:
    """A finished run with the same fingerprint whose model folder still exists, else None."""
    from mlflow.tracking import MlflowClient

    from ech0.model_folder import META_FILE

    fp = fingerprint(cfg, base_hash(cfg, base_path_of(cfg, ctx)))
    exp_id = tracking.setup(ctx, cfg.tracking.experiment)
    runs = MlflowClient(ctx.tracking_uri).search_runs(
        [exp_id], f"tags.`ech0.fingerprint` = '{fp}' and attributes.status = 'FINISHED'", max_results=20,
        order_by=["attributes.start_time DESC"])
    for run in runs:
        run_dir = ctx.run_dir(run.info.run_id)
        if (run_dir / "model" / META_FILE).exists():
            t = run.data.tags
            return FitResult(run.info.run_id, run_dir, ctx.tracking_uri,
                             float(t.get("ech0.loss_before", "nan")), float(t.get("ech0.loss_after", "nan")),
                             cfg.trainer.max_steps, (run.info.end_time - run.info.start_time) / 1000,
                             heldout=t.get("ech0.loss_measured_on") == "held-out")
    return None


# ---------------------------------------------------------------------------------------- the recipe


class TrainRecipe:
    """One training job. ``run()`` = setup → (open the MLflow run) begin → train → evaluate → save → log."""

    def __init__(self, cfg: DictConfig, ctx: Context):
        self.cfg, self.ctx, self.tc = cfg, ctx, cfg.trainer
        self.history: dict[str, list] = {"train": [], "eval": []}
        self.step = 0  # optimizer steps done
        self.start_step = 0  # where this process began (a resumed run starts at its checkpoint)
        self.tokens = 0  # real tokens the loop processed in this process
        self.step_seconds = 0.0  # summed step times (the ETA)
        self.loop_seconds = 0.0  # wall time of the step loop, logging included (the benchmark's tokens/s)
        self.logging_seconds = 0.0  # of that, the main thread's time in tracker and status.json calls
        self.courier_cpu_seconds = 0.0  # CPU time the spool's courier thread spent delivering during the loop
        self.name = cfg.tracking.run_name or cfg.preset
        self.loss_before = self.loss_after = float("nan")
        self.tracker = tracking.NullTracker()
        self.status = None
        self.run_id: str | None = None
        self.run_dir: Path | None = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        import torch

        from ech0.train import distributed
        from ech0.train.precision import choose

        tc = self.tc
        self.dist = distributed.init(device_for(tc.device), tc.strategy)  # one process unless torchrun / accelerate
        self.device = self.dist.device
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        if tc.keep_freed_memory and self.device == "cpu":
            from ech0.host_memory import keep_freed_memory

            keep_freed_memory()
        self.resume_id = self.dist.broadcast(find_resume(self.ctx, self.cfg.resume) if self.dist.is_main else None)
        self.amp_dtype, self.precision_why = self.dist.broadcast(choose(tc.precision, self.device))  # rank 0's
        self.setup_data()  # a bad data file fails before any model is built or run is opened
        self.setup_model()
        self.setup_optimizer()

    def setup_data(self) -> None:
        from ech0.models import load_tokenizer
        from ech0.train.data import read_rows, tokenize_rows

        cfg, tc = self.cfg, self.tc
        self.train_rows = read_rows(cfg.data.train_file)
        self.eval_rows = read_rows(cfg.data.eval_file) if cfg.data.eval_file else []
        self.split_digest = None
        if not self.eval_rows and cfg.data.eval_fraction > 0:  # hold rows out of the training file itself
            self.train_rows, self.eval_rows, self.split_digest = split_by_content(
                self.train_rows, cfg.data.eval_fraction, cfg.data.eval_min_rows, cfg.data.eval_max_rows)
        self.lineage = {"training": lineage(self.ctx, cfg.data.train_file),
                        "eval": lineage(self.ctx, cfg.data.eval_file) if cfg.data.eval_file else None}
        with self.dist.main_first():  # a local base model is built once, by rank 0
            self.base_path = base_path_of(cfg, self.ctx)
        self.tok = load_tokenizer(self.base_path, revision=cfg.model.revision)
        if cfg.data.chat_template:
            self.tok.chat_template = cfg.data.chat_template  # saved with the model: eval and serving render the same
        args = (self.tok, tc.max_length, tc.truncation, cfg.data.train_on)
        self.train_set, self.train_stats = tokenize_rows(self.train_rows, *args, source=cfg.data.train_file)
        self.eval_set, _ = tokenize_rows(self.eval_rows, *args, source=cfg.data.eval_file)
        if not self.train_set:
            raise UserError(f"{cfg.data.train_file}: no row fits trainer.max_length={tc.max_length} "
                            f"({self.train_stats.skipped})")
        self.check_end_of_turn()
        self.measure = self.eval_set or self.train_set[:EVAL_ROWS_WITHOUT_SPLIT]
        self.lengths = [len(e) for e in self.train_set]
        self.steps_per_epoch = math.ceil(len(self.train_set) / tc.batch_size)

    def check_end_of_turn(self) -> None:
        """A run that never trains the end-of-turn token makes a model that never stops: refuse it at start."""
        from ech0.chat import end_of_turn_id

        eot = end_of_turn_id(self.tok)
        if not any(eot in ex.labels for ex in self.train_set):
            raise UserError(f"no training row has the end-of-turn token {self.tok.convert_ids_to_tokens(eot)!r} as a "
                            f"target (data.train_on={self.cfg.data.train_on}, trainer.max_length={self.tc.max_length}, "
                            f"truncation={self.tc.truncation}): the model would never learn to stop; raise max_length "
                            "or check the chat template")

    def setup_model(self) -> None:
        import torch
        from hydra.utils import instantiate

        from ech0.models import load_model

        cfg = self.cfg
        skip = cfg.peft.get("skip_lower_layers", 0.0)
        if not 0.0 <= skip < 1.0:  # checked here: a UserError inside instantiate() would come back wrapped
            raise UserError(f"peft.skip_lower_layers={skip}: expected a fraction of the layers in [0, 1)")
        torch.manual_seed(cfg.seed)
        model = load_model(self.base_path, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                           revision=cfg.model.revision)
        self.model = instantiate(cfg.peft, model=model)  # conf/peft/*.yaml: lora | none
        kl_keys = [k for k in ("kl_to_base", "kl_to_base_agreed", "kl_to_base_prompt") if getattr(self.tc, k)]
        self.with_kl = bool(kl_keys)  # each step then also runs the base (the adapter off) for the KL term
        if kl_keys and not hasattr(self.model, "disable_adapter"):
            raise UserError(f"trainer.{kl_keys[0]} needs a LoRA adapter (peft=lora): a full fine-tune keeps no base "
                            "in memory to compare with; leave trainer.kl_to_base, kl_to_base_agreed and "
                            "kl_to_base_prompt unset")
        if not self.dist.sharded:  # fsdp: fully_shard moves each layer's shard to the device as it shards it
            self.model = self.model.to(self.device)
        if self.tc.packing:
            from ech0.train.packing import enable

            enable(self.model)
        # DDP around the model under torchrun (fsdp: the model itself, sharded in place), else the model itself
        self.trained = self.dist.wrap(self.model, self.amp_dtype)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.n_params = sum(p.numel() for p in self.model.parameters())

    def setup_optimizer(self) -> None:
        import torch

        from ech0.train.loop import make_scheduler

        tc = self.tc
        # fused: one kernel over all parameters (measured 4.4x faster than the per-tensor loop on 20M params here)
        self.optimizer = torch.optim.AdamW(self.params, lr=tc.learning_rate, weight_decay=tc.weight_decay,
                                           fused=self.device.startswith(("cpu", "cuda")))
        self.scheduler = make_scheduler(self.optimizer, tc.lr_scheduler, tc.warmup_steps, tc.max_steps)
        if self.dist.world > 1:  # what each process holds: after a step, gradients and AdamW state exist
            self.optimizer.register_step_post_hook(lambda *_: self.log_held())

    def log_held(self) -> None:
        """Once, after this process's first step: elements of weights, gradients and optimizer state per process
        (the largest rank's; every rank measures): DDP holds all of them on each, fsdp about 1/N."""
        if getattr(self, "_held_logged", False):
            return
        self._held_logged = True
        held = self.dist.held(self.model, self.optimizer)
        self.tracker.log_metrics({"dist/params_per_rank": held["params"], "dist/grads_per_rank": held["grads"],
                                  "dist/optimizer_state_per_rank": held["optimizer_state"],
                                  "dist/state_mb_per_rank": held["bytes"] / 2**20,
                                  "dist/params_share": held["params"] / self.n_params}, step=self.step + 1)

    # ------------------------------------------------------------------ the run

    def new_run_tags(self) -> dict | None:
        """Tags of a new run (a resumed run keeps its own; other ranks open none)."""
        if not self.dist.is_main or self.resume_id:
            return None
        digest = base_hash(self.cfg, self.base_path)
        return {"ech0.fingerprint": fingerprint(self.cfg, digest), "ech0.kind": "train", "ech0.preset": self.cfg.preset,
                "ech0.base_model": self.cfg.model.name_or_path, "ech0.base_model_path": self.base_path,
                "ech0.base_model_hash": digest, **tracking.git_tags()}

    def attach(self, tracker) -> None:
        """The open run's tracker, folder and status writer (the run id is rank 0's)."""
        from ech0.status import StatusWriter
        from ech0.train.distributed import Null

        self.tracker = tracker
        self.run_id = self.dist.broadcast(tracker.run_id)
        self.run_dir = self.ctx.run_dir(self.run_id)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.status = StatusWriter(self.run_dir / "status.json", every_seconds=self.tc.status_every_seconds,
                                   run_id=self.run_id, mlflow_run_id=self.run_id if self.cfg.tracking.enabled else None,
                                   max_steps=self.tc.max_steps) if self.dist.is_main else Null()

    def begin(self) -> None:
        """Continue from the newest checkpoint (a resumed run), or log a new run's inputs and first loss."""
        import sys

        from ech0.train import checkpoint

        # Every process loads rank 0's checkpoint (multi-node: models/ on storage all nodes share) and
        # verifies its hashes; rank 0 says which one it resumes from when it skipped a bad newer one.
        say = (lambda line: print(line, file=sys.stderr, flush=True)) if self.dist.is_main else None
        state = checkpoint.load_latest(self.run_dir / "checkpoints", self.model, self.optimizer,
                                       self.scheduler, say=say, dist=self.dist) if self.resume_id else None
        start = state["step"] if state else 0
        if self.dist.broadcast(start) != start:  # a rank that cannot read the checkpoint would start over
            raise UserError(f"rank {self.dist.rank}: no checkpoint of run {self.run_id} under {self.run_dir}; "
                            "every node must see rank 0's models/ folder (shared storage) to resume")
        if state is not None:
            self.step = self.start_step = state["step"]
            self.loss_before, self.history = state["loss_before"], state["history"]
            return
        self.log_inputs()
        self.loss_before = self.evaluate(self.measure)
        self.log_eval(0, self.loss_before)
        self.log_generations(0)  # the base model's answers: the first rows of the table

    def log_inputs(self) -> None:
        """The resolved config, params and datasets of a new run."""
        cfg, stats = self.cfg, self.train_stats
        resolved = OmegaConf.to_yaml(cfg, resolve=True)
        if self.dist.is_main:
            from ech0.io import atomic_write_text

            atomic_write_text(self.run_dir / "config.yaml", resolved)
        self.tracker.set_tags({"ech0.run_dir": self.run_dir})
        self.tracker.log_text(resolved, "config/resolved.yaml")
        self.tracker.log_params({
            **tracking.flatten(OmegaConf.to_container(cfg, resolve=True)),
            "derived.precision": self.precision_why, "derived.device": self.device, "derived.params": self.n_params,
            "derived.trainable_params": sum(p.numel() for p in self.params), "derived.train_rows": stats.kept,
            "derived.train_rows_skipped": sum(stats.skipped.values()), "derived.train_rows_truncated": stats.truncated,
            "derived.eval_rows": len(self.eval_set)})
        from ech0.io import sha256_file

        split = self.split_digest is not None  # the eval rows were held out of the training file
        for context, rows, file in (("training", self.train_rows, cfg.data.train_file),
                                    ("eval", self.eval_rows, cfg.data.train_file if split else cfg.data.eval_file)):
            if not rows:
                continue
            record = self.lineage[context]  # the data stage's manifest hash pins the file and its whole chain
            name = f"{cfg.data.name}-{'train' if context == 'training' else 'eval-split' if split else 'eval'}"
            digest = record["digest"] if record else sha256_file(file)  # the file (and its chain) trained from
            if split and context == "eval":  # the held-out rows: the file's digest + which rows
                digest = hashlib.sha256(f"{digest}:eval:{self.split_digest}".encode()).hexdigest()
            self.tracker.log_dataset(dataset_frame(rows), name, str(file), digest, context)
            for manifest in record["chain"] if record else []:
                self.tracker.log_artifact(manifest, f"data/{context}")

    # ------------------------------------------------------------------ train
    def batch_for(self, step: int) -> list:
        """The rows of optimizer step ``step``: a pure function of (seed, epoch), so resume is exact."""
        from ech0.train.data import epoch_batches

        epoch, index = divmod(step, self.steps_per_epoch)
        if getattr(self, "_epoch", (None,))[0] != epoch:
            self._epoch = (epoch, epoch_batches(len(self.train_set), self.tc.batch_size, self.cfg.seed, epoch,
                                                None if self.tc.packing else self.lengths))
        return [self.train_set[i] for i in self._epoch[1][index]]

    def collate(self, rows: list):
        from ech0.train.data import collate
        from ech0.train.packing import collate_packed

        return collate_packed(rows) if self.tc.packing else collate(rows, self.tok.pad_token_id)

    def train_step(self) -> dict:
        """One optimizer step on :meth:`batch_for` ``(self.step)``; returns its metrics."""
        import torch

        from ech0.train.loop import loss_and_kl_sum, loss_sum

        rows = self.batch_for(self.step)  # the step's global batch: the same on every process
        n_completion = sum(sum(1 for t in e.labels[1:] if t != -100) for e in rows)
        # Each of W processes backpropagates (its completion-loss sum) * W / (the step's count); DDP
        # averages gradients over processes, so the update is the one-process update. W=1: plain mean.
        share, weight = self.dist.share(rows), self.dist.world
        if not share:  # fewer rows than processes: join DDP's gradient all-reduce with a zero gradient
            share, weight = rows[:1], 0
        k = max(1, self.tc.grad_accum)
        micro = [share[i::k] for i in range(k) if share[i::k]]
        total, kl_total = 0.0, 0.0
        beta, agreed, prompt = self.tc.kl_to_base, self.tc.kl_to_base_agreed, self.tc.kl_to_base_prompt
        for j, part in enumerate(micro):
            with self.dist.accumulating(self.trained, last=j == len(micro) - 1):
                if self.with_kl:
                    s, penalty, kl, _ = loss_and_kl_sum(self.trained, self.collate(part), self.device,
                                                        self.amp_dtype, beta, agreed, prompt)
                    ((s + penalty) * weight / n_completion).backward()
                    kl_total += kl if weight else 0.0
                else:
                    s, _ = loss_sum(self.trained, self.collate(part), self.device, self.amp_dtype)
                    (s * weight / n_completion).backward()
            total += float(s.detach()) if weight else 0.0
        total = self.dist.sum(total)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.tc.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        out = {"loss": total / n_completion, "grad_norm": float(grad_norm), "learning_rate": lr,
               "tokens": sum(len(e) for e in rows)}
        if self.with_kl:
            out["kl_to_base"] = self.dist.sum(kl_total) / n_completion
        return out

    def train(self) -> None:
        """Steps from ``self.step`` to ``max_steps``, with evaluations and checkpoints in between."""
        from tqdm import tqdm

        tc = self.tc
        self.trained.train()
        self.status.update(state="running", step=self.step, force=True)
        bar = tqdm(total=tc.max_steps, initial=self.step, unit="step", dynamic_ncols=True, mininterval=0.5,
                   disable=not (tc.progress and self.dist.is_main), desc=self.name)
        t_loop = time.perf_counter()
        while self.step < tc.max_steps:
            t0 = time.perf_counter()
            out = self.train_step()
            self.step += 1
            out["seconds"] = time.perf_counter() - t0
            self.after_step(out, bar)
            if self.step < tc.max_steps:
                at_eval = bool(tc.eval_every and self.step % tc.eval_every == 0 and self.eval_set)
                at_checkpoint = bool(tc.checkpoint_every and self.step % tc.checkpoint_every == 0)
                # every checkpoint is measured on the held-out rows: that loss ranks it (retention's best,
                # `ech0 registry register --best`), and is logged once, linked to its logged model
                loss = self.evaluate(self.eval_set) if self.eval_set and (at_eval or at_checkpoint) else None
                if at_checkpoint:
                    self.save_checkpoint(loss)
                elif at_eval:
                    self.log_eval(self.step, loss)
                if loss is not None:
                    self.log_generations(self.step)
        self.loop_seconds = time.perf_counter() - t_loop
        self.courier_cpu_seconds = getattr(getattr(self.tracker, "courier", None), "cpu_seconds", 0.0)
        bar.close()

    def after_step(self, out: dict, bar) -> None:
        """Metrics, status.json and the progress bar after one step."""
        tc, step = self.tc, self.step
        self.tokens += out["tokens"]
        self.step_seconds += out["seconds"]
        tps = out["tokens"] / out["seconds"]
        eta = (tc.max_steps - step) * self.step_seconds / max(1, step - self.start_step)
        epoch = step / self.steps_per_epoch
        self.history["train"].append((step, out["loss"]))
        with self.logging_time():
            if step % tc.log_every == 0 or step == tc.max_steps:
                metrics = {"train/loss": out["loss"], "train/learning_rate": out["learning_rate"],
                           "train/grad_norm": out["grad_norm"], "train/tokens_per_sec": tps, "train/epoch": epoch}
                if "kl_to_base" in out:
                    metrics["train/kl_to_base"] = out["kl_to_base"]
                self.tracker.log_metrics(metrics, step=step)
            self.status.update(state="running", step=step, epoch=round(epoch, 4), loss=out["loss"],
                               learning_rate=out["learning_rate"], tokens_per_sec=round(tps, 1),
                               eta_seconds=round(eta, 1))
        bar.set_postfix(loss=f"{out['loss']:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
        bar.update(1)

    @contextlib.contextmanager
    def logging_time(self):
        """Adds the block's wall time to ``logging_seconds``: what recording the run costs the loop."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.logging_seconds += time.perf_counter() - t

    def save_checkpoint(self, loss: float | None = None) -> None:
        """Checkpoint this step (``loss``: its held-out loss); with ``tracking.log_model`` also an MLflow
        ``LoggedModel`` of the run at this step with the loss linked; then retention (``keep_checkpoints``:
        the newest N and the best stay), whose dropped checkpoints leave the disk and MLflow."""
        from ech0.train import checkpoint

        if loss is not None:
            self.history["eval"].append((self.step, loss))
        if not (self.dist.is_main or self.dist.sharded):  # DDP: optimizer states are identical on every process
            return
        folder, with_model = self.run_dir / "checkpoints", bool(self.cfg.tracking.log_model)
        name = f"checkpoint-{self.step}"  # one per step in a run: retention and a redone step delete by it
        if with_model and self.dist.is_main and (folder / checkpoint.step_name(self.step)).exists():
            self._drop_logged_model(name)  # a redone step (resume fell back past a bad checkpoint): its old model
        write = self.save_model if with_model else None
        state = {"loss_before": self.loss_before, "history": self.history, "mlflow_run_id": self.run_id}
        # fsdp: every rank writes its shard (and joins the model folder's gather); rank 0 goes on alone
        target = checkpoint.save(folder, self.step, self.model, self.optimizer, self.scheduler, state, loss=loss,
                                 write_model=write, dist=self.dist)
        if not self.dist.is_main:
            return
        metrics = {"eval/loss": loss} if loss is not None else None
        if with_model:
            # measured on the tiny LoRA (2-core CPU, sqlite): logging directly costs the loop 0.4-0.6 s a checkpoint
            # (1.8 MB: ech0's code 1.2 MB, the adapter); through the spool 0.01-0.08 s (the courier uploads);
            # the model folder adds 0.06-0.16 s to the checkpoint write
            with self.logging_time():
                _log_model(self.tracker, target / checkpoint.MODEL, self.base_path, name=name, step=self.step,
                           metrics=metrics, kind="checkpoint")
        elif metrics:
            with self.logging_time():
                self.tracker.log_metrics(metrics, step=self.step)
        # the model's deletion is asked for before its folder goes: a spool not done uploading it then skips it
        checkpoint.prune(folder, self.tc.keep_checkpoints,
                         before=lambda r: self._drop_logged_model(f"checkpoint-{r.step}") if with_model else None)

    def _drop_logged_model(self, name: str) -> None:
        """Delete this run's LoggedModel ``name`` (a checkpoint retention dropped), with its files."""
        try:
            self.tracker.delete_logged_models(name)
        except Exception as e:  # a store that refuses deletes must not end the training: say so, go on
            import sys

            print(f"warning: the logged model {name} of a dropped checkpoint is still in MLflow "
                  f"({type(e).__name__}: {str(e).strip()[:200]})", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, examples) -> float:
        """Mean teacher-forced loss over the completion tokens of ``examples`` (every process: same number)."""
        from ech0.train.loop import completion_loss

        return completion_loss(self.model, examples, self.tok.pad_token_id, self.device, self.amp_dtype)

    def log_eval(self, step: int, loss: float) -> None:
        """Record a measured loss; the final one (``max_steps``) is logged by :meth:`log`, linked to the model."""
        self.history["eval"].append((step, loss))
        if step != self.tc.max_steps or not self.cfg.tracking.log_model:
            with self.logging_time():
                self.tracker.log_metrics({self.measured_key: loss}, step=step)

    def log_generations(self, step: int) -> None:
        """Greedy answers to a few held-out prompts at ``step``: the whole table so far as ``generations.json``
        (kept in the run folder too, so a resumed run's table goes on), and what it cost the loop."""
        # fsdp: every rank generates too (each forward all-gathers the layers' shards); rank 0 alone records
        if not (self.tc.generations and self.eval_rows and (self.dist.is_main or self.dist.sharded)):
            return
        from ech0.io import atomic_write_text
        from ech0.train.generations import Generations

        if getattr(self, "generations", None) is None:
            self.generations = Generations(self.tok, self.eval_rows, self.tc.generations,
                                           self.tc.generation_max_new_tokens, self.run_dir / "generations.json",
                                           until=self.start_step)
        seconds = self.generations.add(step, self.model)
        if not self.dist.is_main:
            return
        with self.logging_time():
            table = self.generations.frame()
            atomic_write_text(self.run_dir / "generations.json", table.to_json(orient="split", index=False))
            self.tracker.log_table(table, "generations.json")
            self.tracker.log_metrics({"eval/generation_seconds": seconds}, step=step)

    @property
    def measured_key(self) -> str:
        return "eval/loss" if self.eval_set else "train/loss_measured"

    # ------------------------------------------------------------------ save and log
    def save(self) -> None:
        """The model folder (adapter or full weights, tokenizer, ech0_model.json), rank 0 only."""
        self.save_model(self.run_dir / "model")

    def save_model(self, out: Path) -> None:
        """The model folder at ``out`` (rank 0 writes; under fsdp every rank must call it: the weights are gathered)."""
        whole = self.dist.full_state_dict(self.model)  # fsdp: rank 0 gets every tensor on its CPU; else None
        if self.dist.is_main:
            _save_model(self.model, self.tok, out, self.cfg, self.base_path, self.run_id, state_dict=whole)

    def log(self) -> None:
        """Loss curve, config and the MLflow model into the run, and the before/after tags."""
        if self.dist.is_main:
            from ech0.plots import loss_curve

            curve = loss_curve(self.history, self.run_dir / "loss_curve.png", title=self.name)
            self.tracker.log_artifact(curve, "plots")
            self.tracker.log_artifact(self.run_dir / "config.yaml", "config")
            if self.cfg.tracking.log_model:  # the final model at max_steps: `registry register --best` ranks it too
                _log_model(self.tracker, self.run_dir / "model", self.base_path, step=self.tc.max_steps,
                           metrics={self.measured_key: self.loss_after}, kind="final")
        if self.loop_seconds:  # what the generations table and the recording cost the loop
            shares = {"train/logging_share": self.logging_seconds / self.loop_seconds,
                      "train/courier_cpu_share": self.courier_cpu_seconds / self.loop_seconds}
            if getattr(self, "generations", None) is not None:
                shares["train/generation_share"] = sum(self.generations.seconds[1:-1]) / self.loop_seconds
            self.tracker.log_metrics(shares, step=self.tc.max_steps)
        self.tracker.set_tags({"ech0.loss_before": f"{self.loss_before:.4f}", "ech0.loss_after": f"{self.loss_after:.4f}",
                               "ech0.loss_measured_on": "held-out" if self.eval_set else "training"})

    # ------------------------------------------------------------------ all of it
    def run(self) -> FitResult:
        from ech0.io import stamp

        t_start = time.time()
        self.setup()
        cfg = self.cfg
        self.name = cfg.tracking.run_name or f"{cfg.preset}-{stamp()}"
        with tracking.start(self.ctx, cfg.tracking.experiment, self.name, tags=self.new_run_tags(),
                            resume_run_id=self.resume_id, parent_run_id=cfg.tracking.parent_run_id,
                            log_system_metrics=cfg.tracking.log_system_metrics,
                            enabled=cfg.tracking.enabled and self.dist.is_main, spool=cfg.tracking.spool,
                            delivery_wait_seconds=cfg.tracking.delivery_wait_seconds) as tracker:
            self.attach(tracker)
            try:
                self.begin()
                self.train()
                self.loss_after = self.evaluate(self.measure)
                self.log_eval(self.tc.max_steps, self.loss_after)
                self.log_generations(self.tc.max_steps)
                self.save()
                self.log()
                self.status.update(state="succeeded", step=self.tc.max_steps, eta_seconds=0, force=True)
            except KeyboardInterrupt:
                self.status.update(state="interrupted", error="interrupted (Ctrl-C or SIGTERM)", force=True)
                raise
            except BaseException as e:
                self.status.update(state="failed", error=f"{type(e).__name__}: {e}"[:2000], force=True)
                raise
        return FitResult(self.run_id, self.run_dir, self.ctx.tracking_uri, self.loss_before, self.loss_after,
                         self.tc.max_steps, time.time() - t_start, train_seconds=self.loop_seconds,
                         train_tokens=self.tokens, logging_seconds=self.logging_seconds,
                         courier_cpu_seconds=self.courier_cpu_seconds, precision=self.precision_why,
                         model=self.model, tokenizer=self.tok, rank=self.dist.rank,
                         heldout=bool(self.eval_set))


def fit(cfg: DictConfig, ctx: Context) -> FitResult:
    """Run one training job (see :class:`TrainRecipe`); Ctrl-C and SIGTERM end the run KILLED."""
    sigterm_as_interrupt()
    return TrainRecipe(cfg, ctx).run()


def _save_model(model, tok, out: Path, cfg, base_path: str, run_id: str, state_dict: dict | None = None) -> None:
    from ech0.model_folder import save_trained

    save_trained(out, model, tok, {
        "base_model": base_path, "base_model_spec": cfg.model.name_or_path, "revision": cfg.model.revision,
        "base_model_hash": base_hash(cfg, base_path), "dtype": cfg.model.dtype, "train_on": cfg.data.train_on,
        "run_id": run_id, "preset": cfg.preset}, state_dict=state_dict)


def _log_model(tracker, model_dir: Path, base_path: str, name: str = "model", step: int = 0,
               metrics: dict | None = None, kind: str = "final"):
    """The model folder as a LoggedModel ``name`` of the run at ``step``, ``metrics`` linked, tagged with its
    step, kind (checkpoint | final) and folder; what the tracker returns for it (None: tracking off)."""
    from ech0.mlflow_model import log_pyfunc

    return log_pyfunc(tracker, model_dir, base_path, name=name, step=step, metrics=metrics,  # models from code
                      tags={"ech0.step": step, "ech0.kind": kind, "ech0.model_dir": model_dir})
