"""Two `ech0 pipeline --input X` at once on one ECH0_HOME and one SQLite store, with the same dataset name.

Same input: the second waits for the first's data stage (one line names the holder), reuses what it
made, and both train into their own runs and folders, register and promote; the registry history
stays consistent. Other input under the same name: the second waits until no pipeline trains on the
old rows, then rebuilds the dataset from its own bytes (never silently reusing the other's).
Each test holds one process at a state it cannot skip (no clock is raced).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from ech0.data import manifest as mf
from ech0.io import FileLock, sha256_file
from ech0.sample_data import RAW_FILE

pytestmark = pytest.mark.slow

# Holds a pipeline inside its data stage (the dataset's locks taken, nothing written) until RELEASE exists.
HOLD_IN_DATA_STAGE = r"""
import sys, time
from pathlib import Path
import ech0.pipeline as p
flag, release = Path(sys.argv[1]), Path(sys.argv[2])
make = p._make_dataset
def held(*args, **kwargs):
    flag.write_text("held\n")
    while not release.exists():
        time.sleep(0.05)
    return make(*args, **kwargs)
p._make_dataset = held
sys.exit(p.main(sys.argv[3:]))
"""


@pytest.fixture
def args(any_model_passes):
    """Pipeline flags: a tiny training and a gate that any model passes (this is about concurrency, not quality)."""
    return ["--mode", "pipeline", "--promote-on-pass", "--no-smoke", "--baseline", str(any_model_passes),
            "--name", "sample", "trainer.max_steps=2", "trainer.progress=false", "tracking.log_system_metrics=false",
            "trainer.precision=fp32"]


def _popen(cmd: list[str], env: dict, repo_root) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=repo_root, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _read_until(proc: subprocess.Popen, marker: str) -> tuple[str, str]:
    """Lines of ``proc``'s stdout up to the first holding ``marker`` (blocks on the pipe; '' at EOF)."""
    seen = []
    while line := proc.stdout.readline():
        seen.append(line)
        if marker in line:
            return "".join(seen), line
    return "".join(seen), ""


def _section(out: str, stage: str) -> str:
    return out.split(f"== {stage} ==")[1].split("\n== ")[0]


def _runs(ctx) -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(ctx.tracking_uri)
    exp = c.get_experiment_by_name("ech0")
    return c.search_runs([exp.experiment_id], max_results=100)


def _chain_starts_from(ctx, src) -> bool:
    raw = mf.load(mf.chain(ctx, mf.manifest_path(ctx, "sample", "processed"))[-1])
    return raw["input"]["sha256"] == sha256_file(src)


def _locks_free(ctx) -> bool:
    """Both of the dataset's locks can be taken exclusively at once, without waiting."""
    def busy(holder):
        raise AssertionError(f"still held by {holder}")
    locks = [FileLock(ctx.metadata_dir / "locks" / name, "the test") for name in ("sample.write.lock", "sample.use.lock")]
    for lock in locks:
        lock.acquire(on_wait=busy)  # raises instead of waiting
    for lock in locks:
        lock.release()
    return True


