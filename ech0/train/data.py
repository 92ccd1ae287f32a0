"""Canonical JSONL rows -> token ids with completion-only labels, and a deterministic batch order.

    rows = read_rows("data/processed/x.jsonl")
    examples, stats = tokenize_rows(rows, tokenizer, template, max_length=512, truncation="right")

Each row is BOS + ``template.format(prompt=...)`` + completion + EOS (:mod:`ech0.prompts`). Labels are -100 on prompt tokens, so
the loss counts completion tokens only. Truncation policy when a row exceeds ``max_length``:
``right`` cuts the completion's tail (EOS lost), ``left`` cuts the prompt's head, ``drop`` skips the row.
A row whose completion would vanish entirely is skipped either way; every skip is counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ech0.errors import UserError

TRUNCATION = ("right", "left", "drop")


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenizeStats:
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    skipped: dict = field(default_factory=dict)
    completion_tokens: int = 0
    tokens: int = 0


def read_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: data file not found; run `ech0 data validate` or pass data.train_file=PATH")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not valid JSON ({e.msg}); run it through `ech0 data validate`") from None
            for key in ("prompt", "completion"):
                if not isinstance(row, dict) or not isinstance(row.get(key), str):
                    raise UserError(f"{path}:{n}: row has no string {key!r}; run it through `ech0 data validate`")
            rows.append(row)
    if not rows:
        raise UserError(f"{path}: no rows; the training file is empty")
    return rows


def encode_row(row: dict, tokenizer, template: str, max_length: int, truncation: str) -> Example | str:
    """One row -> Example, or a skip reason."""
    from ech0.prompts import encode_pair, hf_encoder

    prompt_ids, completion_ids = encode_pair(hf_encoder(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                                             template, row["prompt"], row["completion"])
    overflow = len(prompt_ids) + len(completion_ids) - max_length
    if overflow > 0:
        if truncation == "drop":
            return "too_long"
        if truncation == "right":
            completion_ids = completion_ids[: len(completion_ids) - overflow]
        else:  # left: keep BOS, cut the oldest prompt tokens
            keep = len(prompt_ids) - overflow
            if keep < 2:
                return "prompt_too_long"
            prompt_ids = prompt_ids[:1] + prompt_ids[1 + overflow:]
    if not completion_ids:
        return "no_completion_left"
    return Example(prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids)


def tokenize_rows(rows: list[dict], tokenizer, template: str, max_length: int, truncation: str):
    if truncation not in TRUNCATION:
        raise UserError(f"trainer.truncation={truncation!r}: expected one of {', '.join(TRUNCATION)}")
    stats = TokenizeStats(rows=len(rows))
    examples = []
    for row in rows:
        ex = encode_row(row, tokenizer, template, max_length, truncation)
        if isinstance(ex, str):
            stats.skipped[ex] = stats.skipped.get(ex, 0) + 1
            continue
        stats.truncated += int(ex.labels[-1] != tokenizer.eos_token_id)
        stats.completion_tokens += sum(1 for t in ex.labels if t != -100)
        stats.tokens += len(ex)
        examples.append(ex)
    stats.kept = len(examples)
    assert stats.kept + sum(stats.skipped.values()) == stats.rows, "every row is kept or skipped with a reason"
    return examples, stats


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, lengths: list[int]) -> list[list[int]]:
    """Row indices for each batch of one epoch: a pure function of (seed, epoch), so resume is exact.

    Rows are shuffled, then sorted by length inside windows of 8 batches (less padding, still random).
    """
    import torch

    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    window = batch_size * 8
    batches = []
    for s in range(0, n, window):
        chunk = sorted(order[s:s + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in perm]


def collate(examples: list[Example], pad_id: int):
    """Right-padded tensors; padding is masked out of attention and loss."""
    import torch

    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e)] = torch.tensor(e.input_ids)
        labels[i, : len(e)] = torch.tensor(e.labels)
        mask[i, : len(e)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
