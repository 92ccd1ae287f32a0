"""Who may do what: the registry against a real ``mlflow server --app-name basic-auth``.

No login or a wrong password, and a READ user's writes, are refused with one line (exit 2) that names
the user, the operation and the permission it needs, before anything is written; EDIT and MANAGE users
can do everything. The users' passwords (and the admin's) never reach an output, a file under
ECH0_HOME (status.json, manifests, reports), a run's params/tags/artifacts or the registry's tags.
The server and its users come from tests/plugins/mlflow_server.py (``mlflow_auth_server``).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ech0.errors import safe_uri

ROOT = Path(__file__).resolve().parent.parent
RAW_FILE = ROOT / "ech0" / "sample_data" / "sample_raw.jsonl"
NAME = "ech0"
LOGIN_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def _env(srv, home: Path, user: str | None, password: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LOGIN_VARS}
    return {**env, **srv.env(user, password), "ECH0_HOME": str(home), "ECH0_REGISTRY_NAME": NAME}


def _run(*calls: tuple[dict, list[str]]) -> list[tuple[int, str, str]]:
    """Each ``(env, ["registry", "list", ...])`` as ``python -m ech0.<...>``, all at once; (code, out, err)."""
    procs = [subprocess.Popen([sys.executable, "-m", f"ech0.{args[0]}", *args[1:]], env=env, cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for env, args in calls]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        results.append((p.returncode, out, err))
    return results


def _snapshot(srv) -> dict:
    """Everything a registry write could change, read as the admin."""
    from mlflow import MlflowClient

    from ech0.registry.history import LOCK_SUFFIX

    with srv.admin():
        c = MlflowClient(srv.url, registry_uri=srv.url)
        rm = c.get_registered_model(NAME)
        versions = c.search_model_versions(f"name='{NAME}'")
        # NAME's registry lock is a registered model while held; other test files' models may share the server
        locks = [m.name for m in c.search_registered_models() if m.name == NAME + LOCK_SUFFIX]
        return {"tags": dict(rm.tags), "aliases": {k: str(v) for k, v in (rm.aliases or {}).items()},
                "versions": sorted((int(v.version), v.current_stage, tuple(sorted((v.tags or {}).items())))
                                   for v in versions), "locks": locks}


def _events(snapshot: dict) -> list[tuple]:
    return [(e["action"], e["from_version"], e["to_version"]) for k, e in sorted(
        (k, json.loads(v)) for k, v in snapshot["tags"].items() if k.startswith("ech0.history."))]


@pytest.fixture(scope="module")
def team(mlflow_auth_server, tmp_path_factory):
    """Users reader (READ), editor (EDIT), manager (MANAGE) on registered model ``ech0``; the editor ran the
    pipeline (raw dump -> data -> 2 training steps -> gate -> register v1) against the server."""
    from mlflow import MlflowClient

    srv = mlflow_auth_server
    for user in ("reader", "editor", "manager"):
        srv.create_user(user)
    with srv.admin():
        MlflowClient(srv.url, registry_uri=srv.url).create_registered_model(NAME)
    for user, permission in (("reader", "READ"), ("editor", "EDIT"), ("manager", "MANAGE")):
        srv.grant(user, "registered_model", NAME, permission)
    home = tmp_path_factory.mktemp("auth-home")
    (out,) = _run((_env(srv, home, "editor"), [
        "pipeline", "--mode", "pipeline", "--input", str(RAW_FILE), "--name", "sample", "--promote-on-pass",
        "--no-smoke", "tracking.experiment=auth-team", "trainer.max_steps=2", "trainer.progress=false",
        "tracking.log_system_metrics=false", "trainer.precision=fp32"]))
    code, stdout, stderr = out
    assert "registered     version 1" in stdout and "Traceback" not in stderr, stdout[-3000:] + stderr[-3000:]
    with srv.admin():  # the editor made the experiment: the manager may read its runs to register them too
        exp = MlflowClient(srv.url).get_experiment_by_name("auth-team")
        run_id = MlflowClient(srv.url).search_runs([exp.experiment_id], "tags.`ech0.kind` = 'train'")[0].info.run_id
    srv.grant("manager", "experiment", exp.experiment_id, "READ")
    report = home / "passing_report.json"  # the gate verdict a real evaluation would have written
    report.write_text(json.dumps({"verdict": {"passed": True}, "aggregates": {"mean_score": 0.9, "pass_rate": 1.0,
                                                                            "safety_flags": 0}}))
    return {"srv": srv, "home": home, "run_id": run_id, "experiment_id": exp.experiment_id, "report": str(report),
            "outputs": [stdout, stderr]}


def _one_line_error(out) -> str:
    code, stdout, stderr = out
    assert code == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1, (code, stdout, stderr)
    assert "Traceback" not in stderr and "Permission denied" not in stderr and "Response body" not in stderr
    return stderr.strip()


def test_edit_and_manage_users_can_do_everything(team, registry_cli, monkeypatch):
    """In process (``ech0 registry`` = ``registry_cli``), logged in through MLflow's own variables."""
    srv, home, run_id = team["srv"], team["home"], team["run_id"]

    def as_user(user, *args):
        for k, v in _env(srv, home, user).items():
            if k not in os.environ or os.environ[k] != v:
                monkeypatch.setenv(k, v)
        out = registry_cli(*args)
        assert out[0] == 0, (user, args, out)
        return out

    register = ("register", "--run-id", run_id, "--eval-report", team["report"])
    steps = [("editor", register), ("editor", ("promote", "--version", "2")),
             ("manager", register), ("manager", ("promote", "--version", "3")), ("manager", ("list",)),
             ("manager", ("history",)), ("manager", ("rollback",)),
             ("editor", ("promote", "--version", "3")), ("editor", ("list",)), ("editor", ("history",)),
             ("editor", ("rollback",)), ("editor", ("promote", "--version", "3"))]
    outputs = [as_user(user, *args) for user, args in steps]
    team["outputs"] += [o for out in outputs for o in out[1:]]
    assert "registered ech0 version 2" in outputs[0][1] and "gate passed" in outputs[0][1]
    assert "registered ech0 version 3" in outputs[2][1]
    assert [ln.split()[0] for ln in outputs[4][1].splitlines()[1:]] == ["3", "2", "1"]
    assert "rolled back v3 -> v2" in outputs[6][1] and "rolled back v3 -> v2" in outputs[10][1]
    snap = _snapshot(srv)
    assert snap["aliases"] == {"production": "3"} and snap["locks"] == []  # the locks were released
    assert _events(snap) == [("promote", None, "2"), ("promote", "2", "3"), ("rollback", "3", "2"),
                             ("promote", "2", "3"), ("rollback", "3", "2"), ("promote", "2", "3")]
    whos = [json.loads(v)["who"] for k, v in snap["tags"].items() if k.startswith("ech0.history.")]
    assert {w.rsplit(" ", 1)[-1] for w in whos} == {"editor", "manager"}  # the history names the MLflow user


