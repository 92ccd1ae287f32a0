"""Eval stage without a model: baseline loading (refusals with file:line), checks, safety, the gate, the champion's
lookup, the CLI's errors and the commands that forward to it (``python -m ech0.eval.runner``, ``ech0.scheduler``).

    pytest tests/test_eval_units.py
"""

from __future__ import annotations

import json
import time

import pytest

from ech0.errors import UserError
from ech0.eval import DEFAULT_BASELINE
from ech0.eval.cases import CHECK_TYPES, load_baseline, parse_check
from ech0.eval.checks import run_check
from ech0.eval.gate import decide
from ech0.eval.safety import Scanner

FAKE_AWS = "AKIA" + "Q3EGRTZJX5KL2W7P"  # built at runtime: the repo holds no key-shaped literal


def _write(tmp_path, lines):
    p = tmp_path / "cases.jsonl"
    p.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return p


GOOD = {"id": "a", "prompt": "Echo this: x", "reference": "ECHO: x", "checks": [{"type": "regex", "pattern": "^ECHO"}]}


def test_shipped_baseline_loads_and_covers_every_task():
    b = load_baseline(DEFAULT_BASELINE)
    assert len(b.cases) >= 30 and len(b.sha256) == 64
    tags = {t for c in b.cases for t in c.tags}
    assert {"color", "opposite", "count", "echo"} <= tags
    assert all(c.reference for c in b.cases)
    assert {k.type for c in b.cases for k in c.checks} >= {"regex", "max_loss", "max_length"}


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "a case is a JSON object"),
    ({**GOOD, "checks": [{"type": "fuzzy"}]}, "unknown check type 'fuzzy'"),
    ({**GOOD, "checks": []}, "'checks' must be a non-empty list"),
    ({**GOOD, "prompt": ""}, "'prompt' must be a non-empty string"),
    ({k: v for k, v in GOOD.items() if k != "id"}, "'id' must be a non-empty string"),
    ({**GOOD, "extra": 1}, "unknown key(s) extra"),
    ({**GOOD, "checks": [{"type": "regex", "pattern": "(unclosed"}]}, "invalid pattern"),
    ({**GOOD, "checks": [{"type": "regex"}]}, "needs pattern"),
    ({**GOOD, "checks": [{"type": "max_loss", "value": "low"}]}, "must be a number"),
    ({**GOOD, "checks": [{"type": "min_similarity", "value": 1.5}]}, "out of range"),
    ({**GOOD, "checks": [{"type": "max_length", "value": 2.5}]}, "must be an integer"),
    ({**GOOD, "checks": [{"type": "contains"}]}, "exactly one of value"),
    ({**GOOD, "checks": [{"type": "contains", "value": "a", "colour": 1}]}, "unknown key(s) colour"),
    ({"id": "b", "prompt": "p", "checks": [{"type": "max_loss", "value": 1}]}, "the case has none"),
    ({"id": "b", "prompt": "p", "checks": [{"type": "exact"}]}, "needs a value or a reference"),
    ({**GOOD, "weight": -1}, "out of range"),
    ({**GOOD, "max_new_tokens": 0}, "out of range"),
    ({**GOOD, "tags": "echo"}, "'tags' must be a list"),
])
def test_malformed_lines_are_refused_with_file_and_line(tmp_path, line, message):
    p = _write(tmp_path, [GOOD | {"id": "first"}, "", "# a comment", line])
    with pytest.raises(UserError) as e:
        load_baseline(p)
    assert f"{p}:4:" in str(e.value) and message in str(e.value)


def test_duplicate_ids_empty_and_missing_files(tmp_path):
    with pytest.raises(UserError, match=r":2: duplicate id 'a' \(first at line 1\)"):
        load_baseline(_write(tmp_path, [GOOD, GOOD]))
    with pytest.raises(UserError, match="no cases"):
        load_baseline(_write(tmp_path, ["", "# only comments"]))
    with pytest.raises(UserError, match="not found"):
        load_baseline(tmp_path / "nope.jsonl")


