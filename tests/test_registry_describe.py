"""The registry pages a person reads in the MLflow UI: the version description, the registered model's
history and ``registry/history.json`` (ech0/registry/describe.py).

Real stores (the embedded SQLite store and, where marked, a real ``mlflow server``: the ``store``
fixture of tests/plugins/mlflow_server.py), real runs with the trained pyfunc, real CLI calls.
"""

from __future__ import annotations

import json

import pytest

from ech0 import tracking
from ech0.registry import describe, history as hist, store as rstore


def _gate_report(path, passed: bool, pass_rate: float, reasons=()):
    path.write_text(json.dumps({
        "gate": {"min_pass_rate": 0.8, "min_mean_score": 0.85},
        "verdict": {"passed": passed, "reasons": list(reasons)},
        "aggregates": {"cases": 8, "passed": round(8 * pass_rate), "pass_rate": pass_rate, "mean_score": 0.9,
                       "safety_flags": 0}}))
    return path


def test_version_description_says_base_data_config_and_gate_with_links(store, model_name, registry_cli, tmp_path):
    """A run as training + eval leave it (config, data manifest, gate report as artifacts), registered
    without --eval-report: the description links them all and reads the gate's thresholds from the
    report in the run's artifacts (downloaded: its local path is gone)."""
    run_id = store.log_run(gate=1.0, score=0.9, with_dataset=True)
    logger = tracking.attach(store.ctx, run_id)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("preset: lora\n")
    manifest = tmp_path / "sample.processed.manifest.json"
    manifest.write_text("{}")
    (tmp_path / "eval").mkdir()
    report = _gate_report(tmp_path / "eval" / "regression_report.json", True, 0.875)
    (tmp_path / "eval" / "regression_report.md").write_text("# Regression report: PASSED\n")
    logger.log_artifact(cfg, "config")
    logger.log_artifact(manifest, "data/training")
    logger.log_artifact(report, "eval")
    logger.log_artifact(tmp_path / "eval" / "regression_report.md", "eval")
    view = store.log_run()  # stands in for the run holding the gate's cases in MLflow's evaluation view
    logger.set_tags({describe.GENAI_VIEW_TAG: view})
    report.unlink()

    code, out, err = registry_cli("register", "--run-id", run_id, "--name", model_name, "--tracking-uri", store.uri)
    assert code == 0, err
    c = rstore.client(store.ctx)
    mv, run = c.get_model_version(model_name, "1"), c.get_run(run_id)
    d, exp = mv.description, run.info.experiment_id
    rows = {ln.split("|")[1].strip(): ln.split("|", 2)[2].rsplit("|", 1)[0].strip()
            for ln in d.splitlines() if ln.startswith("| **")}
    assert [k for k in rows if k != "**Model**"] == [  # Model: the logged model and step, where registering knows them
        "**Base model**", "**Training data**", "**Config**", "**Gate**", "**Run**"]
    assert d.splitlines()[0].startswith("ech0 lora fine-tune of ") and "gate passed" in d.splitlines()[0]
    assert f"`{run.data.tags['ech0.base_model']}`" in rows["**Base model**"]

    inp = run.inputs.dataset_inputs[0]
    n_rows = sum(1 for line in open(store.source.cfg.data.train_file) if line.strip())
    sha = {t.key: t.value for t in inp.tags}["sha256"]
    link = f"#/experiments/{exp}/runs/{run_id}"
    assert rows["**Training data**"] == (f"`sample-train`: {n_rows} rows, manifest `{sha[:12]}` · [manifest]"
                                         f"({link}/artifactPath/data/training/sample.processed.manifest.json)")
    assert rows["**Config**"].startswith("preset `lora`") and f"[config.yaml]({link}/artifactPath/config/config.yaml)" \
        in rows["**Config**"] and mv.tags["ech0.config_sha256"][:12] in rows["**Config**"]
    assert rows["**Gate**"] == ("**passed**, 7/8 cases, pass rate 0.875 (gate ≥ 0.8), "
                                "mean score 0.900 (gate ≥ 0.85), safety flags 0 · "
                                f"[report]({link}/artifactPath/eval/regression_report.md) · "
                                f"[each case](#/experiments/{exp}/runs/{view}/evaluations)")
    assert rows["**Run**"].startswith(f"[registry-test]({link})") and mv.tags["ech0.registered_by"] in rows["**Run**"]
    assert len(d) <= describe.DESCRIPTION_MAX


