"""Proof that the gate works: the trained model passes, the base and damaged models fail, a planted
secret is blocked by the safety flag alone, and a better champion blocks a candidate a worse one lets through.

All tests share the session's `trained_run`, evaluated in a clone of its ECH0_HOME (store paths
rewritten), so nothing is written into the fixture's own home.

    pytest tests/test_eval_gate.py          # slow: it evaluates real models
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ech0.mlflow_model import Ech0Generator

pytestmark = pytest.mark.slow

FAKE_AWS = "AKIA" + "Z7RQ4MLT2XWB9KDH"  # assembled at runtime; the repo holds no key-shaped literal
LEAK_PROMPT_PREFIX = "Echo this: "  # the leaky model leaks on exactly one prompt (see LeakyGenerator)


@pytest.fixture(scope="module")
def home(trained_run, tmp_path_factory, clone_home):
    return clone_home(Path(trained_run.home), tmp_path_factory.mktemp("eval") / "home")


@pytest.fixture
def ctx(home, trained_run):
    """The clone's Context (its store; the base models the trained run used)."""
    return trained_run.ctx.with_(home=home, tracking_uri=f"sqlite:///{home / 'mlflow.db'}")


@pytest.fixture
def in_home(home, ctx):
    import mlflow
    from mlflow.tracking._tracking_service import utils as mlflow_utils

    mlflow.set_tracking_uri(ctx.tracking_uri)  # the tests' own MLflow calls go to the clone too
    # MLflow caches artifact locations by run id, process-wide: the clone has the same run ids as
    # trained_run's home, so without this, artifacts would land in the original's folder.
    mlflow_utils._artifact_repos_cache.clear()
    yield home
    mlflow_utils._artifact_repos_cache.clear()


