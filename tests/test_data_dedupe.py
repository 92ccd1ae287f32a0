"""Dedupe: exact (normalised) keeps the highest-quality copy; MinHash LSH near-duplicates.

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_data_dedupe.py
"""

from __future__ import annotations

import random

import numpy as np

from ech0.data.dedupe import MinHasher, estimate_jaccard, exact_jaccard, normalize, to_bbit


def text(rng, n=120):
    return " ".join(f"w{rng.randrange(5000)}" for _ in range(n))


def test_minhash_estimates_jaccard():
    rng = random.Random(0)
    mh = MinHasher()
    a, b, true = [], [], []
    for _ in range(200):
        t = text(rng).split()
        u = list(t)
        for _ in range(rng.randint(0, 20)):
            u[rng.randrange(len(u))] = f"x{rng.randrange(999)}"
        a.append(normalize(" ".join(t)))
        b.append(normalize(" ".join(u)))
        true.append(exact_jaccard(a[-1], b[-1]))
    est = estimate_jaccard((to_bbit(mh.signatures(a)) == to_bbit(mh.signatures(b))).mean(axis=1))
    err = est - np.array(true)
    assert abs(err.mean()) < 0.01 and err.std() < 0.05
    # deterministic across calls/batches
    assert (mh.signatures(a[:7]) == mh.signatures(a)[:7]).all()


def test_exact_dedupe_keeps_highest_quality(home, tmp_path, make_row, write_jsonl, read_jsonl, data_main, accounted):
    rows = [make_row("Q", "A", quality_score=0.2), make_row("q ", " a", quality_score=0.7),
            make_row("Q", "A", quality_score=None),
            make_row("other", "B", quality_score=0.1)]
    p = write_jsonl(tmp_path / "in.jsonl", rows)
    assert data_main("validate", "--input", str(p), "--name", "d", "--dedupe", "--no-progress")[0] == 0
    m = accounted("d", "clean")
    kept = read_jsonl(home / "data/clean/d.jsonl")
    assert [r["quality_score"] for r in kept] == [0.7, 0.1]
    rej = read_jsonl(home / "data/clean/d.rejects.jsonl")
    assert [(r["line"], r["reason"], r["duplicate_of_line"]) for r in rej] == [(1, "duplicate", 2), (3, "duplicate", 2)]
    assert m["dedupe"]["exact"]["rows_removed"] == 2 and m["dedupe"]["exact"]["clusters"] == 1


def test_near_dedupe(home, tmp_path, make_row, write_jsonl, read_jsonl, data_main, accounted):
    rng = random.Random(1)
    base = [text(rng) for _ in range(30)]
    rows = [make_row(f"prompt {i}", t, quality_score=0.5) for i, t in enumerate(base)]
    near = base[3].split()
    near[40] = "changed"  # one word: Jaccard ~0.92
    rows.append(make_row("prompt 3", " ".join(near), quality_score=0.9))
    far = base[5].split()
    for k in range(0, 120, 6):  # every 6th word: Jaccard well below 0.8
        far[k] = "z"
    rows.append(make_row("prompt 5", " ".join(far), quality_score=0.9))
    p = write_jsonl(tmp_path / "in.jsonl", rows)
    code, out, err = data_main("validate", "--input", str(p), "--name", "d", "--dedupe", "--no-progress")
    assert code == 0, err
    m = accounted("d", "clean")
    (rej,) = read_jsonl(home / "data/clean/d.rejects.jsonl")
    assert rej["reason"] == "near_duplicate" and rej["line"] == 4 and rej["duplicate_of_line"] == 31
    assert 0.8 <= rej["similarity"] < 1
    assert m["dedupe"]["near"]["rows_removed"] == 1 and m["dedupe"]["near"]["clusters"] == 1
    assert m["counts"]["kept"] == 31
    # --no-near-dedupe keeps it
    assert data_main("validate", "--input", str(p), "--name", "e", "--dedupe", "--no-near-dedupe",
                     "--no-progress")[0] == 0
    assert accounted("e", "clean")["counts"]["kept"] == 32


def test_workers_give_identical_output(home, tmp_path, make_row, write_jsonl, data_main, accounted):
    rng = random.Random(2)
    rows = [make_row(f"p{i % 50}", text(rng, 30), quality_score=round(rng.random(), 2)) for i in range(1500)]
    rows += rows[:100]
    p = write_jsonl(tmp_path / "in.jsonl", rows)
    for name, w in (("w1", "1"), ("w2", "2")):
        assert data_main("validate", "--input", str(p), "--name", name, "--dedupe", "--workers", w,
                         "--no-progress")[0] == 0
    a = (home / "data/clean/w1.jsonl").read_bytes()
    b = (home / "data/clean/w2.jsonl").read_bytes()
    assert a == b and accounted("w2", "clean")["counts"]["rejected"] == 100