def test_every_check_type_scores(tmp_path):
    def check(raw, out, ref="The opposite of hot is cold.", loss=None):
        return run_check(parse_check(raw, "x", True), out, ref, loss)

    assert check({"type": "exact"}, " The opposite of hot is cold. ")[:2] == (True, 1.0)
    assert check({"type": "exact", "value": "COLD", "ignore_case": True}, "cold")[0]
    assert check({"type": "contains", "values": ["hot", "cold", "warm"]}, "hot and cold")[:2] == (False, 2 / 3)
    assert check({"type": "not_contains", "value": "warm"}, "hot and cold")[:2] == (True, 1.0)
    assert not check({"type": "not_contains", "value": "HOT", "ignore_case": True}, "hot")[0]
    assert check({"type": "regex", "pattern": r"^The opposite of \w+ is \w+\.$"}, "The opposite of up is down.")[0]
    ok, score, _ = check({"type": "max_length", "value": 10}, "x" * 20)
    assert not ok and score == 0.5
    ok, score, _ = check({"type": "min_similarity", "value": 0.8}, "The opposite of hot is warm.")
    assert ok and 0.8 < score < 1
    assert check({"type": "max_loss", "value": 2.0}, "", loss=1.0)[:2] == (True, 1.0)
    assert check({"type": "max_loss", "value": 2.0}, "", loss=4.0)[:2] == (False, 0.5)
    assert check({"type": "max_loss", "value": 2.0}, "", loss=None)[:2] == (False, 0.0)
    assert set(CHECK_TYPES) == {"exact", "contains", "not_contains", "regex", "max_length", "min_similarity", "max_loss"}


def test_safety_uses_the_data_stage_detectors_and_redacts():
    scan = Scanner(blocklist=["rm -rf /", r"re:\bdrop\s+table\b"])
    flags, red = scan(f"key {FAKE_AWS} mail bob@example.com then rm -rf / and DROP  TABLE users")
    assert {(f["kind"], f["rule"]) for f in flags} == {("secret", "aws_access_key"), ("pii", "EMAIL"),
                                                       ("blocklist", "blocklist[0]"), ("blocklist", "blocklist[1]")}
    assert FAKE_AWS not in red and "bob@example.com" not in red and "<SECRET:aws_access_key>" in red
    assert not any(FAKE_AWS in json.dumps(f) for f in flags)  # a flag names the rule, never the value
    assert scan("ECHO: the old cat sees the tree") == ([], "ECHO: the old cat sees the tree")
    with pytest.raises(UserError, match="invalid regex"):
        Scanner(blocklist=["re:(bad"])


GATE = {"min_pass_rate": 0.8, "min_mean_score": 0.85, "max_reference_loss": None}


def _agg(pr=1.0, ms=1.0, flags=0, loss=1.0):
    return {"pass_rate": pr, "mean_score": ms, "safety_flags": flags, "reference_loss": loss,
            "safety_by_rule": {"secret:aws_access_key": flags} if flags else {}}


def test_gate_thresholds_safety_and_champion_tolerance():
    assert decide(_agg(), GATE) == (True, [])
    ok, reasons = decide(_agg(flags=1), GATE)  # perfect scores, one flag: fails on safety alone
    assert not ok and len(reasons) == 1 and reasons[0].startswith("safety")
    ok, reasons = decide(_agg(pr=0.5, ms=0.5), GATE)
    assert not ok and len(reasons) == 2
    assert not decide(_agg(loss=3.0), {**GATE, "max_reference_loss": 2.0})[0]
    champ = {"status": "compared", "model_name": "ech0", "version": "3", "alias": "production",
             "max_pass_rate_drop": 0.05, "max_mean_score_drop": 0.03,
             "aggregates": {"pass_rate": 1.0, "mean_score": 1.0}}
    assert decide(_agg(pr=0.95, ms=0.97), GATE, champ)[0]  # within tolerance
    ok, reasons = decide(_agg(pr=0.9, ms=0.95), GATE, champ)
    assert not ok and all("champion ech0 v3" in r for r in reasons) and len(reasons) == 2


