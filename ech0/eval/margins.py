"""The untrained base on the same cases: what a content gate's margins are measured against.

    from ech0.eval.margins import score_base, margins
    base = score_base(ctx, subject, lambda s: score_cases(s, baseline, cfg, scanner), cfg.gate)
    margins(candidate_aggregates, base, cfg.gate)   # how far each sits from the thresholds

Called by :mod:`ech0.eval.evaluate` when ``gate.compare_base=true``; not run directly. A content gate
(``ech0/eval/baselines/persona.jsonl``) asks what the fine-tune taught, so the base must fail it: the
report shows both models' answers side by side and the margins on each side of the thresholds. A LoRA
candidate is its own base with the adapter switched off (no second model in memory); a full fine-tune's
base is loaded from the folder its meta file records.
"""

from __future__ import annotations

from contextlib import nullcontext

from ech0.context import Context


def _base_of(ctx: Context, subject):
    """(subject to score, context manager to score it in, description) for the candidate's base."""
    from ech0.eval.subject import load_subject

    model = subject.model
    if subject.pyfunc is None and hasattr(model, "disable_adapter") and hasattr(model, "peft_config"):
        return subject, model.disable_adapter(), "the candidate with its LoRA adapter disabled"
    base = subject.info.get("base_model") or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not base:
        raise ValueError("the candidate records no base model")
    return load_subject(ctx, base), nullcontext(), f"{base}"


def score_base(ctx: Context, subject, score_fn, gate) -> dict:
    """The base's aggregates, verdict under the same thresholds (no champion) and per-case answers."""
    from ech0.eval.gate import decide

    try:
        base, scope, how = _base_of(ctx, subject)
        with scope:
            results, agg, _ = score_fn(base)
    except Exception as e:  # a hub id offline, a foreign pyfunc: reported, never fatal to the candidate's verdict
        return {"status": "unavailable", "error": f"{type(e).__name__}: {str(e)[:300]}"}
    passed, reasons = decide(agg, gate)
    return {"status": "compared", "model": how, "verdict": {"passed": passed, "reasons": reasons},
            "aggregates": {k: agg[k] for k in ("pass_rate", "mean_score", "reference_loss", "cases", "passed",
                                               "by_tag")},
            "cases": {r["id"]: {"passed": r["passed"], "score": r["score"], "output": r["output"], "loss": r["loss"]}
                      for r in results}}


def margins(agg: dict, base: dict, gate) -> dict:
    """Distance of the candidate above, and of the base below, each threshold (positive = on the right side)."""
    out = {}
    for key, minimum in (("pass_rate", gate.min_pass_rate), ("mean_score", gate.min_mean_score)):
        out[key] = {"threshold": minimum, "candidate": agg[key], "base": base["aggregates"][key],
                    "candidate_margin": round(agg[key] - minimum, 4),
                    "base_margin": round(minimum - base["aggregates"][key], 4)}
    return out
