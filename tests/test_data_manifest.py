"""Manifests: raw -> clean -> processed chain, verify (tamper detection), real seed data, trainer API.

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_data_manifest.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SEED = Path(__file__).resolve().parents[2] / "shared" / "data" / "seed_tasks.jsonl"


@pytest.fixture
def pipeline(data_main, byte_tokenizer):
    """``pipeline(src, name)``: import -> clean (--max-tokens, --min-quality) -> processed (--dedupe)."""

    def run(src, name, max_tokens="2048"):
        assert data_main("import", "--input", str(src), "--name", name, "--tag", "seed", "--no-progress")[0] == 0
        code, out, err = data_main("validate", "--input", name, "--stage", "clean", "--max-tokens", max_tokens,
                                   "--min-quality", "0.25", "--tokenizer", str(byte_tokenizer), "--no-progress")
        assert code == 0, err
        code, out, err = data_main("validate", "--input", name, "--stage", "processed", "--dedupe",
                                   "--fail-on-secrets", "--tokenizer", str(byte_tokenizer), "--no-progress")
        assert code == 0, err
        return out

    return run


def test_chain_and_verify(home, ctx, tmp_path, pipeline, make_row, write_jsonl, data_main, data_cli, accounted):
    src = write_jsonl(tmp_path / "crypto.jsonl", [make_row(f"q{i}", f"a{i}", quality_score=i / 10) for i in range(10)]
                      + [make_row("q9", "a9", quality_score=0.95)])
    pipeline(src, "crypto")
    raw, clean, proc = (accounted("crypto", s) for s in ("raw", "clean", "processed"))
    assert clean["reject_reasons"] == {"low_quality": 3} and proc["reject_reasons"] == {"duplicate": 1}
    assert proc["input"]["sha256"] == clean["output"]["sha256"] and clean["input"]["sha256"] == raw["output"]["sha256"]
    assert proc["parent"]["path"] == "metadata/crypto.clean.manifest.json" and raw["parent"] is None
    for m in (raw, clean, proc):
        assert m["schema_version"] == 1 and m["ech0_version"] and "git_commit" in m and m["finished_at"]
        assert {"sha256", "bytes", "rows", "path"} <= set(m["output"])
    assert clean["options"]["max_tokens"] == 2048 and clean["options"]["min_quality"] == 0.25
    assert clean["tokens"]["rows_measured"] >= 1
    code, out, err = data_main("verify", "crypto.processed")
    assert code == 0 and "chain of 3" in out, err

    from ech0.data import processed_dataset
    from ech0.data.manifest import dataset_digest
    from ech0.io import sha256_file

    ds = processed_dataset(ctx, "crypto")
    assert ds["digest"] == sha256_file(home / "metadata/crypto.processed.manifest.json") == dataset_digest(ds["manifest"])
    assert [p.name for p in ds["chain"]] == ["crypto.processed.manifest.json", "crypto.clean.manifest.json",
                                             "crypto.raw.manifest.json"]
    assert ds["rows"] == 7 and ds["path"] == home / "data/processed/crypto.jsonl"

    # tamper with the clean output: verify of the processed chain fails, exit 1, one line
    f = home / "data/clean/crypto.jsonl"
    original = f.read_bytes()
    f.write_bytes(original.replace(b'"q5"', b'"q6"'))
    r = data_cli("verify", str(home / "metadata/crypto.processed.manifest.json"))
    assert r.returncode == 1 and "crypto.jsonl" in r.stderr and r.stderr.count("\n") == 1
    assert "FAIL" in r.stdout
    # tamper with a parent manifest
    f.write_bytes(original)
    assert data_main("verify", "crypto.processed")[0] == 0
    mp = home / "metadata/crypto.raw.manifest.json"
    data = json.loads(mp.read_text())
    data["counts"]["kept"] += 1
    mp.write_text(json.dumps(data))
    code, out, err = data_main("verify", "crypto.processed")
    assert code == 1 and "parent manifest changed" in err


def test_rerun_is_deterministic(home, tmp_path, pipeline, make_row, write_jsonl, data_main):
    src = write_jsonl(tmp_path / "d.jsonl", [make_row(f"q{i}", "a") for i in range(20)])
    pipeline(src, "d")
    first = (home / "data/processed/d.jsonl").read_bytes()
    pipeline(src, "d")
    assert (home / "data/processed/d.jsonl").read_bytes() == first
    assert data_main("verify", "d.processed")[0] == 0


@pytest.mark.skipif(not SEED.is_file(), reason="../shared/data/seed_tasks.jsonl not present")
def test_real_seed_tasks(pipeline, data_main, data_manifest, accounted):
    pipeline(SEED, "seed", max_tokens="4096")
    raw = accounted("seed", "raw")
    n_instances = sum(len(json.loads(x)["instances"]) for x in SEED.open())
    assert raw["counts"] == {"read": n_instances, "kept": n_instances, "rejected": 0}
    assert raw["shapes"] == {"self_instruct": 175}
    clean = accounted("seed", "clean")
    proc = accounted("seed", "processed")
    assert clean["counts"]["read"] == n_instances
    assert proc["counts"]["read"] == clean["counts"]["kept"]
    assert proc["counts"]["kept"] + proc["counts"]["rejected"] == clean["counts"]["kept"]
    assert clean["redactions"].get("pii:EMAIL", 0) >= 1  # the seed set holds a few example e-mails
    assert proc["parent"]["sha256"] and proc["input"]["sha256"] == clean["output"]["sha256"]
    code, vout, err = data_main("verify", "seed.processed")
    assert code == 0, err
    assert data_manifest("seed", "raw")["input"]["sha256"]
