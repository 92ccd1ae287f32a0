"""Registry: register, list, promote (gate, force, aliases, stage mirror), rollback, history, repair.

Every test runs against the embedded SQLite store and against a real `mlflow server` (see the
``store`` fixture in tests/plugins/mlflow_server.py); each uses its own registered-model name.
"""

from __future__ import annotations

import json
import warnings

import pytest

from ech0.errors import UserError
from ech0.registry import history as hist, store as rstore


def client(store):
    return rstore.client(store.ctx)


def reg(store, name, which="passed", **kw):
    return rstore.register(store.ctx, store.runs[which], name=name, **kw)


def legacy_stages_supported(c) -> bool:
    return hasattr(c, "transition_model_version_stage")


def test_register_records_provenance_and_list_shows_it(store, model_name, registry_cli, tmp_path):
    report = tmp_path / "regression_report.json"
    report.write_text(json.dumps({"verdict": {"passed": False, "reasons": ["pass rate 0.500 < 0.8"]},
                                  "aggregates": {"mean_score": 0.4, "pass_rate": 0.5, "safety_flags": 0}}))
    code, out, err = registry_cli("register", "--run-id", store.runs["passed"], "--name", model_name,
                                  "--tracking-uri", store.uri)
    assert code == 0, err
    assert "version 1" in out and "gate passed" in out
    code, out, err = registry_cli("register", "--run-id", store.runs["passed"], "--name", model_name,
                                  "--tracking-uri", store.uri, "--eval-report", str(report), "--score", "0.41",
                                  "--datasets", str(store.source.cfg.data.train_file), "--base-model", "my-base")
    assert code == 0, err

    c = client(store)
    v1, v2 = c.get_model_version(model_name, "1"), c.get_model_version(model_name, "2")
    run = c.get_run(store.runs["passed"])
    t = v1.tags
    assert t["ech0.run_id"] == store.runs["passed"] and v1.run_id == store.runs["passed"]
    assert t["ech0.gate"] == "passed" and t["ech0.gate_source"].endswith("metrics") and t["ech0.score"] == "0.875"
    assert t["ech0.base_model"] == run.data.tags["ech0.base_model"]
    assert t["ech0.config"].endswith("config.yaml") and len(t["ech0.config_sha256"]) == 64
    assert json.loads(t["ech0.datasets"]) == {"sample-train": {t.key: t.value for t in run.inputs.dataset_inputs[0].tags}["sha256"]}
    assert "gate passed" in v1.description and store.runs["passed"] in v1.description
    t2 = v2.tags  # explicit flags win over the run's metrics
    assert t2["ech0.gate"] == "failed" and t2["ech0.score"] == "0.41" and t2["ech0.base_model"] == "my-base"
    assert t2["ech0.eval_report"] == str(report) and len(t2["ech0.eval_report_sha256"]) == 64
    assert t2["ech0.pass_rate"] == "0.5" and t2["ech0.safety_flags"] == "0"
    assert list(json.loads(t2["ech0.datasets"]).values())[0] == json.loads(t["ech0.datasets"])["sample-train"]

    rstore.register(store.ctx, store.runs["noeval"], name=model_name)
    code, out, _ = registry_cli("list", "--name", model_name, "--tracking-uri", store.uri)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["VERSION", "ALIASES", "STAGE", "SCORE", "GATE", "SMOKE", "CREATED", "RUN_ID"]
    assert [ln.split()[0] for ln in lines[1:]] == ["3", "2", "1"]
    assert lines[3].split()[4] == "passed" and lines[2].split()[4] == "failed" and lines[1].split()[4] == "none"
    assert store.runs["passed"] in lines[3] and "0.875" in lines[3]