def test_a_read_user_lists_and_reads_history_but_every_write_is_refused_in_one_line(team):
    srv, home, run_id = team["srv"], team["home"], team["run_id"]
    before = _snapshot(srv)
    assert before["aliases"].get("production") == "3" and len(before["versions"]) == 3, before  # after the test above
    env = _env(srv, home, "reader")
    ls, hist, register, promote, rollback = _run(
        (env, ["registry", "list"]), (env, ["registry", "history"]),
        (env, ["registry", "register", "--run-id", run_id, "--eval-report", team["report"]]),
        (env, ["registry", "promote", "--version", "2"]), (env, ["registry", "rollback"]))
    team["outputs"] += [o for out in (ls, hist, register, promote, rollback) for o in out[1:]]
    assert ls[0] == 0 and [ln.split()[0] for ln in ls[1].splitlines()[1:]] == ["3", "2", "1"], ls
    assert hist[0] == 0 and hist[1].count("production") == 6, hist
    grant = "grant_user_permission('reader', 'registered_model', 'ech0', 'EDIT')"
    for out, doing in ((register, f"register run {run_id} as a new version of 'ech0'"),
                       (promote, "promote v2 of 'ech0' to production"), (rollback, "roll back 'ech0'@production")):
        line = _one_line_error(out)
        assert line.startswith(f"error: MLflow user 'reader' may not {doing}: that needs EDIT (or MANAGE) on "
                               f"registered model 'ech0', and reader has READ; ask an MLflow admin"), line
        assert grant in line and srv.url in line, line
    assert _snapshot(srv) == before  # alias, history, versions and tags unchanged; no lock left behind


