"""The smoke stage (ech0.smoke) against a real `mlflow models serve`: the trained model passes, its base
without the adapter fails, malformed payloads get a 4xx while the server stays up, the result lands on
the version, and bad model URIs are one-line exit-2 errors."""

from __future__ import annotations

import json
import shutil

import pytest

from ech0.registry import history as hist, store as rstore
from ech0.smoke import main, smoke


def test_served_trained_model_passes_and_is_recorded(sqlite_store, capsys):
    s = sqlite_store
    rstore.register(s.ctx, s.runs["passed"], name="served")
    hist.promote(s.ctx, version="1", name="served")
    with pytest.raises(SystemExit) as e:
        main(["--model-uri", "models:/served@production", "--tracking-uri", s.uri, "--json"])
    out = capsys.readouterr().out
    res = json.loads(out)
    assert e.value.code == 0, out
    assert res["passed"] and res["version"] == "1" and res["served_uri"] == "models:/served/1"
    assert res["reference"] == str(s.source.run_dir / "model")
    names = [c["name"] for c in res["checks"]]
    assert names[:2] == ["ping", "golden prompts"] and names[-1] == "golden prompts after malformed input"
    assert sum(n.startswith("malformed") for n in names) >= 5
    assert all(400 <= c["detail"]["status"] < 500 for c in res["checks"] if c["name"].startswith("malformed"))
    assert res["golden"] == [4, 4]
    tags = rstore.client(s.ctx).get_model_version("served", "1").tags
    assert tags["ech0.smoke"] == "passed" and json.loads(tags["ech0.smoke_detail"])["served"] == "models:/served/1"


def test_served_base_without_adapter_fails(sqlite_store, tmp_path):
    """A pyfunc whose artifacts hold only the base model, claiming the trained run's folder: caught."""
    s = sqlite_store
    meta = json.loads((s.source.run_dir / "model" / "ech0_model.json").read_text())
    base_only = tmp_path / "base-only"
    shutil.copytree(meta["base_model"], base_only)
    (base_only / "ech0_model.json").write_text(json.dumps({**meta, "adapter": False}))
    mv = rstore.register(s.ctx, s.log_run(gate=1.0, score=0.9, model_dir=base_only), name="impostor")
    res = smoke(s.ctx, f"models:/impostor/{mv.version}")
    assert not res.passed
    by_name = {c["name"]: c for c in res.checks}
    assert by_name["ping"]["passed"] and not by_name["golden prompts"]["passed"]
    assert by_name["golden prompts"]["detail"]["mismatches"]
    assert all(c["passed"] for n, c in by_name.items() if n.startswith("malformed"))  # the server itself is fine
    assert rstore.client(s.ctx).get_model_version("impostor", mv.version).tags["ech0.smoke"] == "failed"
    assert res.line().startswith("smoke FAILED: served impostor v") and "failed: golden prompts" in res.line()


@pytest.mark.parametrize("uri, expected", [("models:/nope@production", "not found"),
                                           ("models:/served", "expected models:/NAME@ALIAS"),
                                           ("/no/such/dir", "not a model URI")])
def test_smoke_bad_uri_is_one_line_exit_2(sqlite_store, capsys, uri, expected):
    with pytest.raises(SystemExit) as e:
        main(["--model-uri", uri, "--tracking-uri", sqlite_store.uri])
    err = capsys.readouterr().err
    assert e.value.code == 2 and expected in err and err.count("\n") == 1, err
