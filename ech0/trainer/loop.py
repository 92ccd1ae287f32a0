"""The step loop: micro-batches, completion-only loss, clipping, scheduler, metrics, checkpoints.

Called by :func:`ech0.trainer.fit.fit`; not run directly. Loss is the mean over completion tokens of
the whole optimizer step (summed over micro-batches, divided once), so ``grad_accum`` does not change it,
and neither does the number of processes under torchrun (see :mod:`ech0.trainer.distributed`).
"""

from __future__ import annotations

import contextlib
import math
import time

from ech0.trainer.data import collate, epoch_batches
from ech0.trainer.distributed import Dist
from ech0.trainer.packing import collate_packed


def make_scheduler(optimizer, kind: str, warmup: int, total: int):
    import torch

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if kind == "linear":
            return 1 - progress
        return 1.0

    if kind not in ("cosine", "linear", "constant"):
        from ech0.errors import UserError

        raise UserError(f"trainer.lr_scheduler={kind!r}: expected cosine, linear or constant")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast(device: str, dtype):
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def loss_sum(model, batch: dict, device: str, amp_dtype):
    """Summed cross-entropy over completion tokens, and their count."""
    import torch

    labels = batch["labels"].to(device)
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    with autocast(device, amp_dtype):
        logits = model(**inputs).logits
    shift_logits = logits[:, :-1].float().reshape(-1, logits.size(-1))
    shift_labels = labels[:, 1:].reshape(-1)
    total = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
    return total, int((shift_labels != -100).sum())


def completion_loss(model, examples, pad_id: int, device: str, amp_dtype=None, batch_size: int = 32,
                    max_batch_tokens: int = 16384) -> float:
    """Mean teacher-forced loss over the completion tokens of ``examples``.

    Batches are length-sorted and capped at ``max_batch_tokens`` padded tokens, so long rows do not
    materialise huge padded attention matrices (32 rows of 1,024 tokens would need ~1 GB per layer).
    """
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    batches, current = [], []
    for i in order:
        if current and (len(current) >= batch_size or (len(current) + 1) * len(examples[i]) > max_batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    batches += [current] if current else []
    with torch.no_grad():
        for idx in batches:
            t, n = loss_sum(model, collate([examples[i] for i in idx], pad_id), device, amp_dtype)
            total, count = total + float(t), count + n
    model.train(was_training)
    return total / max(count, 1)


class Loop:
    """State of one training run's step loop; ``run()`` advances it from ``self.step`` to ``max_steps``."""

    def __init__(self, model, optimizer, scheduler, train, pad_id: int, cfg, seed: int, device: str, amp_dtype,
                 on_step, on_eval, on_checkpoint, dist: Dist = Dist()):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler  # model: DDP-wrapped under torchrun
        self.dist = dist
        self.train, self.pad_id, self.cfg, self.seed = train, pad_id, cfg, seed
        self.device, self.amp_dtype = device, amp_dtype
        self.on_step, self.on_eval, self.on_checkpoint = on_step, on_eval, on_checkpoint
        self.step = 0
        self.lengths = [len(e) for e in train]
        self.steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        self._epoch_cache: tuple[int, list] | None = None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.collate = collate_packed if cfg.packing else (lambda rows: collate(rows, pad_id))

    def batch_for(self, step: int) -> list:
        epoch, index = divmod(step, self.steps_per_epoch)
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            self._epoch_cache = (epoch, epoch_batches(len(self.train), self.cfg.batch_size, self.seed, epoch, self.lengths))
        return [self.train[i] for i in self._epoch_cache[1][index]]

    def one_step(self) -> dict:
        import torch

        rows = self.batch_for(self.step)  # the step's global batch: the same on every process
        n_completion = sum(sum(1 for t in e.labels[1:] if t != -100) for e in rows)
        # Each of W processes backpropagates (its completion-loss sum) * W / (the step's count); DDP
        # averages gradients over processes, so the update is the one-process update. W=1: plain mean.
        share, weight = self.dist.share(rows), self.dist.world
        if not share:  # fewer rows than processes: join DDP's gradient all-reduce with a zero gradient
            share, weight = rows[:1], 0
        k = max(1, self.cfg.grad_accum)
        micro = [share[i::k] for i in range(k) if share[i::k]]
        total = 0.0
        for j, part in enumerate(micro):
            with self.dist.accumulating(self.model, last=j == len(micro) - 1):
                s, _ = loss_sum(self.model, self.collate(part), self.device, self.amp_dtype)
                (s * weight / n_completion).backward()
            total += float(s.detach()) if weight else 0.0
        total = self.dist.sum(total)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": total / n_completion, "grad_norm": float(grad_norm), "learning_rate": lr,
                "tokens": sum(len(e) for e in rows)}

    def run(self) -> None:
        cfg = self.cfg
        self.model.train()
        while self.step < cfg.max_steps:
            t0 = time.perf_counter()
            out = self.one_step()
            self.step += 1
            out["seconds"] = time.perf_counter() - t0
            out["epoch"] = self.step / self.steps_per_epoch
            self.on_step(self.step, out)
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                self.on_eval(self.step)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.max_steps:
                self.on_checkpoint(self.step)