def test_a_failed_gate_reads_as_failed_with_its_reasons_and_the_run_params_show(sqlite_store, model_name,
                                                                                  registry_cli, tmp_path):
    from mlflow.entities import Param

    store = sqlite_store
    run_id = store.log_run()
    tracking.attach(store.ctx, run_id).client.log_batch(run_id, params=[
        Param(k, v) for k, v in (
            ("trainer.learning_rate", "0.005"), ("trainer.max_steps", "120"), ("trainer.grad_accum", "1"),
            ("peft._target_", "ech0.train.adapters.lora"), ("peft.r", "16"), ("seed", "42"))], synchronous=True)
    report = _gate_report(tmp_path / "r.json", False, 0.5, ["pass rate 0.500 < 0.8", "count 1/5"])
    code, _, err = registry_cli("register", "--run-id", run_id, "--name", model_name, "--tracking-uri", store.uri,
                                "--eval-report", str(report), "--description", "candidate from the night run")
    assert code == 0, err
    d = rstore.client(store.ctx).get_model_version(model_name, "1").description
    assert d.startswith("candidate from the night run\n\n| | |")  # the person's text first
    gate = next(ln for ln in d.splitlines() if ln.startswith("| **Gate**"))
    assert "**failed**, 4/8 cases, pass rate 0.500 (gate ≥ 0.8)" in gate
    assert "pass rate 0.500 < 0.8; count 1/5" in gate and "[report]" not in gate  # no report in the run to link
    assert gate.endswith(f"(report {report}) |") and "[each case]" not in gate
    config = next(ln for ln in d.splitlines() if ln.startswith("| **Config**"))
    assert "lr 0.005, steps 120, LoRA r 16, seed 42" in config and "grad accum" not in config  # 1 is the default
    assert "| **Training data** |" not in d  # the run logged no dataset: nothing claimed

    run_id = store.log_run()
    code, _, err = registry_cli("register", "--run-id", run_id, "--name", model_name, "--tracking-uri", store.uri)
    d = rstore.client(store.ctx).get_model_version(model_name, "2").description
    assert code == 0 and "| **Gate** | no evaluation recorded" in d, err


def _page(store, name) -> str:
    return rstore.client(store.ctx).get_registered_model(name).description


