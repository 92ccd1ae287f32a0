"""Canonical JSONL rows -> token ids with assistant-only labels, and a deterministic batch order.

    rows = read_rows("data/processed/x.jsonl")
    examples, stats = tokenize_rows(rows, tokenizer, max_length=512, truncation="right", train_on="assistant")

A row is a conversation (``messages``) or a prompt/completion pair (one user turn, one assistant
turn). It is rendered through the model's chat template and labelled by :func:`ech0.chat.encode`:
``train_on`` = ``assistant`` (every assistant turn with its end-of-turn token), ``last`` (the last
assistant turn), ``all``. Labels are -100 elsewhere. Truncation when a row exceeds ``max_length``:
``right`` cuts the tail, ``left`` cuts the oldest tokens, ``drop`` skips the row; a row with no trained
token left is skipped. A row whose template cannot render it, or whose mask is empty before any
truncation, is refused with its line number: that is a data error, never silently trained around.
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
    line: int = 0  # the row's line in its file (1-based; 0: not from a file)

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
            problem = row_problem(row)
            if problem:
                raise UserError(f"{path}:{n}: {problem}; run it through `ech0 data validate`")
            rows.append({**row, "_line": n})
    if not rows:
        raise UserError(f"{path}: no rows; the training file is empty")
    return rows


def row_problem(row) -> str | None:
    """Why a row cannot be trained on, or None (the data stage checks far more, with reason codes)."""
    if not isinstance(row, dict):
        return "a row is a JSON object"
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs):
            return "'messages' is a non-empty list of {role, content} strings"
        return None
    for key in ("prompt", "completion"):
        if not isinstance(row.get(key), str):
            return f"row has no string {key!r} (and no 'messages')"
    return None


def encode_row(row: dict, tokenizer, max_length: int, truncation: str, train_on: str = "assistant") -> Example | str:
    """One row -> Example, or a skip reason (``too_long``, ``no_completion_left``, ``empty_mask``, ``template_error``)."""
    from ech0.chat import TemplateError, encode, messages_of

    try:
        ids, labels = encode(tokenizer, messages_of(row), train_on)
    except TemplateError:
        return "template_error"
    if all(t == -100 for t in labels):
        return "empty_mask"
    if len(ids) > max_length:
        if truncation == "drop":
            return "too_long"
        cut = slice(0, max_length) if truncation == "right" else slice(len(ids) - max_length, None)
        ids, labels = ids[cut], labels[cut]
    if all(t == -100 for t in labels[1:]):  # the first token is never predicted
        return "no_completion_left"
    return Example(ids, labels, row.get("_line", 0))


REFUSED = ("template_error", "empty_mask")  # data errors: the run stops naming the line, nothing is trained around


def tokenize_rows(rows: list[dict], tokenizer, max_length: int, truncation: str, train_on: str = "assistant",
                  source: str = "data"):
    """(examples, stats); a row the template cannot render or whose mask is empty raises UserError naming its line."""
    from ech0.chat import TRAIN_ON, end_of_turn_id

    if truncation not in TRUNCATION:
        raise UserError(f"trainer.truncation={truncation!r}: expected one of {', '.join(TRUNCATION)}")
    if train_on not in TRAIN_ON:
        raise UserError(f"data.train_on={train_on!r}: expected one of {', '.join(TRAIN_ON)}")
    eot = end_of_turn_id(tokenizer)
    stats = TokenizeStats(rows=len(rows))
    examples = []
    for row in rows:
        ex = encode_row(row, tokenizer, max_length, truncation, train_on)
        if ex in REFUSED:
            what = ("the model's chat template cannot render it" if ex == "template_error" else
                    f"no token is trained with data.train_on={train_on} (no assistant turn)")
            raise UserError(f"{source}:{row.get('_line', '?')}: {what}; fix the row or run the file through "
                            "`ech0 data validate` (it rejects such rows)")
        if isinstance(ex, str):
            stats.skipped[ex] = stats.skipped.get(ex, 0) + 1
            continue
        stats.truncated += int(ex.labels[-1] != eot)
        stats.completion_tokens += sum(1 for t in ex.labels if t != -100)
        stats.tokens += len(ex)
        examples.append(ex)
    stats.kept = len(examples)
    assert stats.kept + sum(stats.skipped.values()) == stats.rows, "every row is kept or skipped with a reason"
    return examples, stats


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, lengths: list[int] | None) -> list[list[int]]:
    """Row indices for each batch of one epoch: a pure function of (seed, epoch), so resume is exact.

    Rows are shuffled; with ``lengths`` (padded batches) they are then sorted by length inside windows
    of 8 batches (less padding, still random). Packed batches have no padding to save, so they stay
    plainly shuffled: length-sorted batches put similar rows together (on SmolLM2's real rows the long
    instruction tasks in one step, the short chats in another), and that trained a worse model,
    held-out loss 1.304 against 1.143 shuffled after 6 steps of 16 (benchmarks/train_throughput.py --quick).
    """
    import torch

    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    if lengths is None:
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
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
