"""The hub end to end on a real store: skip-if-done training, gate, register, promote on pass, served smoke."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
# the trained_run fixture's overrides: the pipeline finds that run finished and reuses it
SAME_AS_TRAINED_RUN = ["trainer.progress=false", "tracking.log_system_metrics=false", "trainer.precision=fp32"]


@pytest.fixture
def home(trained_run, tmp_path, clone_home):
    """A copy of the trained run's home: the same store and run folders, which the test may change."""
    from mlflow.tracking._tracking_service import utils as mlflow_utils

    home = clone_home(Path(trained_run.home), tmp_path / "clone")
    mlflow_utils._artifact_repos_cache.clear()  # same run ids as the original store: forget its artifact paths
    yield home
    mlflow_utils._artifact_repos_cache.clear()


@pytest.fixture
def clone_ctx(home, trained_run):
    """The Context of the copy, built once and passed to the pipeline (no stage reads the environment)."""
    return trained_run.ctx.with_(home=home, tracking_uri=f"sqlite:///{home / 'mlflow.db'}")


def test_pipeline_promotes_a_passing_model_and_smoke_checks_it(trained_run, home, clone_ctx, capsys):
    from mlflow.tracking import MlflowClient

    from ech0.pipeline import run

    r = run(clone_ctx, SAME_AS_TRAINED_RUN, preset="lora", promote_on_pass=True, smoke=True)
    assert r.train_run_id == trained_run.run_id, "an identical finished training run is reused, not redone"
    assert r.gate_passed and r.promoted and r.smoke_passed, r
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    mv = client.get_model_version_by_alias("ech0", "production")
    assert str(mv.version) == r.version and mv.run_id == trained_run.run_id
    parent = client.get_run(r.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["ech0.gate"] == "passed"
    assert parent.data.tags["ech0.registered_version"] == r.version and parent.data.tags["ech0.smoke"] == "passed"
    assert parent.data.metrics["pipeline/gate_passed"] == 1
    assert client.get_run(trained_run.run_id).data.metrics["eval/gate_passed"] == 1
    assert json.loads(Path(r.report).read_text())["verdict"]["passed"] is True
    out = capsys.readouterr().out  # each stage says in one line what it did
    assert f"register: version {r.version} registered from run {trained_run.run_id}" in out
    assert f"promote: production -> v{r.version} (was none)" in out
    assert "smoke: served ech0 v1: 4/4 golden prompts equal" in out and " checks passed on port " in out


def test_failed_gate_registers_but_never_promotes(trained_run, home, clone_ctx, tmp_path):
    from mlflow.tracking import MlflowClient

    from ech0.pipeline import run

    strict = tmp_path / "strict.jsonl"
    strict.write_text(json.dumps({"id": "impossible", "prompt": "What color is snow?",
                                  "checks": [{"type": "exact", "value": "Snow is a colour no model here knows."}]}) + "\n")
    r = run(clone_ctx, SAME_AS_TRAINED_RUN, preset="lora", baseline=str(strict), promote_on_pass=True, smoke=False)
    assert r.gate_passed is False and not r.promoted and r.version
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    assert "production" not in (client.get_registered_model("ech0").aliases or {})
    assert client.get_run(r.run_id).data.tags["ech0.gate"] == "failed"


# -- the whole chain as users type it: raw dump → data → train → gate → register → promote → served smoke

def _pipeline(run_cli, *args: str, env: dict):
    return run_cli("ech0.pipeline", "--mode", "pipeline", "--promote-on-pass", *args, env=env, timeout=900)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri, registry_uri=uri)  # not the process-wide registry URI an earlier test left


def _runs(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_id: r for r in client.search_runs([exp.experiment_id], max_results=200)}