def test_promote_needs_a_passed_gate_or_a_recorded_force(store, model_name, registry_cli):
    ok, bad, none = (reg(store, model_name, w) for w in ("passed", "failed", "noeval"))
    c = client(store)
    for mv, why in ((bad, "failed its gate"), (none, "has no evaluation")):
        code, out, err = registry_cli("promote", "--version", str(mv.version), "--name", model_name,
                                      "--tracking-uri", store.uri)
        assert code == 2 and why in err and "--force" in err and err.count("\n") == 1, err
    code, _, err = registry_cli("promote", "--version", str(bad.version), "--force", "--name", model_name,
                                "--tracking-uri", store.uri)
    assert code == 2 and "--reason" in err
    assert "production" not in c.get_registered_model(model_name).aliases

    code, out, err = registry_cli("promote", "--run-id", store.runs["passed"], "--stage", "production",
                                  "--name", model_name, "--tracking-uri", store.uri)
    assert code == 0 and "promoted v- -> v1" in out, err
    rm = c.get_registered_model(model_name)
    assert str(rm.aliases["production"]) == "1" and rm.tags["active_run"] == store.runs["passed"]
    assert str(c.get_model_version_by_alias(model_name, "production").version) == str(ok.version)
    move = hist.promote(store.ctx, version=bad.version, stage="production", force=True, reason="hotfix, eval is flaky",
                        name=model_name)
    assert move.event.forced and move.event.from_version == "1" and move.event.to_version == "2"
    rm = c.get_registered_model(model_name)
    assert str(rm.aliases["production"]) == "2" and rm.tags["active_run"] == store.runs["failed"]
    assert hist.promote(store.ctx, version=bad.version, name=model_name, force=True,
                        reason="again").event is None  # already there: no event
    hist.promote(store.ctx, version=ok.version, stage="staging", name=model_name)

    evts, problems = hist.history(store.ctx, name=model_name)
    assert problems == []
    assert [(e.seq, e.stage, e.action, e.from_version, e.to_version, e.forced) for e in evts] == [
        (1, "production", "promote", None, "1", False), (2, "production", "promote", "1", "2", True),
        (3, "staging", "promote", None, "1", False)]
    assert evts[1].reason == "hotfix, eval is flaky" and "pid" in evts[1].who and evts[1].at
    code, out, _ = registry_cli("history", "--name", model_name, "--tracking-uri", store.uri)
    assert code == 0 and "FORCED" in out and "hotfix" in out
    code, out, _ = registry_cli("list", "--name", model_name, "--tracking-uri", store.uri)
    assert "production" in out.splitlines()[2] and "staging" in out.splitlines()[3]
    if legacy_stages_supported(c):  # the deprecated stage field tells the same story
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stages = {v: c.get_model_version(model_name, v).current_stage for v in ("1", "2", "3")}
        assert stages == {"1": "Staging", "2": "Production", "3": "None"}


def test_rollback_walks_back_the_history(store, model_name, registry_cli):
    for which in ("passed", "passed", "passed"):
        reg(store, model_name, which)
    kw = {"name": model_name}
    code, _, err = registry_cli("rollback", "--name", model_name, "--tracking-uri", store.uri)
    assert code == 2 and "never promoted" in err
    for v in ("1", "2", "3"):
        hist.promote(store.ctx, version=v, **kw)
    c = client(store)
    code, out, err = registry_cli("rollback", "--name", model_name, "--tracking-uri", store.uri)
    assert code == 0 and "rolled back v3 -> v2" in out, err
    assert str(c.get_registered_model(model_name).aliases["production"]) == "2"
    if legacy_stages_supported(c):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert c.get_model_version(model_name, "2").current_stage == "Production"
            assert c.get_model_version(model_name, "3").current_stage == "Archived"
            assert [str(m.version) for m in c.get_latest_versions(model_name, ["Production"])] == ["2"]
    assert hist.rollback(store.ctx, **kw).version == "1"
    code, _, err = registry_cli("rollback", "--name", model_name, "--tracking-uri", store.uri)
    assert code == 2 and "no earlier version" in err and err.count("\n") == 1
    hist.promote(store.ctx, version="3", **kw)  # stack: 1, 3
    code, _, err = registry_cli("rollback", "--to-version", "2", "--name", model_name, "--tracking-uri", store.uri)
    assert code == 2 and "not an earlier production version" in err
    assert hist.rollback(store.ctx, to_version="1", **kw).version == "1"
    rm = c.get_registered_model(model_name)
    assert str(rm.aliases["production"]) == "1" and rm.tags["active_run"] == store.runs["passed"]
    evts, problems = hist.history(store.ctx, **kw)
    assert problems == [] and [e.action for e in evts] == ["promote"] * 3 + ["rollback"] * 2 + ["promote", "rollback"]