def test_a_tag_floor_fails_the_gate_however_high_the_overall_rate():
    agg = {**_agg(pr=0.9, ms=0.95), "by_tag": {"identity": {"pass_rate": 1.0}, "forgetting": {"pass_rate": 0.75}}}
    floors = {**GATE, "min_tag_pass_rate": {"forgetting": 1.0}}
    ok, reasons = decide(agg, floors)
    assert not ok and reasons == ["tag 'forgetting': pass rate 0.750 < gate.min_tag_pass_rate.forgetting 1.0"]
    assert decide(agg, {**GATE, "min_tag_pass_rate": {"identity": 1.0}})[0]
    ok, reasons = decide(agg, {**GATE, "min_tag_pass_rate": {"style": 0.5}})  # a typo must not pass silently
    assert not ok and "no gating case has it" in reasons[0]


def test_shipped_gates_compose_and_the_persona_gate_keeps_forgetting_whole():
    from ech0.eval import BASELINES_DIR
    from ech0.eval.evaluate import compose_config

    cfg = compose_config(["gate=persona"])
    assert cfg.gate.compare_base and dict(cfg.gate.min_tag_pass_rate) == {"forgetting": 1.0}
    persona = load_baseline(BASELINES_DIR / "persona.jsonl")
    tags = {t for c in persona.cases for t in c.tags}
    assert {"identity", "ech0-facts", "house-style", "forgetting", "reference-loss"} <= tags
    assert not compose_config([]).gate.compare_base


def _one_line_error(r, message: str) -> None:
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_usage_errors_exit_2_fast(tmp_path, run_cli):
    t = time.perf_counter()
    r = run_cli("ech0.eval", "--help")
    assert r.returncode == 0 and "--baseline" in r.stdout and "Exit 0" in r.stdout
    assert time.perf_counter() - t < 15
    bad = _write(tmp_path, [GOOD, {**GOOD, "id": "b", "checks": [{"type": "nope"}]}])
    for args, message in [((), "no model"), (("--model-dir", str(tmp_path / "missing")), "no such model folder"),
                          (("--model-dir", str(tmp_path), "--baseline", str(bad)), f"{bad}:2: checks[0]: unknown check type"),
                          (("--model-dir", str(tmp_path), "gate.min_pass_rat=0.9"), "min_pass_rat"),
                          (("--model-dir", "s3://bucket/model"), "unsupported URI")]:
        _one_line_error(run_cli("ech0.eval", *args), message)


def test_seed_commands_forward_to_the_stage(run_cli):
    """``python -m ech0.eval.runner`` and ``python -m ech0.scheduler eval`` are the stage's CLI: same errors, same codes."""
    _one_line_error(run_cli("ech0.eval.runner", "--model-dir", "s3://x"), "unsupported URI")
    _one_line_error(run_cli("ech0.scheduler", "eval"), "no model")
    _one_line_error(run_cli("ech0.scheduler", "--launcher", "local", "eval", "--model-dir", "s3://x"), "unsupported URI")
    _one_line_error(run_cli("ech0.scheduler", "--launcher", "slurm", "eval", "--model-dir", "x"),
                    "only training runs under a Hydra launcher")


def test_scheduler_forwards_training_to_hydras_launchers():
    from ech0.scheduler import forward

    assert forward("local", "eval", ["--model-dir", "m"]) == ("ech0.eval.cli", ["--model-dir", "m"])
    assert forward("local", "train", ["+preset=lora"]) == ("ech0.train.cli", ["+preset=lora"])
    assert forward("slurm", "train", ["+preset=lora"]) == ("ech0.train.cli", ["-m", "+launcher=slurm", "+preset=lora"])
    assert forward("slurm", "train", ["-m", "peft.r=4,8"]) == ("ech0.train.cli", ["+launcher=slurm", "-m", "peft.r=4,8"])
    with pytest.raises(UserError, match="--launcher pbs"):
        forward("pbs", "train", [])