def damaged_copy(run_dir: Path, dst: Path, scale: float = 3.0, seed: int = 0) -> Path:
    """A run dir whose adapter weights are perturbed by Gaussian noise of ``scale`` x each tensor's std."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(run_dir / "model", dst / "model")
    f = dst / "model" / "adapter_model.safetensors"
    g = torch.Generator().manual_seed(seed)
    weights = {k: v + torch.randn(v.shape, generator=g) * (scale * float(v.float().std()) + 1e-3)
               for k, v in load_file(f).items()}
    save_file(weights, f)
    meta = json.loads((dst / "model" / "ech0_model.json").read_text())
    (dst / "model" / "ech0_model.json").write_text(json.dumps({**meta, "run_id": dst.name}))
    return dst


class LeakyGenerator(Ech0Generator):
    """The trained model, except that one answer carries a (fake) AWS key: a model that leaks rarely."""

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        out = super().predict(context, model_input, params)
        prompts = model_input["prompt"].tolist()
        leak = min((p for p in prompts if p.startswith(LEAK_PROMPT_PREFIX)), default=None)
        return [o + f" key {FAKE_AWS}" if p == leak else o for p, o in zip(prompts, out)]


def load_table(run_id: str):
    """The run's per-case table, as the UI's evaluation view reads it (by the run's experiment)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow.get_tracking_uri())
    return client.load_table(client.get_run(run_id).info.experiment_id, "eval/regression_cases.json", [run_id])


def log_pyfunc(ctx, python_model, model_dir: Path, base_dir: str, run_name: str) -> str:
    """Log ``python_model`` over ``model_dir`` in a new run of ``ctx``'s store; its runs:/ URI."""
    from ech0 import tracking
    from ech0.mlflow_model import pip_requirements, signature

    with tracking.start(ctx, "ech0", run_name, tags={"ech0.kind": "test"}) as tr:
        tr.log_model(python_model, artifacts={"model": str(model_dir), "base": base_dir}, signature=signature(),
                     pip_requirements=pip_requirements())
    return f"runs:/{tr.run_id}/model"


def test_trained_passes_base_fails_with_margins(in_home, ctx, trained_run, tiny_model_dir, capsys):
    import mlflow
    from mlflow.tracking import MlflowClient

    from ech0.eval.evaluate import evaluate

    run_id = trained_run.run_id
    good = evaluate(ctx, in_home / "models" / run_id, quiet=True)
    assert good.passed, good.reasons
    assert good.report_path == in_home / "models" / run_id / "reports" / "regression_report.json"
    assert good.markdown_path.read_text().startswith("# Regression report: PASSED")
    data = json.loads(good.report_path.read_text())
    assert data["baseline"]["sha256"] and data["champion"]["status"] == "none"
    assert all({"output", "checks", "score", "passed", "loss"} <= set(c) for c in data["cases"])

    base = evaluate(ctx, tiny_model_dir, quiet=True)
    assert not base.passed
    assert any("pass rate" in r for r in base.reasons) and any("mean score" in r for r in base.reasons)
    g, b = good.aggregates, base.aggregates
    with capsys.disabled():
        print(f"\n[eval margins] trained pass_rate={g['pass_rate']} mean_score={g['mean_score']} "
              f"loss={g['reference_loss']} | base pass_rate={b['pass_rate']} mean_score={b['mean_score']} "
              f"loss={b['reference_loss']}")
    assert g["pass_rate"] - b["pass_rate"] >= 0.5 and g["mean_score"] - b["mean_score"] >= 0.2

    # MLflow: the verdict lives in the training run, which stays FINISHED; the base got an eval-only run
    client = MlflowClient(mlflow.get_tracking_uri())
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert m["eval/gate_passed"] == 1 and m["eval/pass_rate"] == g["pass_rate"] and m["eval/safety_flags"] == 0
    assert m["eval/mean_score"] == g["mean_score"] and m["eval/reference_loss"] == g["reference_loss"]
    arts = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert {"eval/regression_report.json", "eval/regression_report.md", "eval/regression_cases.json"} <= arts
    inputs = {(d.dataset.name, t.value) for d in run.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
    assert ("regression-baseline", "eval") in inputs
    table = load_table(run_id)
    assert len(table) == data["baseline"]["cases"] and {"id", "output", "passed", "score"} <= set(table.columns)
    assert base.run_id and base.run_id != run_id
    assert client.get_run(base.run_id).data.metrics["eval/gate_passed"] == 0
    assert client.get_run(base.run_id).data.tags["ech0.kind"] == "eval"


def test_compare_base_scores_the_adapter_switched_off_exactly_as_the_base_model(in_home, ctx, trained_run,
                                                                              tiny_model_dir, tmp_path):
    from ech0.eval.evaluate import evaluate

    report = evaluate(ctx, in_home / "models" / trained_run.run_id, log=False, quiet=True, report_dir=tmp_path,
                      overrides=["gate.compare_base=true", "gate.champion.enabled=false"])
    assert report.passed, report.reasons  # the base's verdict is reported, never the candidate's
    untrained = report.data["base_model"]
    assert untrained["status"] == "compared" and "adapter disabled" in untrained["model"]
    assert not untrained["verdict"]["passed"]
    alone = evaluate(ctx, tiny_model_dir, log=False, quiet=True, report_dir=tmp_path / "base",
                     overrides=["gate.champion.enabled=false"])
    # the adapter switched off is the base model: the same answers, scores and losses, case by case
    assert {r["id"]: r["output"] for r in alone.data["cases"]} == {k: v["output"] for k, v in untrained["cases"].items()}
    assert untrained["aggregates"]["pass_rate"] == alone.aggregates["pass_rate"]
    assert untrained["aggregates"]["reference_loss"] == pytest.approx(alone.aggregates["reference_loss"], rel=1e-5)
    m = untrained["margins"]["pass_rate"]
    assert m["candidate_margin"] == pytest.approx(report.aggregates["pass_rate"] - m["threshold"], abs=1e-4)
    assert m["base_margin"] > 0 and m["candidate_margin"] >= 0
    md = report.markdown_path.read_text()
    assert "## Against the untrained base" in md and "candidate margin" in md


def test_damaged_model_is_blocked(in_home, ctx, trained_run, tmp_path):
    from ech0.eval.evaluate import evaluate

    bad = evaluate(ctx, damaged_copy(trained_run.run_dir, tmp_path / "models" / "damaged"), log=False, quiet=True)
    assert not bad.passed
    assert bad.aggregates["pass_rate"] < 0.8, bad.aggregates


def test_planted_secret_fails_on_safety_alone_and_is_never_echoed(in_home, ctx, trained_run, capfd):
    import mlflow

    from ech0.eval.evaluate import evaluate
    from ech0.models import ensure_base_model

    base_dir = str(ensure_base_model(ctx.base_models, verbose=False))
    uri = log_pyfunc(ctx, LeakyGenerator(), trained_run.run_dir / "model", base_dir, "leaky")
    rep = evaluate(ctx, uri, quiet=False)
    assert not rep.passed
    assert len(rep.reasons) == 1 and rep.reasons[0].startswith("safety:"), rep.reasons  # scores alone would pass
    assert rep.aggregates["safety_flags"] >= 1 and "secret:aws_access_key" in rep.aggregates["safety_by_rule"]
    assert rep.aggregates["pass_rate"] >= 0.8 and rep.aggregates["mean_score"] >= 0.85
    assert rep.data["settings"]["generation"] == "pyfunc.predict"  # a wrapper is asked through its own predict
    out, err = capfd.readouterr()
    texts = [rep.report_path.read_text(), rep.markdown_path.read_text(), out, err]
    run_id = uri.split("/")[1]
    texts.append(json.dumps(load_table(run_id).to_dict()))
    assert "<SECRET:aws_access_key>" in texts[0]
    assert not any(FAKE_AWS in t for t in texts)
    assert mlflow.get_run(run_id).data.metrics["eval/gate_passed"] == 0


def test_better_champion_blocks_worse_champion_does_not(in_home, ctx, trained_run, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from ech0.eval.evaluate import evaluate
    from ech0.models import ensure_base_model

    client = MlflowClient(mlflow.get_tracking_uri())
    only_champion = ["gate.min_pass_rate=0", "gate.min_mean_score=0"]  # isolate the comparison
    worse = damaged_copy(trained_run.run_dir, tmp_path / "models" / "worse", scale=3.0)

    # the trained model is production: the damaged candidate is blocked by the comparison alone
    good_v = mlflow.register_model(f"runs:/{trained_run.run_id}/model", "ech0")
    client.set_registered_model_alias("ech0", "production", good_v.version)
    rep = evaluate(ctx, worse, overrides=only_champion, log=False, quiet=True)
    assert not rep.passed and rep.data["champion"]["status"] == "compared"
    assert rep.reasons and all("champion ech0 v" in r for r in rep.reasons), rep.reasons
    assert rep.data["champion"]["cached"] is False

    # a second candidate reuses the champion's cached result (same version, same baseline): no re-evaluation
    from types import SimpleNamespace

    from ech0.eval import DEFAULT_BASELINE, champion
    from ech0.eval.cases import load_baseline
    from ech0.eval.evaluate import compose_config, output_settings

    cfg = compose_config(only_champion)
    hit = champion.compare(ctx, cfg, SimpleNamespace(run_id=None), load_baseline(DEFAULT_BASELINE), output_settings(cfg),
                           score_fn=lambda subject: pytest.fail("the champion was evaluated again"))
    assert hit["cached"] is True and hit["aggregates"] == rep.data["champion"]["aggregates"]

    # the damaged model is production: the trained candidate passes, the comparison recorded
    worse_uri = log_pyfunc(ctx, Ech0Generator(), worse / "model", str(ensure_base_model(ctx.base_models, verbose=False)),
                           "worse")
    worse_v = mlflow.register_model(worse_uri, "ech0")
    client.set_registered_model_alias("ech0", "production", worse_v.version)
    ok = evaluate(ctx, in_home / "models" / trained_run.run_id, log=False, quiet=True)
    assert ok.passed, ok.reasons
    champ = ok.data["champion"]
    assert champ["status"] == "compared" and champ["version"] == str(worse_v.version)
    assert champ["aggregates"]["pass_rate"] < ok.aggregates["pass_rate"]


def test_cli_and_scheduler_exit_codes(trained_run, tiny_model_dir, tmp_path, capsys, run_cli):
    from ech0.eval.cli import main

    assert main(["--model-dir", str(tiny_model_dir), "--no-track"]) == 1  # in-process: the printed verdict, code 1
    out = capsys.readouterr().out
    assert "gate       FAILED" in out and "pass rate 0.000 < gate.min_pass_rate" in out
    # the seed's scheduler command forwards to the same CLI and exits with its code
    r = run_cli("ech0.scheduler", "eval", "--model-dir", str(trained_run.run_dir), "--no-track", "--json",
                "--report-dir", str(tmp_path / "reports"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["passed"] is True
    assert (tmp_path / "reports" / "regression_report.json").is_file()
