"""The champion: the model holding the ``production`` alias, evaluated on the same baseline (cached).

    from ech0.eval.champion import compare
    result = compare(cfg, candidate, baseline, settings, score_fn)   # {"status": "compared", "aggregates": ...}

Called by :mod:`ech0.eval.runner`; not run directly. Statuses: ``disabled``, ``none`` (no model
holds the alias), ``same_model`` (the candidate is the champion), ``compared``, ``error`` (the gate
then fails: a comparison that could not run must not pass silently). Results are cached in
``$ECH0_HOME/eval_cache/`` by model version (name, version, source run) and baseline sha256 (plus
the settings that change outputs), so promoting many candidates evaluates the champion once.
"""

from __future__ import annotations

import hashlib
import json

CACHE_VERSION = 1  # bump when scoring changes what a cached result means


def _cache_key(mv, baseline_sha: str, settings: dict) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "name": mv.name, "version": str(mv.version), "run_id": mv.run_id,
                       "source": mv.source, "baseline": baseline_sha,
                       "settings": {k: settings.get(k) for k in ("max_new_tokens", "prompt_template", "seed")}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def production_version(tracking_uri: str | None, name: str, alias: str):
    """The model version holding ``alias``, or None when there is none (no such model or alias)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ech0 import tracking

    client = MlflowClient(tracking.tracking_uri(tracking_uri))
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if getattr(e, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or \
                "not found" in str(e).lower() or "does not exist" in str(e).lower():
            return None
        raise


def compare(cfg, candidate, baseline, settings: dict, score_fn, say=lambda msg: None) -> dict:
    """Champion aggregates for the gate (``score_fn(subject) -> (results, aggregates, timing)``)."""
    from ech0 import paths
    from ech0.io import atomic_write_json

    cc = cfg.gate.champion
    base = {"model_name": cc.model_name, "alias": cc.alias, "max_pass_rate_drop": cc.max_pass_rate_drop,
            "max_mean_score_drop": cc.max_mean_score_drop}
    if not cc.enabled:
        return {"status": "disabled", **base}
    try:
        mv = production_version(cfg.tracking.uri, cc.model_name, cc.alias)
    except Exception as e:  # the registry is unreachable: say so, fail the gate
        return {"status": "error", "error": f"registry lookup: {type(e).__name__}: {str(e)[:300]}", **base}
    if mv is None:
        return {"status": "none", **base}
    base.update(version=str(mv.version), run_id=mv.run_id)
    if candidate.run_id and mv.run_id == candidate.run_id:
        return {"status": "same_model", **base}
    key = _cache_key(mv, baseline.sha256, settings)
    cache = paths.home() / "eval_cache" / f"{mv.name}-v{mv.version}-{baseline.sha256[:12]}-{key[:12]}.json"
    if cache.is_file():
        try:
            hit = json.loads(cache.read_text())
            say(f"champion {mv.name} v{mv.version}: cached result ({cache.name})")
            return {"status": "compared", "cached": True, "cache_file": str(cache), **base,
                    "aggregates": hit["aggregates"], "cases": hit["cases"]}
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed
    say(f"champion {mv.name} v{mv.version} (@{cc.alias}): evaluating on the same baseline")
    from ech0.eval.runner import load_subject

    try:
        subject = load_subject(f"models:/{mv.name}/{mv.version}", settings.get("prompt_template"), cfg.tracking.uri)
        results, agg, _ = score_fn(subject)
    except Exception as e:
        return {"status": "error", "error": f"evaluating the champion: {type(e).__name__}: {str(e)[:300]}", **base}
    cases = {r["id"]: {"passed": r["passed"], "score": r["score"]} for r in results}
    agg = {k: agg[k] for k in ("pass_rate", "mean_score", "reference_loss", "safety_flags", "cases", "passed")}
    atomic_write_json(cache, {"key": key, "model_name": mv.name, "version": str(mv.version), "run_id": mv.run_id,
                              "baseline_sha256": baseline.sha256, "settings": settings, "aggregates": agg,
                              "cases": cases})
    return {"status": "compared", "cached": False, "cache_file": str(cache), **base, "aggregates": agg, "cases": cases}