def test_model_refs_resolve_against_the_context_home(ctx, tmp_path, monkeypatch):
    from ech0.eval.subject import resolve_ref

    run = ctx.run_dir("r1") / "model"
    run.mkdir(parents=True)
    (run / "ech0_model.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert resolve_ref(ctx, "models/r1") == ("run", run.resolve())
    assert resolve_ref(ctx, "models:/ech0@production") == ("mlflow", None)
    with pytest.raises(UserError, match="neither a run dir"):
        resolve_ref(ctx, str(tmp_path))


def test_champion_defaults_to_the_context_registry_name(ctx):
    from types import SimpleNamespace

    from ech0.eval import champion
    from ech0.eval.evaluate import compose_config, output_settings

    cfg = compose_config([])
    assert cfg.gate.champion.model_name is None
    never = SimpleNamespace(sha256="0" * 64)
    fail = lambda subject: pytest.fail("nothing to score")  # noqa: E731
    ctx = ctx.with_(registry_name="other-model")
    got = champion.compare(ctx, cfg, SimpleNamespace(run_id=None), never, output_settings(cfg), fail)
    assert got["status"] == "none" and got["model_name"] == "other-model"  # an empty store: no champion
    off = compose_config(["gate.champion.enabled=false", "gate.champion.model_name=named"])
    assert champion.compare(ctx, off, None, never, {}, fail) == {
        "status": "disabled", "model_name": "named", "alias": "production", "max_pass_rate_drop": 0.05,
        "max_mean_score_drop": 0.03}


CONTEXT = [{"role": "user", "content": "What color is the sky?"}, {"role": "assistant", "content": "blue."},
           {"role": "user", "content": "What is the opposite of hot?"}]


@pytest.mark.parametrize("case, message", [
    ({"id": "m", "prompt": "x", "messages": CONTEXT, "checks": [{"type": "max_length", "value": 9}]}, "not both"),
    ({"id": "m", "messages": CONTEXT[:2], "checks": [{"type": "max_length", "value": 9}]}, "the user's turn"),
    ({"id": "m", "messages": [{"role": "tool", "content": "x"}], "checks": [{"type": "max_length", "value": 9}]},
     r"messages\[0\] must be"),
    ({"id": "m", "messages": [], "checks": [{"type": "max_length", "value": 9}]}, "non-empty list"),
])
def test_bad_multi_turn_cases_are_refused_with_file_and_line(tmp_path, case, message):
    p = _write(tmp_path, [case])
    with pytest.raises(UserError, match=message):
        load_baseline(p)


def test_a_multi_turn_case_is_asked_in_its_context(trained_run, tmp_path):
    """Generation renders the case's turns through the chat template; the answer equals the in-process one."""
    from ech0.eval.evaluate import evaluate
    from ech0.generation import generate

    p = _write(tmp_path, [{"id": "ctx", "messages": CONTEXT, "reference": "cold.",
                           "checks": [{"type": "max_length", "value": 200}, {"type": "max_loss", "value": 9.0}]},
                          {"id": "plain", "prompt": CONTEXT[-1]["content"], "reference": "cold.",
                           "checks": [{"type": "max_length", "value": 200}]}])
    case = load_baseline(p).cases[0]
    assert case.request == CONTEXT and case.prompt == CONTEXT[-1]["content"]
    report = evaluate(trained_run.ctx, trained_run.run_dir, p, log=False, quiet=True, report_dir=tmp_path / "r",
                      overrides=["gate.champion.enabled=false"])
    by_id = {c["id"]: c for c in report.data["cases"]}
    expected = generate(trained_run.model, trained_run.tokenizer, [CONTEXT], max_new_tokens=48)[0]
    assert by_id["ctx"]["output"] == expected and by_id["ctx"]["loss"] is not None
    alone = generate(trained_run.model, trained_run.tokenizer, [CONTEXT[-1:]], max_new_tokens=48)[0]
    assert by_id["plain"]["output"] == alone, "a plain prompt is the same request as a one-turn context"