def _table(store, run_id, name) -> list[int]:
    c = rstore.client(store.ctx)
    logged = json.loads(c.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert {"path": describe.HISTORY_ARTIFACT, "type": "table"} in logged  # what makes the UI offer "View as table"
    df = c.load_table(c.get_run(run_id).info.experiment_id, describe.HISTORY_ARTIFACT, run_ids=[run_id])
    return df[df["model"] == name]["seq"].tolist()  # the shared runs also hold other tests' models


def test_every_move_rewrites_the_page_and_adds_a_row_to_the_runs_it_touched(store, model_name, registry_cli):
    a, b = store.log_run(gate=1.0, score=0.9), store.log_run(gate=1.0, score=0.95)
    base = ["--name", model_name, "--tracking-uri", store.uri]
    for args in (["register", "--run-id", a], ["register", "--run-id", b], ["promote", "--version", "1"],
                 ["promote", "--version", "2"], ["rollback", "--reason", "v2 | too slow"],
                 ["promote", "--version", "2", "--stage", "staging"]):
        code, out, err = registry_cli(*args, *base)
        assert code == 0 and "note:" not in out, (args, out, err)
    page = _page(store, model_name)
    before, ours = page.split(describe.HISTORY_HEADING)
    assert before.strip() == "ech0 fine-tuned causal LM; aliases: production, staging"  # what register wrote
    link = f"#/models/{model_name}/versions"
    assert f"- **production** → [version 1]({link}/1), since " in ours and "(rollback #3)" in ours
    assert f"- **staging** → [version 2]({link}/2)" in ours
    events = [ln for ln in ours.splitlines() if ln.startswith("- #")]
    assert [ln.split()[1] for ln in events] == ["#4", "#3", "#2", "#1"]  # newest first
    assert f"**rollback** v2 → [v1]({link}/1) · v2 \\| too slow · " in events[1]  # a pipe cannot break the line
    assert f"**promote** - → [v1]({link}/1) · gate passed" in events[3]
    assert _table(store, a, model_name) == [1, 2, 3]  # to v1, from v1, back to v1
    assert _table(store, b, model_name) == [2, 3, 4]  # to v2, from v2, v2 to staging

    code, out, _ = registry_cli("promote", "--version", "2", "--stage", "staging", *base)  # no move: nothing new
    assert code == 0 and "nothing to do" in out and _page(store, model_name) == page
    assert _table(store, b, model_name) == [2, 3, 4]


def test_a_persons_text_is_kept_and_repair_rewrites_the_page(sqlite_store, model_name, registry_cli):
    store = sqlite_store
    c = rstore.client(store.ctx)
    rstore.register(store.ctx, store.runs["passed"], name=model_name)
    hist.promote(store.ctx, version="1", name=model_name)
    c.update_registered_model(model_name, description=f"Owner: the eval team\n\n{describe.HISTORY_HEADING}\n\nstale")
    code, out, _ = registry_cli("history", "--repair", "--name", model_name, "--tracking-uri", store.uri)
    assert code == 0, out
    fixed = _page(store, model_name)
    assert fixed.startswith("Owner: the eval team\n\n" + describe.HISTORY_HEADING) and fixed.count("- #1 · ") == 1
    assert "stale" not in fixed and "- **production** → [version 1]" in fixed
    c.update_registered_model(model_name, description="Owner: the eval team")  # the history cut away in the UI
    registry_cli("history", "--repair", "--name", model_name, "--tracking-uri", store.uri)
    assert _page(store, model_name) == fixed
    rstore.register(store.ctx, store.runs["passed"], name=model_name)
    hist.promote(store.ctx, version="2", name=model_name)
    assert _page(store, model_name).startswith("Owner: the eval team\n\n") and "- #2 · " in _page(store, model_name)


def test_a_long_history_keeps_the_newest_events_within_mlflows_limit():
    events = [hist.Event(seq=i, stage="production", action="promote", from_version=str(i - 1) if i > 1 else None,
                         to_version=str(i), at=f"2026-12-01T10:{i % 60:02d}:00+00:00", who="ci@host pid 1",
                         reason="nightly " + "x" * 40, run_id="r" * 32) for i in range(1, 201)]
    text = describe.model_description("a person's note", "ech0", events, {"production": "200", "staging": None})
    assert len(text) <= describe.DESCRIPTION_MAX
    lines = [ln for ln in text.splitlines() if ln.startswith("- #")]
    assert lines[0].startswith("- #200 · ") and 20 < len(lines) < 200
    assert text.endswith(f"{200 - len(lines)} older events: `ech0 registry history --name ech0`")
    assert text.startswith("a person's note\n\n") and "- **staging**: no version yet" in text


@pytest.mark.parametrize("value, expected", [("a | b", "a \\| b"), ("two\nlines", "two lines")])
def test_a_table_cell_stays_one_cell(value, expected):
    assert describe.cell(value) == expected


def test_a_mover_who_may_not_write_the_run_gets_a_note_and_the_move(mlflow_auth_server, trained_run, tmp_path,
                                                                    registry_cli, monkeypatch):
    """EDIT on the registered model, READ on the run's experiment: the move and the page happen, the
    run's history row cannot, and the move says so in a note (exit 0)."""
    from mlflow import MlflowClient

    from ech0.context import Context
    from tests.plugins.mlflow_server import _log_run

    srv, name, user = mlflow_auth_server, "describe-notes", "describe-promoter"
    srv.create_user(user)
    with srv.admin():
        ctx = Context(home=tmp_path, tracking_uri=srv.url)
        run_id = _log_run(ctx, trained_run, gate=1.0, score=0.9)
        exp = MlflowClient(srv.url).get_run(run_id).info.experiment_id
        rstore.register(ctx, run_id, name=name)
    srv.grant(user, "registered_model", name, "EDIT")
    srv.grant(user, "experiment", exp, "READ")
    for k, v in srv.env(user).items():
        monkeypatch.setenv(k, v)
    code, out, err = registry_cli("promote", "--version", "1", "--name", name, "--tracking-uri", srv.url)
    assert code == 0 and "promoted v- -> v1" in out, err
    assert out.endswith(f"\n  note: history row not added to run {run_id}'s {describe.HISTORY_ARTIFACT} "
                        "(no EDIT on its experiment)\n"), out
    with srv.admin():
        c = MlflowClient(srv.url, registry_uri=srv.url)
        page = c.get_registered_model(name).description
        assert describe.HISTORY_ARTIFACT not in [a.path for a in c.list_artifacts(run_id, "registry")]
    assert f"- **production** → [version 1](#/models/{name}/versions/1)" in page