def test_same_input_at_once_second_waits_for_the_data_stage_then_both_succeed(ctx, args, repo_root, wait_for,
                                                                                 tmp_path):
    from ech0.registry import history as hist, store as rstore

    flag, release = tmp_path / "held", tmp_path / "release"
    first = _popen([sys.executable, "-c", HOLD_IN_DATA_STAGE, str(flag), str(release), "--input", str(RAW_FILE), *args],
                   {}, repo_root)
    assert wait_for(flag.exists, 300, first), "the first pipeline never reached its data stage"
    second = _popen([sys.executable, "-m", "ech0.pipeline", "--input", str(RAW_FILE), *args], {}, repo_root)
    before, said = _read_until(second, "waiting for dataset sample:")
    assert f"pid {first.pid} on host {socket.gethostname()}" in said and "is writing it" in said, before[-2000:]
    assert not mf.manifest_path(ctx, "sample", "raw").exists(), "nothing written while the first is held"
    release.write_text("go\n")
    out1, err1 = first.communicate(timeout=900)
    out2, err2 = second.communicate(timeout=900)
    out2 = before + out2
    assert first.returncode == 0, out1[-3000:] + err1[-3000:]
    assert second.returncode == 0, out2[-3000:] + err2[-3000:]
    assert "skipped: data/processed/sample.jsonl was already made from sample_raw.jsonl" in _section(out2, "data")
    assert "skipped" not in _section(out1, "data")
    for err in (err1, err2):
        assert "database is locked" not in err and "Traceback" not in err

    runs = _runs(ctx)
    # each pipeline's gate also in MLflow's evaluation view; where the first has promoted v1 before the
    # second's gate runs (the two race there), that gate also scores the champion and logs its view
    views = sorted(r.data.tags["ech0.eval.view_of"] for r in runs if r.data.tags["ech0.kind"] == "eval-view")
    assert views in (["candidate"] * 2, ["candidate", "candidate", "champion"]), views
    kinds = sorted((r.data.tags["ech0.kind"], r.info.status) for r in runs)
    assert kinds == [("data", "FINISHED")] + [("eval-view", "FINISHED")] * len(views) + \
        [("pipeline", "FINISHED")] * 2 + [("train", "FINISHED")] * 2, kinds
    mf.verify(ctx, mf.manifest_path(ctx, "sample", "processed"))  # the chain one process made, intact
    assert _chain_starts_from(ctx, RAW_FILE)
    data = next(r for r in runs if r.data.tags["ech0.kind"] == "data")
    assert data.data.metrics["raw/read"] == 291 == data.data.metrics["raw/kept"] + data.data.metrics["raw/rejected"]
    trains = [r for r in runs if r.data.tags["ech0.kind"] == "train"]
    assert len({r.info.run_id for r in trains}) == 2  # each pipeline its own run and folder
    for r in trains:
        assert (ctx.run_dir(r.info.run_id) / "model").is_dir()
        assert (ctx.run_dir(r.info.run_id) / "reports" / "regression_report.json").is_file()
    digests = {r.data.tags["ech0.data_digest"] for r in runs if r.data.tags["ech0.kind"] == "pipeline"}
    assert digests == {mf.dataset_digest(mf.manifest_path(ctx, "sample", "processed"))}

    versions = rstore.client(ctx).search_model_versions("name = 'ech0'")
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in trains)
    events, problems = hist.history(ctx, name="ech0")
    assert problems == [] and [e.seq for e in events] == [1, 2] and {e.action for e in events} == {"promote"}
    production = rstore.client(ctx).get_model_version_by_alias("ech0", "production")
    assert str(production.version) == str(events[-1].to_version)
    assert _locks_free(ctx)


def test_same_name_other_input_waits_until_no_pipeline_trains_on_the_old_rows(ctx, args, repo_root, wait_for,
                                                                              hold_at_step, tmp_path):
    other = tmp_path / "other_dump.jsonl"
    other.write_bytes(b"".join(RAW_FILE.read_bytes().splitlines(keepends=True)[:200]))
    hold, held = hold_at_step(1)
    first = _popen([sys.executable, "-m", "ech0.pipeline", "--input", str(RAW_FILE), *args], hold, repo_root)
    assert wait_for(held.exists, 300, first), "the first pipeline never reached training step 1"
    second = _popen([sys.executable, "-m", "ech0.pipeline", "--input", str(other), *args], {}, repo_root)
    before, said = _read_until(second, "waiting for dataset sample:")
    assert f"pid {first.pid} on host " in said and "trains on its current rows" in said, before[-2000:]
    assert _chain_starts_from(ctx, RAW_FILE), "the rows the first trains on are untouched while it runs"

    first.send_signal(signal.SIGTERM)  # the first ends (KILLED); its shared hold goes with it
    _, err1 = first.communicate(timeout=120)
    assert first.returncode == 130, err1[-2000:]
    out2, err2 = second.communicate(timeout=900)
    out2 = before + out2
    assert second.returncode == 0, out2[-3000:] + err2[-3000:]
    assert "skipped" not in _section(out2, "data"), "other bytes are never served from the first's dataset"
    mf.verify(ctx, mf.manifest_path(ctx, "sample", "processed"))
    assert _chain_starts_from(ctx, other)

    runs = _runs(ctx)
    data = sorted((r for r in runs if r.data.tags["ech0.kind"] == "data"), key=lambda r: r.info.start_time)
    assert [r.data.params["data.input_sha256"] for r in data] == [sha256_file(RAW_FILE), sha256_file(other)]
    assert [r.data.metrics["raw/read"] for r in data] == [291, 200]
    parent = next(r for r in runs if r.data.tags["ech0.kind"] == "pipeline" and r.info.status == "FINISHED")
    assert parent.data.tags["ech0.data_digest"] == mf.dataset_digest(mf.manifest_path(ctx, "sample", "processed"))
    assert _locks_free(ctx)
