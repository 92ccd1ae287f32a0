"""The training benchmark's one-minute smoke version runs and reports every figure (not a timed test)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_train_throughput_quick(tmp_path, run_cli):
    out = tmp_path / "tt.json"
    proc = run_cli("benchmarks.train_throughput", "--quick", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for key in ("ech0_tokens_per_sec", "trl_tokens_per_sec", "hf_tokens_per_sec", "speedup_vs_trl", "speedup_vs_hf",
                "ech0_heldout_loss", "trl_heldout_loss", "mfu", "peak_rss_mb", "logging_overhead"):
        assert isinstance(r[key], (int, float)) and r[key] == r[key], key
    assert r["ech0_tokens_per_sec"] > 0 and r["peak_gflops_fp32"] > 0
    assert r["length_max"] > 4 * r["length_median"] > 16 * r["length_min"] / 4, "long-tailed lengths"
