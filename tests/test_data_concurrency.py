"""Concurrent `ech0 data validate` runs on one ECH0_HOME: five datasets at once come out exactly as one
at a time would make them, every row accounted for; two writers of the same name take turns."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ech0.context import Context
from ech0.data import manifest as mf
from ech0.data.importers import run_import
from ech0.data.stage import ValidateOptions, run_validate
from ech0.io import sha256_file
from ech0.sample_data import RAW_FILE

DATASETS = 5


def _import_slices(ctx: Context, tmp_path) -> list[str]:
    """Five overlapping slices of the sample dump (dirty rows, duplicates) imported as ds0..ds4, each tagged."""
    lines = RAW_FILE.read_bytes().splitlines(keepends=True)
    names = []
    for k in range(DATASETS):
        src = tmp_path / f"slice{k}.jsonl"
        src.write_bytes(b"".join(lines[k * 35: k * 35 + 120]))
        run_import(ctx, str(src), name=f"ds{k}", tags=[f"ds{k}"], progress=False)
        names.append(f"ds{k}")
    return names


def _validate_all_at_once(ctx: Context, names: list[str], *args: str) -> None:
    env = {**os.environ, "ECH0_HOME": str(ctx.home)}
    procs = [subprocess.Popen([sys.executable, "-m", "ech0.data", "validate", "--input", n, "--no-progress", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for n in names]
    for n, p in zip(names, procs):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"{n}: {err[-2000:]}"
        assert "check: read " in out and "Traceback" not in err


def _outcome(ctx: Context, name: str, stage: str) -> dict:
    """What a validation decided, without its timestamps: counts, reasons, the files' hashes."""
    m = mf.load(mf.manifest_path(ctx, name, stage))
    return {"counts": m["counts"], "reasons": m["reject_reasons"], "redactions": m["redactions"],
            "output": m["output"]["sha256"], "rejects": m["rejects"]["sha256"], "input": m["input"]["sha256"]}


@pytest.mark.slow
def test_five_concurrent_validations_of_different_datasets_match_sequential_runs(ctx, tmp_path):
    names = _import_slices(ctx, tmp_path)
    _validate_all_at_once(ctx, names, "--stage", "clean")
    _validate_all_at_once(ctx, names, "--stage", "processed", "--dedupe")

    alone = ctx.with_(home=tmp_path / "one-at-a-time", tracking_uri="sqlite:///unused.db")
    assert _import_slices(alone, tmp_path) == names
    for n in names:
        run_validate(alone, ValidateOptions(input=n, stage="clean", progress=False, quiet=True))
        run_validate(alone, ValidateOptions(input=n, stage="processed", dedupe=True, progress=False, quiet=True))

    for n in names:
        mf.verify(ctx, mf.manifest_path(ctx, n, "processed"))  # re-hashes every file of raw -> clean -> processed
        for stage in ("clean", "processed"):
            got = _outcome(ctx, n, stage)
            assert got == _outcome(alone, n, stage), (n, stage)  # byte for byte what one process alone makes
            c = got["counts"]
            assert c["read"] == c["kept"] + c["rejected"] and sum(got["reasons"].values()) == c["rejected"]
        raw = mf.load(mf.manifest_path(ctx, n, "raw"))["counts"]
        clean = _outcome(ctx, n, "clean")["counts"]
        assert clean["read"] == raw["kept"] and raw["read"] == 120  # every imported row reached the next level
        rows = [json.loads(x) for x in ctx.data_file("processed", n).read_text().splitlines()]
        assert rows and all(r["tags"][-1] == n for r in rows), "no dataset holds another's rows"
        assert _outcome(ctx, n, "processed")["input"] == sha256_file(ctx.data_file("clean", n))
    assert not list(ctx.data_dir("clean").glob(".*")) and not list(ctx.data_dir("processed").glob(".*")), \
        "no spill or temp file left behind"


def test_a_writer_of_the_same_dataset_waits_and_names_the_holder(ctx, tmp_path):
    """While one process holds dataset ds0, `ech0 data validate` of ds0 says whom it waits for, then runs
    once the holder lets go; a dataset of another name is not held up."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(RAW_FILE.read_bytes().splitlines(keepends=True)[:40]))
    run_import(ctx, str(src), name="ds0", progress=False)
    run_import(ctx, str(src), name="other", progress=False)
    env = {**os.environ, "ECH0_HOME": str(ctx.home)}
    cmd = [sys.executable, "-m", "ech0.data", "validate", "--stage", "clean", "--no-progress", "--input"]

    holder = mf.DatasetLock(ctx, "ds0", "the test")
    with holder.writing():
        free = subprocess.run(cmd + ["other"], capture_output=True, text=True, env=env, timeout=300)
        assert free.returncode == 0 and "waiting" not in free.stderr, free.stderr[-2000:]
        waiter = subprocess.Popen(cmd + ["ds0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        said = ""
        while not said.startswith("waiting") and (line := waiter.stderr.readline()):  # blocks: no clock involved
            said = line
        assert said.startswith(f"waiting for dataset ds0: pid {os.getpid()} on host ") and "the test" in said, said
        assert waiter.poll() is None and not mf.manifest_path(ctx, "ds0", "clean").exists()
    out, err = waiter.communicate(timeout=300)
    assert waiter.returncode == 0, err[-2000:]
    mf.verify(ctx, mf.manifest_path(ctx, "ds0", "clean"))
