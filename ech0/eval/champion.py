"""The champion: the model holding the ``production`` alias, evaluated on the same baseline (cached).

    from ech0.eval.champion import compare
    result = compare(ctx, cfg, candidate, baseline, settings, score_fn)   # {"status": "compared", "aggregates": ...}

Called by :mod:`ech0.eval.evaluate`; not run directly. The champion is ``gate.champion.model_name``
(default: the context's registry name) at ``gate.champion.alias``, found by
:func:`ech0.registry.store.alias_version`. Statuses: ``disabled``, ``none`` (no model
holds the alias), ``same_model`` (the candidate is the champion), ``compared``, ``error`` (the gate
then fails: a comparison that could not run must not pass silently). Results are cached in
``<home>/eval_cache/`` by model version (name, version, source run) and baseline sha256 (plus
the settings that change outputs), so promoting many candidates evaluates the champion once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ech0.context import Context

CACHE_VERSION = 1  # bump when scoring changes what a cached result means


def _cache_key(mv, baseline_sha: str, settings: dict) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "name": mv.name, "version": str(mv.version), "run_id": mv.run_id,
                       "source": mv.source, "baseline": baseline_sha,
                       "settings": {k: settings.get(k) for k in ("max_new_tokens", "seed")}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _cache_file(ctx: Context, mv, baseline_sha: str, key: str) -> Path:
    return ctx.home / "eval_cache" / f"{mv.name}-v{mv.version}-{baseline_sha[:12]}-{key[:12]}.json"


def _cached(cache: Path) -> dict | None:
    """A cached result's aggregates and cases; None when there is none (a damaged entry is recomputed)."""
    if not cache.is_file():
        return None
    try:
        hit = json.loads(cache.read_text())
        # "results" (each case's redacted answer and checks, for the genai view) is absent from older entries
        return {"aggregates": hit["aggregates"], "cases": hit["cases"], "results": hit.get("results")}
    except (OSError, ValueError, KeyError):
        return None


def _evaluate_champion(ctx: Context, mv, settings: dict, score_fn) -> dict:
    """The champion's aggregates and per-case verdicts, scored like the candidate."""
    from ech0.eval.subject import load_subject

    subject = load_subject(ctx, f"models:/{mv.name}/{mv.version}")
    results, agg, _ = score_fn(subject)
    return {"aggregates": {k: agg[k] for k in ("pass_rate", "mean_score", "reference_loss", "safety_flags", "cases",
                                               "passed")},
            "cases": {r["id"]: {"passed": r["passed"], "score": r["score"]} for r in results},
            "results": results}  # redacted like the candidate's; evaluate keeps them out of the report


def compare(ctx: Context, cfg, candidate, baseline, settings: dict, score_fn, say=lambda msg: None) -> dict:
    """Champion aggregates for the gate (``score_fn(subject) -> (results, aggregates, timing)``)."""
    from ech0.io import atomic_write_json
    from ech0.registry.store import alias_version

    cc = cfg.gate.champion
    base = {"model_name": cc.model_name or ctx.registry_name, "alias": cc.alias,
            "max_pass_rate_drop": cc.max_pass_rate_drop, "max_mean_score_drop": cc.max_mean_score_drop}
    if not cc.enabled:
        return {"status": "disabled", **base}
    try:
        mv = alias_version(ctx, base["model_name"], cc.alias)
    except Exception as e:  # the registry is unreachable: say so, fail the gate
        return {"status": "error", "error": f"registry lookup: {type(e).__name__}: {str(e)[:300]}", **base}
    if mv is None:
        return {"status": "none", **base}
    base.update(version=str(mv.version), run_id=mv.run_id)
    if candidate.run_id and mv.run_id == candidate.run_id:
        return {"status": "same_model", **base}
    key = _cache_key(mv, baseline.sha256, settings)
    cache = _cache_file(ctx, mv, baseline.sha256, key)
    base["key"] = key  # also names the champion's genai view run (ech0.eval.genai_view), logged once per key
    hit = _cached(cache)
    if hit is not None:
        say(f"champion {mv.name} v{mv.version}: cached result ({cache.name})")
        return {"status": "compared", "cached": True, "cache_file": str(cache), **base, **hit}
    say(f"champion {mv.name} v{mv.version} (@{cc.alias}): evaluating on the same baseline")
    try:
        scored = _evaluate_champion(ctx, mv, settings, score_fn)
    except Exception as e:
        return {"status": "error", "error": f"evaluating the champion: {type(e).__name__}: {str(e)[:300]}", **base}
    atomic_write_json(cache, {"key": key, "model_name": mv.name, "version": str(mv.version), "run_id": mv.run_id,
                              "baseline_sha256": baseline.sha256, "settings": settings, **scored})
    return {"status": "compared", "cached": False, "cache_file": str(cache), **base, **scored}