def _interrupt_during_training(args: list[str], env: dict, repo_root: Path, wait_for,
                               hold_at_step) -> tuple[int, str, str]:
    """Start the pipeline, SIGTERM it while training is held after step 1; (exit code, stdout, stderr)."""
    import os
    import signal
    import subprocess
    import sys

    hold, held = hold_at_step(1)
    cmd = [sys.executable, "-m", "ech0.pipeline", "--mode", "pipeline", "--promote-on-pass", *args]
    proc = subprocess.Popen(cmd, cwd=repo_root, env={**os.environ, **env, **hold}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert wait_for(held.exists, 300, proc), "training never reached step 1"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr


def test_pipeline_from_a_raw_dump_on_a_tracking_server_interrupted_then_rerun(mlflow_server, ech0_home, tiny_model_dir,
                                                                               run_cli, repo_root, wait_for,
                                                                               hold_at_step, any_model_passes):
    """Through a real `mlflow server` (SQLite backend, proxied artifacts): SIGTERM during training ends
    the runs KILLED with nothing registered; the same command then continues (the finished data stage
    is skipped) to a promoted, served model; a third run skips every stage.

    This is about stopping and resuming on a server, not about quality: 20 training steps and a gate
    any model passes (test_demo_gate holds the demo's own 240-step run to the shipped gate)."""
    from ech0.sample_data import RAW_FILE
    from ech0.status import read_status

    env = {"MLFLOW_TRACKING_URI": mlflow_server, "ECH0_REGISTRY_NAME": "pipeline-server"}
    args = ["--input", str(RAW_FILE), "--name", "sample", "--baseline", str(any_model_passes),
            "tracking.experiment=pipeline-server", "trainer.max_steps=20", "trainer.progress=false",
            "tracking.log_system_metrics=false", "trainer.precision=fp32"]
    client = _client(mlflow_server)

    rc, stdout, stderr = _interrupt_during_training(args, env, repo_root, wait_for, hold_at_step)
    assert rc == 130, stdout[-2000:] + stderr[-2000:]
    assert "interrupted during stage train" in stderr and "Traceback" not in stderr
    (status_file,) = (ech0_home / "models").glob("*/status.json")
    assert read_status(status_file)["state"] == "interrupted"
    kinds = {r.data.tags["ech0.kind"]: r.info.status for r in _runs(client, "pipeline-server").values()}
    assert kinds == {"pipeline": "KILLED", "data": "FINISHED", "train": "KILLED"}, kinds
    assert not client.search_registered_models("name = 'pipeline-server'"), "nothing registered or promoted"

    out = _pipeline(run_cli, *args, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "skipped" in out.stdout.split("== data ==")[1].split("==")[0], "the finished data stage is not redone"
    for line in ("== train ==", "== eval ==", "== register ==", "== promote ==", "== smoke =="):
        assert line in out.stdout, line
    for said in ("\nregister: version 1 registered from run ", "\npromote: production -> v1 (was none)",
                 "\nsmoke: served pipeline-server v1: 4/4 golden prompts equal, "):
        assert said in out.stdout, said  # each stage says in one line what it did
    assert f"see it all     open {mlflow_server}" in out.stdout and "alias production" in out.stdout
    runs = [r for r in _runs(client, "pipeline-server").values() if r.info.status == "FINISHED"]
    parent = next(r for r in runs if r.data.tags["ech0.kind"] == "pipeline")
    data = next(r for r in runs if r.data.tags["ech0.kind"] == "data")
    train = next(r for r in runs if r.data.tags["ech0.kind"] == "train")
    genai = [r for r in runs if r.data.tags.get("ech0.kind") == "eval-view"]  # the gate's evaluation view
    assert len(genai) == 1 and genai[0].data.tags["mlflow.parentRunId"] == train.info.run_id
    assert len(runs) == 4 and train.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.data.tags["ech0.data_digest"] == data.data.tags["ech0.data_digest"]
    m = data.data.metrics  # every raw line accounted for, stage by stage
    assert m["raw/read"] == 291 and m["raw/kept"] + m["raw/rejected"] == 291 and m["raw/rejected"] >= 1
    assert m["processed/rejected.duplicate"] >= 3
    assert {a.path for a in client.list_artifacts(data.info.run_id, "manifests")} == {
        f"manifests/sample.{s}.manifest.json" for s in ("raw", "clean", "processed")}
    processed = ech0_home / "data" / "processed" / "sample.jsonl"
    assert train.data.params["data.train_file"] == str(processed)
    # held out by content from the processed rows, not the toy sample's own eval file (no override names one)
    assert train.data.params["data.eval_file"] == "None"
    assert "eval" in {t.value for d in train.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
    assert "AKIA" not in processed.read_text() and "jane.doe@example.com" not in processed.read_text()
    assert parent.data.tags["ech0.gate"] == "passed" and parent.data.tags["ech0.smoke"] == "passed"
    mv = client.get_model_version_by_alias("pipeline-server", "production")
    assert mv.run_id == train.info.run_id and str(mv.version) == parent.data.tags["ech0.registered_version"]

    again = _pipeline(run_cli, *args, "--no-smoke", env=env)  # same inputs: nothing is redone
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for stage in ("data", "train", "register", "promote"):
        assert "skipped" in again.stdout.split(f"== {stage} ==")[1].split("==")[0], stage
    stages = [r for r in _runs(client, "pipeline-server").values() if r.data.tags.get("ech0.kind") != "eval-view"]
    assert len(stages) == 6  # the first try's 3 runs, 2 of the second, 1 new parent (not the gate's evaluation views)
