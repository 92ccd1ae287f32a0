"""Redaction on real text: hits per rule on real instruction corpora, recall on planted secrets, speed.

    python -m benchmarks.redaction_false_positives --out benchmarks/results/redaction_false_positives.json
    python -m benchmarks.redaction_false_positives --code /tmp/ech0_head   # another checkout (e.g. "before")

Corpora (each record is one row; every string in it is scanned, as ``ech0 data validate`` does):

* ``seed_tasks``: ../shared/data/seed_tasks.jsonl (175 human-written self-instruct tasks), if present;
* ``dummy_conversations``: ../shared/data/dummy_conversation.json (500 ShareGPT conversations), if present;
* ``fp_corpus``: tests/data/redaction_fp_corpus.jsonl (shipped): prose, lists, code, math, binary
  numbers, ISBNs, timestamps, versions, network examples and keyword headings ("Keyword:",
  "bypass:", "Token:") written to resemble instruction data. Every row is innocent: any hit is a
  false positive.
* ``fp_heldout``: tests/data/redaction_fp_heldout.jsonl (shipped): 60 more such rows, written after
  the rules were fixed on ``fp_corpus`` and first measured untouched (README: "Data hygiene").

A hit is a false positive unless it is listed in ``INTENDED`` (real PII-shaped text in the data:
seed task 74 is a cover letter with a phone number and an e-mail address, 166 an e-mail's sender
address). Values are never printed: only row ids and rule names.

Also reported: recall per rule on the planted secrets and PII of ``benchmarks/data_hygiene.py``
(``fake_secrets`` / ``fake_pii`` over ``--seeds`` seeds), false positives on its synthetic clean rows,
and the redactor's CPU speed (rows/s of ``Redactor()`` on those synthetic ~1.2 KB rows and on each
corpus; CPU time of this process, so other load on the machine matters less).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FP_CORPUS = ROOT / "tests" / "data" / "redaction_fp_corpus.jsonl"
FP_HELDOUT = ROOT / "tests" / "data" / "redaction_fp_heldout.jsonl"

# (corpus, row id, finding) that are real PII-shaped text, not false positives
INTENDED = {
    ("seed_tasks", "seed_task_74", "pii:PHONE"): 2,  # a cover letter: "Phone: (123) 456-7891", twice
    ("seed_tasks", "seed_task_74", "pii:EMAIL"): 2,  # ... and the applicant's address, twice
    ("seed_tasks", "seed_task_166", "pii:EMAIL"): 1,  # an e-mail's "Sender:" address
    # written as innocent text, but it is Discover's published test card number (right issuer,
    # length, 4-4-4-4 grouping and Luhn): no rule can tell it from a real card, redacting it is right
    ("fp_heldout", "heldout-034", "pii:CARD"): 1,
}


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def corpora() -> dict[str, list[tuple[str, list[str]]]]:
    """name -> [(row id, [strings])]; the shared corpora only where ../shared/data has them."""
    out = {}
    p = SHARED / "seed_tasks.jsonl"
    if p.is_file():
        rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        out["seed_tasks"] = [(r["id"], list(_strings(r))) for r in rows]
    p = SHARED / "dummy_conversation.json"
    if p.is_file():
        out["dummy_conversations"] = [(r["id"], list(_strings(r))) for r in json.loads(p.read_text(encoding="utf-8"))]
    for name, path in (("fp_corpus", FP_CORPUS), ("fp_heldout", FP_HELDOUT)):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        out[name] = [(r["id"], [r["text"]]) for r in rows]
    return out


def scan_corpus(name: str, rows: list[tuple[str, list[str]]]) -> dict:
    from ech0.data.redact import Redactor

    red = Redactor()
    hits: dict[str, int] = {}
    fps: dict[str, int] = {}
    fp_rows: dict[str, list[str]] = {}
    per_row: dict[tuple[str, str], int] = {}
    fields = chars = 0
    t = time.process_time()
    for rid, strings in rows:
        for s in strings:
            fields += 1
            chars += len(s)
            found, _ = red.scan(s)
            for kind, rule in found:
                key = f"{kind}:{rule}"
                hits[key] = hits.get(key, 0) + 1
                per_row[(rid, key)] = per_row.get((rid, key), 0) + 1
    cpu = time.process_time() - t
    for (rid, key), n in sorted(per_row.items()):
        extra = n - INTENDED.get((name, rid, key), 0)
        if extra > 0:
            fps[key] = fps.get(key, 0) + extra
            fp_rows.setdefault(key, []).append(rid)
    return {"rows": len(rows), "fields": fields, "chars": chars, "hits_by_rule": hits,
            "intended_hits": sum(min(n, INTENDED.get((name, rid, key), 0)) for (rid, key), n in per_row.items()),
            "false_positives_by_rule": fps, "false_positives": sum(fps.values()),
            "rows_with_false_positives": len({rid for v in fp_rows.values() for rid in v}),
            "false_positive_rows_by_rule": fp_rows,
            "redact_rows_per_cpu_sec": round(len(rows) / cpu, 1) if cpu > 0 else None}


def _data_hygiene():
    spec = importlib.util.spec_from_file_location("benchmarks_data_hygiene", ROOT / "benchmarks" / "data_hygiene.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def planted(seeds: int, clean_rows: int) -> dict:
    """Recall per rule on data_hygiene's planted samples; false positives and speed on its clean rows."""
    from ech0.data.redact import Redactor

    dh = _data_hygiene()
    found: dict[str, list[int]] = {}
    for seed in range(seeds):
        rng = random.Random(seed)
        for kind, samples, tag in (("secret", dh.fake_secrets(rng), "<SECRET:{}>"), ("pii", dh.fake_pii(rng), "<{}>")):
            for rule, text in samples:
                ok = tag.format(rule) in Redactor()(text)
                found.setdefault(f"{kind}:{rule}", [0, 0])
                found[f"{kind}:{rule}"][0] += ok
                found[f"{kind}:{rule}"][1] += 1
    secret = [v for k, v in found.items() if k.startswith("secret:")]
    pii = [v for k, v in found.items() if k.startswith("pii:")]
    g = dh.Gen(3)
    rows = [g.row(i) for i in range(clean_rows)]
    texts = [s for r in rows for s in _strings(r)]
    red = Redactor()
    t = time.process_time()
    fp_rows = sum(1 for r in rows if any(red.scan(s)[0] for s in _strings(r)))
    cpu = time.process_time() - t
    return {"seeds": seeds,
            "secret_recall": round(sum(a for a, _ in secret) / sum(b for _, b in secret), 4),
            "pii_recall": round(sum(a for a, _ in pii) / sum(b for _, b in pii), 4),
            "misses_by_rule": {k: b - a for k, (a, b) in found.items() if a < b},
            "synthetic_clean_rows": clean_rows, "synthetic_false_positive_rows": fp_rows,
            "synthetic_bytes_per_row": round(sum(len(s) for s in texts) / clean_rows),
            "redact_rows_per_cpu_sec": round(clean_rows / cpu, 1) if cpu > 0 else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="JSON results file")
    ap.add_argument("--code", default=None,
                    help="import ech0 from this checkout instead (e.g. a `git archive` of HEAD)")
    ap.add_argument("--seeds", type=int, default=30, help="seeds of planted samples (37 secrets + 6 PII each)")
    ap.add_argument("--clean-rows", type=int, default=3000, help="synthetic clean rows for FP and speed")
    args = ap.parse_args(argv)
    if args.code:
        sys.path.insert(0, str(Path(args.code).resolve()))
        for m in [m for m in sys.modules if m == "ech0" or m.startswith("ech0.")]:
            del sys.modules[m]
    import ech0

    res = {"code": str(Path(ech0.__file__).resolve().parent), "corpora": {}}
    for name, rows in corpora().items():
        res["corpora"][name] = scan_corpus(name, rows)
    res["planted"] = planted(args.seeds, args.clean_rows)
    import platform

    res["machine"] = f"{platform.machine()} {os.cpu_count()} cores, CPython {platform.python_version()}"

    rules = sorted({k for c in res["corpora"].values() for k in c["hits_by_rule"]})
    print(f"{'corpus':22} {'rows':>5} {'fields':>6} {'hits':>5} {'intended':>8} {'FP':>4}  false positives by rule")
    for name, c in res["corpora"].items():
        fp = ", ".join(f"{k} {v}" for k, v in sorted(c["false_positives_by_rule"].items())) or "-"
        print(f"{name:22} {c['rows']:>5} {c['fields']:>6} {sum(c['hits_by_rule'].values()):>5} "
              f"{c['intended_hits']:>8} {c['false_positives']:>4}  {fp}")
    p = res["planted"]
    print(f"planted: secret recall {p['secret_recall']}, PII recall {p['pii_recall']} ({p['seeds']} seeds), "
          f"misses {p['misses_by_rule'] or '-'}; synthetic clean rows with a redaction "
          f"{p['synthetic_false_positive_rows']}/{p['synthetic_clean_rows']}; "
          f"redactor {p['redact_rows_per_cpu_sec']} rows/CPU-s (~{p['synthetic_bytes_per_row']} B rows)")
    if rules:
        print("rules with hits:", ", ".join(rules))
    if args.out:
        from ech0.io import atomic_write_json

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(args.out), res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
