"""What a training step computes: completion-only loss (summed), held-out loss, the LR schedule.

    from ech0.train.loop import completion_loss, loss_sum, make_scheduler
    total, n = loss_sum(model, batch, "cpu", amp_dtype=None)      # summed CE over completion tokens

Used by :class:`ech0.train.recipe.TrainRecipe` (its step loop) and by evaluation; not run directly.
"""

from __future__ import annotations

import contextlib
import math

from ech0.train.data import collate


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
