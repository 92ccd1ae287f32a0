"""Checkpoints that cannot lie: hashed, renamed into place, verified on resume (real runs, tiny model, fp32).

A run of 6 steps with a checkpoint every 2 is killed with SIGKILL at a state it cannot skip (held after
step 5, or held inside the step-4 checkpoint write: tests/hold/), then its checkpoints are damaged the way
disks and copies damage files, and ``resume=true`` must fall back, refuse, or ignore the leftover, and a
resumed run must end exactly where an uninterrupted one does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real training subprocesses (each run ~1-3 min on a busy 2-core box)

# fp32 pinned: the resumed and the straight run are compared to 1e-6, whatever `auto` would pick here.
ARGS = ["ech0.train", "+preset=lora", "trainer.max_steps=6", "trainer.checkpoint_every=2",
        "trainer.keep_checkpoints=2", "trainer.eval_every=0", "trainer.precision=fp32", "trainer.progress=false",
        "tracking.log_model=false", "tracking.log_system_metrics=false"]


def _hold_env(flag: Path, **hold: int) -> dict:
    path = os.pathsep.join([str(Path(__file__).parent / "hold"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"PYTHONPATH": path, "ECH0_TEST_HOLD_FILE": str(flag), **{k: str(v) for k, v in hold.items()}}


def _killed_run(home: Path, wait_for, **hold: int) -> Path:
    """Start a training run in ``home``, wait until it is held (tests/hold/), SIGKILL it; its run folder."""
    flag = home.parent / f"{home.name}.held"
    proc = subprocess.Popen([sys.executable, "-m", *ARGS], cwd=Path(__file__).parent.parent,
                            env={**os.environ, "ECH0_HOME": str(home), **_hold_env(flag, **hold)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(flag.exists, 600, proc), f"the run was never held at {hold}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (run_dir,) = list((home / "models").iterdir())
    return run_dir


def _adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "adapter_model.safetensors"))


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max().item() <= 1e-6, k


@pytest.fixture(scope="module")
def straight(tiny_model_dir, tmp_path_factory, run_cli) -> dict:
    """The adapter of the same run, uninterrupted."""
    home = tmp_path_factory.mktemp("straight") / "home"
    done = run_cli(*ARGS, env={"ECH0_HOME": str(home)})
    assert done.returncode == 0, done.stderr[-2000:]
    (run_dir,) = list((home / "models").iterdir())
    return _adapter(run_dir)


@pytest.fixture(scope="module")
def killed(tiny_model_dir, tmp_path_factory, wait_for) -> Path:
    """An ECH0_HOME whose run was SIGKILLed after step 5: checkpoints step-2 and step-4 (do not write into it)."""
    home = tmp_path_factory.mktemp("killed") / "home"
    run_dir = _killed_run(home, wait_for, ECH0_TEST_HOLD_AT_STEP=5)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    return home


@pytest.fixture
def copy_of_killed(killed, tmp_path, clone_home) -> tuple[Path, Path]:
    """(home, run folder): a private copy of ``killed``, checkpoints included."""
    home = clone_home(killed, tmp_path / "clone")
    (src,) = list((killed / "models").iterdir())
    shutil.copytree(src / "checkpoints", home / "models" / src.name / "checkpoints")
    return home, home / "models" / src.name


def test_checkpoint_records_size_and_sha256_of_each_file(killed):
    from ech0.io import sha256_file
    from ech0.train import checkpoint

    (run_dir,) = list((killed / "models").iterdir())
    folder = run_dir / "checkpoints"
    assert not list(folder.glob(".*")), "a finished write leaves no hidden folder"
    for ckpt in folder.iterdir():
        files = json.loads((ckpt / "state.json").read_text())["files"]
        assert set(files) == {p.name for p in ckpt.iterdir()} - {"state.json"}
        for name, rec in files.items():
            assert rec == {"sha256": sha256_file(ckpt / name), "bytes": (ckpt / name).stat().st_size}
        assert checkpoint.problem(ckpt) is None
    assert checkpoint.latest(folder) == folder / "step-0000004"


def test_leftovers_and_unfinished_folders_never_count(copy_of_killed):
    from ech0.train import checkpoint

    _, run_dir = copy_of_killed
    folder = run_dir / "checkpoints"
    # what a killed writer of step 6 leaves: a hidden folder, complete inside; a step folder without state.json
    shutil.copytree(folder / "step-0000004", folder / ".step-0000006.tmp-4242")
    (folder / "step-0000008").mkdir()
    shutil.copy(folder / "step-0000004" / "optim.pt", folder / "step-0000008")
    assert "state.json: missing" in checkpoint.problem(folder / "step-0000008")
    assert checkpoint.latest(folder) == folder / "step-0000004"
    assert checkpoint.tidy(folder) == [folder / ".step-0000006.tmp-4242"]
    assert sorted(p.name for p in folder.iterdir()) == ["step-0000002", "step-0000004", "step-0000008"]
    # a checkpoint from before hashes were recorded (no "files") still loads
    legacy = folder / "step-0000004" / "state.json"
    state = json.loads(legacy.read_text())
    del state["files"]
    legacy.write_text(json.dumps(state))
    assert checkpoint.problem(folder / "step-0000004") is None


def test_truncated_newest_checkpoint_falls_back_and_ends_like_a_straight_run(copy_of_killed, run_cli, straight):
    from ech0.train import checkpoint

    home, run_dir = copy_of_killed
    folder = run_dir / "checkpoints"
    bad = folder / "step-0000004" / "trainable.safetensors"
    size = bad.stat().st_size
    with open(bad, "r+b") as f:  # a copy cut short / a full disk: the file ends early
        f.truncate(size // 2)
    resumed = run_cli(*ARGS, "resume=true", env={"ECH0_HOME": str(home)})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    said = [line for line in resumed.stderr.splitlines() if "checkpoint skipped" in line]
    assert said == [f"checkpoint skipped: {bad}: {size // 2} bytes, state.json records {size} (truncated or "
                    f"corrupted); resuming from {folder / 'step-0000002'}"], resumed.stderr[-2000:]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "succeeded"
    _assert_same(_adapter(run_dir), straight)
    assert checkpoint.problem(folder / "step-0000004") is None, "the redone step 4 wrote a new, intact checkpoint"
    assert not list(folder.glob(".*"))


def test_no_intact_checkpoint_refuses_with_one_line_naming_the_file(copy_of_killed, run_cli):
    home, run_dir = copy_of_killed
    folder = run_dir / "checkpoints"
    flipped = folder / "step-0000004" / "optim.pt"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit-rotten byte: same size, other hash
    flipped.write_bytes(bytes(data))
    state = folder / "step-0000002" / "state.json"
    state.write_text(state.read_text()[:40])  # cut mid-JSON
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    resumed = run_cli(*ARGS, "resume=true", env={"ECH0_HOME": str(home)})
    assert resumed.returncode == 2, resumed.stderr[-2000:]
    assert "Traceback" not in resumed.stderr
    assert resumed.stderr.strip().splitlines() == [
        f"error: {flipped}: sha256 differs from state.json (corrupted) (1 older checkpoint(s) bad too): no intact "
        "checkpoint to resume from; restore the file, or train a new run (resume=false)"]
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before, "the evidence is kept"


def test_sigkill_inside_a_checkpoint_write_leaves_nothing_that_looks_complete(tiny_model_dir, ech0_home, run_cli,
                                                                               wait_for, straight):
    from ech0.train import checkpoint

    # held inside the step-4 write: every file of its temp folder written, state.json with hashes too
    run_dir = _killed_run(ech0_home, wait_for, ECH0_TEST_HOLD_IN_CHECKPOINT=4)
    folder = run_dir / "checkpoints"
    (tmp,) = list(folder.glob(".step-0000004.tmp-*"))
    assert sorted(p.name for p in tmp.iterdir()) == ["optim.pt", "state.json", "trainable.safetensors"]
    assert sorted(p.name for p in folder.glob("step-*")) == ["step-0000002"], "no step-4 checkpoint may appear"
    assert checkpoint.latest(folder) == folder / "step-0000002"
    resumed = run_cli(*ARGS, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "checkpoint skipped" not in resumed.stderr  # a leftover is no checkpoint: nothing was skipped
    assert not tmp.exists() and not list(folder.glob(".*")), "the leftover is cleaned up"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "succeeded"
    _assert_same(_adapter(run_dir), straight)
