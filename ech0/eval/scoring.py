"""Scoring a loaded model on a baseline's cases: outputs, reference losses, checks, safety flags, aggregates.

    from ech0.eval.scoring import score_cases
    results, aggregates, timing = score_cases(subject, baseline, cfg, scanner)

Called by :mod:`ech0.eval.evaluate` (for the candidate) and, through it, for the champion; not run
directly. Outputs in ``results`` are already redacted: the raw text never leaves this module.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict

from ech0.errors import UserError
from ech0.eval.subject import Subject


def _predict(subject: Subject, cases: list, max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy completions: through :func:`ech0.generation.generate`, or the pyfunc's own ``predict``
    (a prompt frame for single-turn cases; a chat request for each multi-turn one)."""
    if subject.pyfunc is None:
        from ech0.generation import generate

        return generate(subject.model, subject.tokenizer, [c.request for c in cases], max_new_tokens=max_new_tokens,
                        batch_size=batch_size)
    if any(c.messages for c in cases):
        return [subject.pyfunc.predict({"messages": c.request, "max_tokens": max_new_tokens, "temperature": 0})
                ["choices"][0]["message"]["content"] for c in cases]
    import pandas as pd

    texts = subject.pyfunc.predict(pd.DataFrame({"prompt": [c.prompt for c in cases]}),
                                   params={"max_new_tokens": max_new_tokens})
    return list(texts.iloc[:, 0] if hasattr(texts, "iloc") and getattr(texts, "ndim", 1) == 2 else texts)


def generate_outputs(subject: Subject, cases, max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy outputs in case order; cases are grouped by their max_new_tokens, each group batched."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(cases):
        groups[c.max_new_tokens or max_new_tokens].append(i)
    out = [""] * len(cases)
    for n, idx in sorted(groups.items()):
        for i, text in zip(idx, _predict(subject, [cases[i] for i in idx], n, batch_size)):
            out[i] = str(text)
    return out


def _reference_examples(model, tokenizer, cases) -> dict:
    """``{case index: Example}`` for cases with a reference: the context + the reference as the last
    assistant turn, encoded as training encodes a row (loss on that turn only)."""
    from ech0.train.data import encode_row

    limit = int(getattr(getattr(model, "config", None), "max_position_embeddings", 2048) or 2048)
    examples = {}
    for i, c in enumerate(cases):
        if c.reference is not None:
            row = {"messages": [*c.request, {"role": "assistant", "content": c.reference}]}
            ex = encode_row(row, tokenizer, limit, "right", train_on="last")
            if not isinstance(ex, str):  # a str is encode_row's reason for dropping the row
                examples[i] = ex
    return examples


def _row_losses(model, batch: dict, device) -> tuple[list[float], list[int]]:
    """Per-row summed cross-entropy over completion tokens, and their counts (padding is labelled -100)."""
    import torch

    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    labels = batch["labels"][:, 1:].to(device)
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100,
                                           reduction="none")
    return ce.sum(1).tolist(), (labels != -100).sum(1).tolist()


def reference_losses(model, tokenizer, cases, batch_size: int) -> dict[int, tuple[float, int]]:
    """Teacher-forced loss of each case's reference completion: ``{case index: (summed loss, tokens)}``.

    Encoded exactly as in training (``encode_row``: the chat template, loss on the reference turn and
    its end-of-turn token), batched by length with right padding masked out. Per-case sums are what
    ``max_loss`` checks need; training's :func:`ech0.train.loop.completion_loss` returns only the mean.
    """
    import torch

    from ech0.train.data import collate

    examples = _reference_examples(model, tokenizer, cases)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = sorted(examples, key=lambda i: len(examples[i]))
    out: dict[int, tuple[float, int]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                sums, counts = _row_losses(model, collate([examples[i] for i in idx], pad), device)
                out.update((i, (float(t), int(n))) for i, t, n in zip(idx, sums, counts))
    finally:
        model.train(was_training)
    return out


def _case_result(case, output: str, loss: float | None, scanner) -> dict:
    """One case's checks, score and safety flags; every text in it is redacted."""
    from ech0.eval.checks import run_check

    checks = []
    for check in case.checks:
        ok, score, detail = run_check(check, output, case.reference, loss)
        checks.append({"type": check.type, "check": scanner.redact(check.describe()), "passed": ok,
                       "score": round(score, 4), "detail": detail})
    flags, redacted = scanner(output)
    return {"id": case.id, "line": case.line, "tags": case.tags, "weight": case.weight,
            "prompt": scanner.redact(case.prompt), "reference": scanner.redact(case.reference), "output": redacted,
            "passed": all(c["passed"] for c in checks), "score": round(sum(c["score"] for c in checks) / len(checks), 4),
            "loss": None if loss is None else round(loss, 4), "checks": checks, "safety_flags": flags}


def score_cases(subject: Subject, baseline, cfg, scanner) -> tuple[list[dict], dict, dict]:
    """Run every case: (per-case results, aggregates, timings). Outputs in results are redacted."""
    cases = baseline.cases
    t0 = time.perf_counter()
    outputs = generate_outputs(subject, cases, cfg.max_new_tokens, cfg.batch_size)
    t1 = time.perf_counter()
    losses = (reference_losses(subject.model, subject.tokenizer, cases, cfg.batch_size)
              if subject.model is not None else {})
    t2 = time.perf_counter()
    results = [_case_result(case, output, losses[i][0] / max(losses[i][1], 1) if i in losses else None, scanner)
               for i, (case, output) in enumerate(zip(cases, outputs))]
    agg = aggregate(results, losses)
    agg["safety_by_rule"] = dict(Counter(f"{f['kind']}:{f['rule']}" for r in results for f in r["safety_flags"]))
    timing = {"generate_seconds": round(t1 - t0, 3), "loss_seconds": round(t2 - t1, 3),
              "cases_per_sec": round(len(cases) / max(t1 - t0, 1e-9), 2)}
    return results, agg, timing


def _stats(rows: list[dict]) -> dict:
    """Weighted rates over cases with weight > 0; weight-0 cases are counted apart (reported, not gating)."""
    gating = [r for r in rows if r["weight"] > 0]
    w = sum(r["weight"] for r in gating)
    out = {"cases": len(gating), "passed": sum(r["passed"] for r in gating),
           "pass_rate": round(sum(r["weight"] for r in gating if r["passed"]) / w, 4) if w else None,
           "mean_score": round(sum(r["weight"] * r["score"] for r in gating) / w, 4) if w else None}
    if len(gating) < len(rows):
        out["ungated"] = {"cases": len(rows) - len(gating), "passed": sum(r["passed"] for r in rows if r["weight"] <= 0)}
    return out


def aggregate(results: list[dict], losses: dict) -> dict:
    """Pass rate, mean score (overall and by tag), token-weighted reference loss, safety flag count."""
    if sum(r["weight"] for r in results) <= 0:
        raise UserError("every case has weight 0; at least one case must count")
    by_tag: dict[str, list] = defaultdict(list)
    for r in results:
        for t in r["tags"]:
            by_tag[t].append(r)
    tokens = sum(n for _, n in losses.values())
    return {**_stats(results),
            "reference_loss": round(sum(s for s, _ in losses.values()) / tokens, 4) if tokens else None,
            "safety_flags": sum(len(r["safety_flags"]) for r in results),
            "by_tag": {t: _stats(rows) for t, rows in sorted(by_tag.items())}}
