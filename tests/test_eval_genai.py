"""The gate in MLflow's evaluation view (``gate.genai_view``): the genai evaluation gives the gate's verdict
case by case, the verdict itself does not change, the champion comparison is there, and no unredacted
answer reaches the store.

All tests share the session's `trained_run`, evaluated in a clone of its ECH0_HOME (store paths rewritten).

    pytest tests/test_eval_genai.py          # slow: it evaluates real models
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ech0.eval import DEFAULT_BASELINE
from ech0.mlflow_model import Ech0Generator

pytestmark = pytest.mark.slow

# Assembled at call time, so the joined strings exist only in answers (never in this file or a pickle).
SECRET_PARTS, EMAIL_PARTS = ("AKIA", "Z7RQ4MLT2XWB9KDH"), ("jane.doe", "@example.org")
CHAMPION_NAME = "ech0-genai"  # a registered name of its own: the gate tests' champions never meet this one


@pytest.fixture(scope="module")
def home(trained_run, tmp_path_factory, clone_home):
    return clone_home(Path(trained_run.home), tmp_path_factory.mktemp("genai") / "home")


@pytest.fixture
def ctx(home, trained_run):
    return trained_run.ctx.with_(home=home, tracking_uri=f"sqlite:///{home / 'mlflow.db'}")


@pytest.fixture
def in_home(home, ctx):
    import mlflow
    from mlflow.tracking._tracking_service import utils as mlflow_utils

    mlflow.set_tracking_uri(ctx.tracking_uri)
    mlflow_utils._artifact_repos_cache.clear()  # the clone has the original's run ids: no cached artifact repos
    yield home
    mlflow_utils._artifact_repos_cache.clear()


class LeakyGenerator(Ech0Generator):
    """The trained model, except that the first echo answer of each predict() call carries a (fake) AWS key
    and an e-mail address."""

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        out = super().predict(context, model_input, params)
        prompts = model_input["prompt"].tolist()
        leak = min((p for p in prompts if p.startswith("Echo this: ")), default=None)
        extra = f" key {''.join(SECRET_PARTS)} mail {''.join(EMAIL_PARTS)}"
        return [o + extra if p == leak else o for p, o in zip(prompts, out)]


def mixed_baseline(path: Path) -> Path:
    """The shipped cases plus three the trained model fails, so the per-case verdicts are mixed."""
    lines = [ln for ln in DEFAULT_BASELINE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    for i, prompt in enumerate(["Echo this: the soft cat counts the tree", "What is the opposite of hot?",
                                "Count up to three, in words."]):
        checks = [{"type": "regex", "pattern": "^NEVER THIS$"}, {"type": "max_length", "value": 200}]
        lines.append(json.dumps({"id": f"planted-fail-{i}", "prompt": prompt, "tags": ["planted"], "checks": checks}))
    path.write_text("\n".join(lines) + "\n")
    return path


def pii_baseline(path: Path) -> Path:
    """The shipped cases plus one whose prompt and reference hold an e-mail address (requests get redacted too)."""
    email = "".join(EMAIL_PARTS)
    case = {"id": "planted-pii-prompt", "prompt": f"Echo this: write to {email}",
            "reference": f"ECHO: write to {email}", "checks": [{"type": "max_length", "value": 200}],
            "tags": ["planted"]}
    path.write_text(DEFAULT_BASELINE.read_text().rstrip("\n") + "\n" + json.dumps(case) + "\n")
    return path


def view_cases(run_id: str) -> dict[str, dict]:
    """``{case id: {"inputs", "outputs", "assessments": {name: (value, rationale)}, "metadata"}}``, from the store."""
    import mlflow

    exp = mlflow.get_run(run_id).info.experiment_id
    out = {}
    for t in mlflow.search_traces(locations=[exp], run_id=run_id, return_type="list"):
        inputs = json.loads(t.data.request)
        out[inputs["case_id"]] = {"inputs": inputs, "outputs": json.loads(t.data.response),
                                  "assessments": {a.name: (a.value, a.rationale) for a in t.info.assessments},
                                  "metadata": t.info.trace_metadata}
    return out


def test_genai_evaluation_gives_the_gates_verdict(in_home, ctx, trained_run, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from ech0.eval.evaluate import evaluate

    cases = mixed_baseline(tmp_path / "mixed.jsonl")
    overrides = ["gate.min_pass_rate=0.95", "gate.champion.enabled=false"]  # 3 of 38 planted failures fail it
    rep = evaluate(ctx, in_home / "models" / trained_run.run_id, cases, overrides=overrides, quiet=True)
    # the verdict is ech0's and equals the verdict without the view, case by case
    plain = evaluate(ctx, in_home / "models" / trained_run.run_id, cases, log=False, quiet=True,
                     overrides=[*overrides, "gate.genai_view=false"], report_dir=tmp_path / "plain")
    assert plain.genai_view is None and (rep.passed, rep.reasons) == (plain.passed, plain.reasons)
    assert not rep.passed and any("gate.min_pass_rate" in r for r in rep.reasons), rep.reasons
    assert rep.aggregates == plain.aggregates
    assert rep.data["cases"] == plain.data["cases"]

    view = rep.genai_view["candidate"]
    assert view["records"] == view["logged"] == len(rep.data["cases"]) == 42
    client = MlflowClient(mlflow.get_tracking_uri())
    run = client.get_run(view["run_id"])
    assert run.data.tags["mlflow.parentRunId"] == trained_run.run_id and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.runType"] == "genai_evaluate" and run.data.tags["ech0.kind"] == "eval-view"
    assert run.data.tags["ech0.eval.gate_passed"] == "false" and run.data.metrics["eval/gate_passed"] == 0
    assert client.get_run(trained_run.run_id).data.tags["ech0.eval.genai_view"] == view["run_id"]
    assert client.get_run(trained_run.run_id).info.status == "FINISHED"

    got = view_cases(view["run_id"])
    gate = {r["id"]: r for r in rep.data["cases"]}
    assert set(got) == set(gate)
    gating = {cid for cid, r in gate.items() if r["weight"] > 0}
    assert {cid: got[cid]["assessments"]["gate_case"][0] for cid in gating} == \
        {cid: gate[cid]["passed"] for cid in gating}
    assert {cid: got[cid]["assessments"]["not_gating"][0] for cid in set(gate) - gating} == \
        {cid: gate[cid]["passed"] for cid in set(gate) - gating}
    assert not any("gate_case" in got[cid]["assessments"] for cid in set(gate) - gating)
    for cid in gating:
        assert got[cid]["assessments"]["case_score"][0] == pytest.approx(gate[cid]["score"])
        assert got[cid]["outputs"] == gate[cid]["output"]
    failed = [cid for cid in gating if not gate[cid]["passed"]]
    assert {"planted-fail-0", "planted-fail-1", "planted-fail-2"} <= set(failed) and len(failed) < len(gating)
    assert "regex '^NEVER THIS$': no match" in got["planted-fail-0"]["assessments"]["gate_case"][1]
    # the overall pass rate: MLflow's own aggregate and the weighted one from the stored records both equal ech0's
    weights = {cid: gate[cid]["weight"] for cid in gating}
    stored = sum(weights[c] for c in gating if got[c]["assessments"]["gate_case"][0]) / sum(weights.values())
    assert stored == pytest.approx(rep.aggregates["pass_rate"], abs=1e-4)
    assert run.data.metrics["gate_case/mean"] == pytest.approx(rep.aggregates["pass_rate"], abs=1e-4)
    assert run.data.metrics["case_score/mean"] == pytest.approx(rep.aggregates["mean_score"], abs=1e-4)
    assert run.data.metrics["eval/pass_rate"] == rep.aggregates["pass_rate"]
    # linked to the training run's model: the traces show on its page
    model = client.get_logged_model(view["model_id"])
    assert model.source_run_id == trained_run.run_id and model.name == "model"
    assert all(c["metadata"].get("mlflow.modelId") == view["model_id"] for c in got.values())


def log_pyfunc(ctx, python_model, model_dir: Path, base_dir: str, run_name: str) -> str:
    from ech0 import tracking
    from ech0.mlflow_model import pip_requirements, signature

    with tracking.start(ctx, "ech0", run_name, tags={"ech0.kind": "test"}) as tr:
        tr.log_model(python_model, artifacts={"model": str(model_dir), "base": base_dir}, signature=signature(),
                     pip_requirements=pip_requirements())
    return f"runs:/{tr.run_id}/model"


def test_champion_comparison_and_no_unredacted_answer_reaches_mlflow(in_home, ctx, trained_run, capfd, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from ech0.eval.evaluate import evaluate
    from ech0.models import ensure_base_model

    client = MlflowClient(mlflow.get_tracking_uri())
    champ_v = mlflow.register_model(f"runs:/{trained_run.run_id}/model", CHAMPION_NAME)
    client.set_registered_model_alias(CHAMPION_NAME, "production", champ_v.version)
    uri = log_pyfunc(ctx, LeakyGenerator(), trained_run.run_dir / "model",
                     str(ensure_base_model(ctx.base_models, verbose=False)), "leaky")
    overrides = [f"gate.champion.model_name={CHAMPION_NAME}"]
    cases = pii_baseline(tmp_path / "pii.jsonl")  # outside the home: the raw address is never inside it
    rep = evaluate(ctx, uri, cases, overrides=overrides)
    assert not rep.passed and rep.reasons[0].startswith("safety:"), rep.reasons
    champ = rep.data["champion"]
    assert champ["status"] == "compared" and champ["cached"] is False and "results" not in champ

    # the champion's own cases: a second evaluation run, linked to the registered version's model
    cv = rep.genai_view["champion"]
    assert cv["reused"] is False and cv["logged"] == cv["records"] == len(rep.data["cases"])
    assert cv["model_id"] == client.get_model_version(CHAMPION_NAME, champ_v.version).model_id
    theirs = view_cases(cv["run_id"])
    gating = {r["id"] for r in rep.data["cases"] if r["weight"] > 0}
    assert {cid: theirs[cid]["assessments"]["gate_case"][0] for cid in gating} == \
        {cid: champ["cases"][cid]["passed"] for cid in gating}
    champion_metrics = client.get_run(cv["run_id"]).data.metrics
    assert champion_metrics["gate_case/mean"] == pytest.approx(champ["aggregates"]["pass_rate"], abs=1e-4)

    # the candidate's records carry the comparison, case by case
    view = rep.genai_view["candidate"]
    run = client.get_run(view["run_id"])
    assert run.data.tags["ech0.eval.champion_view_run_id"] == cv["run_id"]
    got = view_cases(view["run_id"])
    gate = {r["id"]: r for r in rep.data["cases"]}
    regressed = {cid for cid, r in gate.items()
                 if r["weight"] > 0 and champ["cases"][cid]["passed"] and not r["passed"]}
    assert regressed, "a leak breaks its answer's format: the champion passes that case, the candidate fails it"
    assert {cid for cid, c in got.items() if c["assessments"].get("vs_champion", (True,))[0] is False} == regressed
    assert all(got[cid]["assessments"]["champion_case"][0] == champ["cases"][cid]["passed"]
               for cid in gate if gate[cid]["weight"] > 0)
    assert run.data.metrics["champion_case/mean"] == pytest.approx(champ["aggregates"]["pass_rate"], abs=1e-4)
    leaked = [cid for cid, r in gate.items() if r["safety_flags"]]
    assert leaked and {cid for cid, c in got.items() if c["assessments"]["safety"][0] is False} == set(leaked)
    leaky = [cid for cid in leaked if any(f["rule"] == "aws_access_key" for f in gate[cid]["safety_flags"])]
    assert leaky
    for cid in leaky:  # one leak per predict() call: each group of cases sharing a max_new_tokens
        assert "secret:aws_access_key" in got[cid]["assessments"]["safety"][1]
        assert "<SECRET:aws_access_key>" in got[cid]["outputs"] and "<EMAIL>" in got[cid]["outputs"]
    assert got["planted-pii-prompt"]["inputs"]["prompt"] == "Echo this: write to <EMAIL>"

    # the next evaluation against the same champion reuses its evaluation run (cached champion, same key)
    again = evaluate(ctx, uri, cases, overrides=overrides, quiet=True)
    assert again.data["champion"]["cached"] is True
    assert again.genai_view["champion"] == {"run_id": cv["run_id"], "reused": True}

    # nothing anywhere in the store, the artifacts, the reports or the terminal holds the raw values
    secret, email = "".join(SECRET_PARTS).encode(), "".join(EMAIL_PARTS).encode()
    blobs = [p.read_bytes() for p in in_home.rglob("*") if p.is_file()]
    out, err = capfd.readouterr()
    blobs += [out.encode(), err.encode()]
    assert not [b for b in blobs if secret in b or email in b]
    assert any(b"<SECRET:aws_access_key>" in b for b in blobs)  # the leaky answer itself did reach the store
