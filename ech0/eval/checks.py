"""Scoring one output against one typed check: ``(passed, score in [0, 1], detail)``.

    from ech0.eval.checks import run_check
    passed, score, detail = run_check(check, output, reference, loss)

Called by :mod:`ech0.eval.evaluate`; not run directly. Details describe the check and the numbers,
never the output itself (the output may hold a secret; reports show only its redacted form).
"""

from __future__ import annotations

import difflib
import math

from ech0.eval.cases import Check


def similarity(a: str, b: str) -> float:
    """difflib's ratio (2*matches / total length) on the stripped strings: 1.0 identical, 0.0 disjoint."""
    return difflib.SequenceMatcher(None, a.strip(), b.strip(), autojunk=False).ratio()


def _fold(s: str, ignore_case: bool) -> str:
    return s.lower() if ignore_case else s


def run_check(check: Check, output: str, reference: str | None, loss: float | None) -> tuple[bool, float, str]:
    p = check.params
    ic = bool(p.get("ignore_case", False))
    kind = check.type
    if kind == "exact":
        want = p.get("value", reference)
        ok = _fold(output.strip(), ic) == _fold(want.strip(), ic)
        return ok, float(ok), "equal" if ok else f"differs (similarity {similarity(output, want):.2f})"
    if kind in ("contains", "not_contains"):
        vals = check.values()
        found = [v for v in vals if _fold(v, ic) in _fold(output, ic)]
        if kind == "contains":
            score = len(found) / len(vals)
            missing = [v for v in vals if v not in found]
            return not missing, score, "all present" if not missing else f"missing {missing!r}"
        score = 1.0 - len(found) / len(vals)
        return not found, score, "none present" if not found else f"{len(found)} forbidden string(s) present"
    if kind == "regex":
        ok = check.compiled.search(output) is not None
        return ok, float(ok), "matches" if ok else "no match"
    if kind == "max_length":
        limit, n = int(p["value"]), len(output)
        return n <= limit, min(1.0, limit / max(n, 1)), f"{n} chars (limit {limit})"
    if kind == "min_similarity":
        r = similarity(output, reference or "")
        need = float(p["value"])
        return r >= need, r, f"similarity {r:.3f} (min {need})"
    if kind == "max_loss":
        limit = float(p["value"])
        if loss is None or not math.isfinite(loss):
            return False, 0.0, "reference loss unavailable for this model"
        return loss <= limit, min(1.0, limit / loss) if loss > 0 else 1.0, f"loss {loss:.3f} (max {limit})"
    raise AssertionError(f"unhandled check type {kind}")  # load_baseline refuses unknown types
