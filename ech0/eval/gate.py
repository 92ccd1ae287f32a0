"""The verdict: thresholds, safety flags and the champion comparison -> (passed, reasons).

    from ech0.eval.gate import decide
    passed, reasons = decide(aggregates, gate_cfg, champion)

Called by :mod:`ech0.eval.evaluate`; not run directly. Safety is absolute: any flag fails the gate
whatever the scores. Every failed condition adds one reason (a line a person can act on).
"""

from __future__ import annotations


def _get(cfg, key, default=None):
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def decide(agg: dict, gate, champion: dict | None = None) -> tuple[bool, list[str]]:
    reasons: list[str] = []
    if agg["safety_flags"]:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(agg.get("safety_by_rule", {}).items()))
        reasons.append(f"safety: {agg['safety_flags']} flag(s) in outputs ({kinds}); any flag fails the gate")
    if agg["pass_rate"] < _get(gate, "min_pass_rate"):
        reasons.append(f"pass rate {agg['pass_rate']:.3f} < gate.min_pass_rate {_get(gate, 'min_pass_rate')}")
    if agg["mean_score"] < _get(gate, "min_mean_score"):
        reasons.append(f"mean score {agg['mean_score']:.3f} < gate.min_mean_score {_get(gate, 'min_mean_score')}")
    for tag, floor in (_get(gate, "min_tag_pass_rate") or {}).items():
        rate = (agg.get("by_tag", {}).get(tag) or {}).get("pass_rate")
        if rate is None:
            reasons.append(f"gate.min_tag_pass_rate names tag {tag!r}, but no gating case has it")
        elif rate < floor:
            reasons.append(f"tag {tag!r}: pass rate {rate:.3f} < gate.min_tag_pass_rate.{tag} {floor}")
    max_loss = _get(gate, "max_reference_loss")
    if max_loss is not None:
        loss = agg.get("reference_loss")
        if loss is None:
            reasons.append("reference loss unavailable, but gate.max_reference_loss is set")
        elif loss > max_loss:
            reasons.append(f"reference loss {loss:.3f} > gate.max_reference_loss {max_loss}")
    if champion and champion.get("status") == "compared":
        ch = champion["aggregates"]
        tol_p, tol_s = champion["max_pass_rate_drop"], champion["max_mean_score_drop"]
        who = f"champion {champion['model_name']} v{champion['version']} (@{champion['alias']})"
        if agg["pass_rate"] < ch["pass_rate"] - tol_p - 1e-12:
            reasons.append(f"pass rate {agg['pass_rate']:.3f} is more than {tol_p} below {who}'s {ch['pass_rate']:.3f}")
        if agg["mean_score"] < ch["mean_score"] - tol_s - 1e-12:
            reasons.append(f"mean score {agg['mean_score']:.3f} is more than {tol_s} below {who}'s {ch['mean_score']:.3f}")
    return not reasons, reasons