def test_no_login_or_a_wrong_password_is_one_line_and_writes_nothing(team):
    srv, home = team["srv"], team["home"]
    before = _snapshot(srv)
    wrong = "pw-wrong-" + srv.passwords["editor"][::-1]
    srv.passwords["editor (wrong)"] = wrong
    anon, bad = _env(srv, home, None), _env(srv, home, "editor", wrong)
    outs = _run((anon, ["registry", "list"]), (anon, ["registry", "promote", "--version", "2"]),
                (bad, ["registry", "history"]), (bad, ["registry", "promote", "--version", "2"]),
                (bad, ["registry", "rollback"]), (anon, ["smoke", "--model-uri", "models:/ech0@production"]))
    team["outputs"] += [o for out in outs for o in out[1:]]
    lines = [_one_line_error(out) for out in outs]
    # another stage's command (ech0.errors.cli_errors): MLflow's 401 is one line there too
    assert lines.pop() == (f"error: {srv.url} wants an MLflow login: set MLFLOW_TRACKING_USERNAME and "
                           "MLFLOW_TRACKING_PASSWORD to your MLflow user's name and password")
    assert lines[0] == (f"error: {srv.url} wants an MLflow login to list the versions of 'ech0': set "
                        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your MLflow user's name and password")
    assert "wants an MLflow login to promote v2 of 'ech0' to production" in lines[1]
    for line, doing in zip(lines[2:], ("read the promotion history of 'ech0'", "promote v2 of 'ech0' to production",
                                       "roll back 'ech0'@production")):
        assert line == (f"error: {srv.url} refused the login of MLflow user 'editor' to {doing} (401: unknown user "
                        f"or wrong password); check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"), line
    assert _snapshot(srv) == before


def test_no_password_reaches_outputs_files_runs_artifacts_or_the_registry(team, tmp_path):
    """Runs last in this module: greps everything the tests above produced."""
    import mlflow
    from mlflow import MlflowClient

    srv, home = team["srv"], team["home"]
    secrets = {}
    for user, pw in srv.passwords.items():
        name = user.split()[0]
        secrets[f"{user}: password"] = pw.encode()
        secrets[f"{user}: basic-auth header"] = base64.b64encode(f"{name}:{pw}".encode())
    blobs: dict[str, bytes] = {f"output {i}": o.encode() for i, o in enumerate(team["outputs"])}
    assert len(blobs) >= 2 + 2 * 12 + 2 * 5 + 2 * 6, len(blobs)  # every test above ran and left its outputs
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name == "status.json" for p in files) and any(p.name.endswith(".manifest.json") for p in files)
    assert any(p.name == "regression_report.json" for p in files)
    blobs.update({str(p): p.read_bytes() for p in files})
    with srv.admin():
        c = MlflowClient(srv.url, registry_uri=srv.url)
        runs = c.search_runs([team["experiment_id"]])
        assert {r.data.tags.get("ech0.kind") for r in runs} >= {"pipeline", "data", "train"}
        for r in runs:
            blobs[f"run {r.info.run_id} params/tags"] = json.dumps(
                [r.info.run_name, r.data.params, r.data.tags, sorted(r.data.metrics)]).encode()
            out = tmp_path / r.info.run_id
            mlflow.artifacts.download_artifacts(run_id=r.info.run_id, dst_path=str(out), tracking_uri=srv.url)
            blobs.update({f"artifact {p}": p.read_bytes() for p in out.rglob("*") if p.is_file()})
        rm = c.get_registered_model(NAME)
        blobs["registered model"] = json.dumps([rm.description, rm.tags]).encode()
        for mv in c.search_model_versions(f"name='{NAME}'"):
            blobs[f"version {mv.version}"] = json.dumps([mv.description, mv.tags, mv.source]).encode()
    assert any(k.startswith("artifact ") and k.endswith(".manifest.json") for k in blobs)
    leaks = [(what, where) for what, secret in secrets.items() for where, blob in blobs.items() if secret in blob]
    assert not leaks, leaks


# -- without the server --------------------------------------------------------------------------------------

def test_a_store_without_the_auth_app_is_not_checked(tmp_path):
    from mlflow import MlflowClient

    from ech0.registry import access

    c = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert access.permission(c, NAME) is None  # SQLite: no server to ask, so nothing is refused early
    access.require(c, NAME, "promote v1 of 'ech0' to production")


def test_a_tracking_uri_with_a_login_in_it_is_never_printed_with_it():
    assert safe_uri("https://bob:s3cret@mlflow.example.com:5000/x") == "https://mlflow.example.com:5000/x"
    assert safe_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