def test_alias_never_unexplained_half_done_moves_roll_forward_outside_moves_are_adopted(store, model_name,
                                                                                       registry_cli):
    for _ in range(3):
        reg(store, model_name)
    kw = {"name": model_name}
    hist.promote(store.ctx, version="1", **kw)
    c = client(store)
    # A process that died after writing event #2 but before moving the alias:
    e = hist.Event(seq=2, stage="production", action="promote", from_version="1", to_version="2",
                   run_id=store.runs["passed"])
    c.set_registered_model_tag(model_name, e.key, e.to_json())
    evts, problems = hist.history(store.ctx, **kw)
    assert any("alias production is on v1 but the history says v2" in p for p in problems)
    code, out, _ = registry_cli("history", "--repair", "--name", model_name, "--tracking-uri", store.uri)
    assert code == 0 and "rolled forward to v2" in out
    assert str(c.get_registered_model(model_name).aliases["production"]) == "2"
    # Someone moves the alias in the UI: the next move adopts it into the history first.
    c.set_registered_model_alias(model_name, "production", "3")
    move = hist.rollback(store.ctx, **kw)
    assert any("adopted" in r for r in move.repaired)
    evts, problems = hist.history(store.ctx, **kw)
    assert problems == []
    assert [(e.action, e.from_version, e.to_version) for e in evts][-2:] == [("adopt", "2", "3"), ("rollback", "3", "2")]
    assert str(c.get_registered_model(model_name).aliases["production"]) == "2"


def test_unknown_things_are_one_line_and_exit_2(store, model_name, registry_cli, tmp_path):
    reg(store, model_name)
    base = ["--name", model_name, "--tracking-uri", store.uri]
    cases = [
        (["register", "--run-id", "0" * 32], "not found"),
        (["register", "--run-dir", str(tmp_path / "nope")], "run folder not found"),
        (["register", "--run-id", store.runs["passed"], "--eval-report", str(tmp_path / "r.json")], "eval report not found"),
        (["register", "--run-id", store.runs["passed"], "--datasets", str(tmp_path / "d.jsonl")], "dataset not found"),
        (["promote", "--run-id", "f" * 32], "has no version"),
        (["promote", "--version", "99"], "version 99"),
        (["promote", "--version", "x1"], "expected a version number"),
        (["promote", "--version", "1", "--stage", "prod"], "unknown stage 'prod'"),
        (["rollback", "--stage", "canary"], "unknown stage"),
        (["rollback", "--to-version", "42"], "version 42"),
        (["package", "--alias", "nope", "--dest", "x"], "alias 'nope'"),
        (["package", "--version", "1", "--dest", "../escape"], "outside"),
        (["list", "--name", "no-such-model", "--tracking-uri", store.uri], "registered model 'no-such-model' not found"),
    ]
    for args, expected in cases:
        argv = args if "--name" in args else [*args, *base]
        code, out, err = registry_cli(*argv)
        assert code == 2, (args, out, err)
        assert expected in err and err.startswith("error: ") and err.count("\n") == 1, (args, err)


def test_cli_entry_points_without_traceback(sqlite_store, run_cli, repo_root):
    """The real commands (`ech0 registry`, the seed's script) in subprocesses: one line, exit 2.
    Not run per backend: what it checks is the entry points, not the store."""
    import os
    import subprocess
    import sys

    r = run_cli("ech0.cli", "registry", "promote", "--version", "1", "--stage", "bogus", env=sqlite_store.env(),
                timeout=300)
    assert r.returncode == 2 and r.stderr.strip() == "error: unknown stage 'bogus'; expected one of production, staging"
    r = subprocess.run([sys.executable, "scripts/model_registry.py", "list", "--name", "no-such-model"], cwd=repo_root,
                       capture_output=True, text=True, timeout=300, env={**os.environ, **sqlite_store.env()})
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert "registered model 'no-such-model' not found" in r.stderr


def test_promote_refuses_unregistered_model_name(store):
    with pytest.raises(UserError, match="not found"):
        hist.promote(store.ctx, version="1", name="never-registered-xyz")


def test_lock_waits_for_a_live_holder_and_breaks_a_dead_one(store, model_name, registry_cli):
    import time

    reg(store, model_name)
    c = client(store)
    lock = model_name + hist.LOCK_SUFFIX
    c.create_registered_model(lock, tags={"ech0.lock.owner": "other", "ech0.lock.expires": str(time.time() + 600),
                                          "ech0.lock.who": "someone@elsewhere pid 1"})
    code, _, err = registry_cli("promote", "--version", "1", "--lock-timeout", "1", "--name", model_name,
                                "--tracking-uri", store.uri)
    assert code == 2 and "locked by someone@elsewhere pid 1" in err and err.count("\n") == 1
    assert "production" not in c.get_registered_model(model_name).aliases
    c.set_registered_model_tag(lock, "ech0.lock.expires", str(time.time() - 1))  # its holder died
    assert hist.promote(store.ctx, version="1", name=model_name, lock_timeout=5).version == "1"
    assert not [m for m in c.search_registered_models(f"name = '{lock}'")]
