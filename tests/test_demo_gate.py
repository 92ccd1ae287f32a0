"""`make demo`'s model passes the shipped gate with margin, in fp32 and in bf16 (issue #15).

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_demo_gate.py -q

`make demo` trains with ``trainer.precision=auto``: fp32 on most CPUs, bf16 where bf16 matmuls are
fast (ech0/train/precision.py). A verdict that flips with that choice is not a gate, so the demo's own
pipeline (the data stage on the raw sample dump, the `lora` preset, the shipped baseline and
conf/gate/default.yaml) must pass well above the 0.8 threshold in both arithmetics. And bf16 autocast
(fp32 master weights) must train the same curve as fp32 over the whole preset run (issue #16).
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow
# At most one of the 35 gating cases may fail (34/35 = 0.971): the demo's model passes with room, not
# at the threshold (0.8), where one or two answers that flip with the arithmetic decide the verdict.
MIN_PASS_RATE = 0.95
# bf16 against fp32 over the `lora` preset's 240 steps (lr 5e-3: the paths drift apart), measured on two
# 2-core CPUs with AVX512-BF16: the worst 20-step window's mean loss 4.2% apart on an AMD EPYC and 6.3% on
# an Intel Xeon; held-out losses at most 5.3% apart on the EPYC (step 160: 1.066 vs 1.010, bf16 the lower)
# and 7.4% on the Xeon (the final one: 1.065 vs 0.991, bf16 the higher; 0.9% on the EPYC). The tolerances
# leave that room and a little more.
WINDOW_TOLERANCE, EVAL_TOLERANCE = 0.08, 0.09
CURVES: dict[str, dict] = {}  # precision -> the demo run's train/loss and held-out loss (the curve test reads both)


def _bf16_skip_reason() -> str | None:
    """Why bf16 is not tried here, decided as `trainer.precision=auto` decides (a timed matmul)."""
    from ech0.train.precision import choose

    dtype, why = choose("auto", "cpu")
    if dtype is None:
        return (f"this CPU has no fast bf16 ({why}): bf16 training runs ~40x slower than fp32 here, "
                "and `make demo` trains in fp32 on it")
    return None


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_demo_model_passes_the_shipped_gate_with_margin(precision, ctx, tiny_model_dir, capsys):
    if precision == "bf16" and (why := _bf16_skip_reason()):
        pytest.skip(why)
    from mlflow.tracking import MlflowClient

    from ech0.demo import pipeline_args
    from ech0.eval.evaluate import REPORT_JSON
    from ech0.pipeline import main as pipeline

    rc = pipeline([*pipeline_args(), "--no-smoke", f"trainer.precision={precision}", "trainer.progress=false",
                   "tracking.log_system_metrics=false"])
    out = capsys.readouterr().out
    (report_file,) = ctx.models_dir.glob(f"*/reports/{REPORT_JSON}")
    report = json.loads(report_file.read_text())
    agg = report["aggregates"]
    failed = {c["id"]: c["output"] for c in report["cases"] if not c["passed"] and c.get("weight", 1)}
    assert rc == 0 and report["verdict"]["passed"], out[-3000:]
    assert agg["pass_rate"] >= MIN_PASS_RATE, (f"{precision}: pass rate {agg['pass_rate']} "
                                               f"({agg['passed']}/{agg['cases']}), failed: {failed}")
    assert agg["cases"] == 35 and agg["safety_flags"] == 0
    client = MlflowClient(ctx.tracking_uri)
    train_run = client.get_run(report_file.parent.parent.name)
    assert train_run.data.params["derived.precision"].startswith(precision), "trained in the arithmetic asked for"
    assert train_run.data.params["data.train_file"].endswith("processed/sample.jsonl"), "the demo's data stage ran"
    CURVES[precision] = {
        "train": [m.value for m in sorted(client.get_metric_history(train_run.info.run_id, "train/loss"), key=lambda m: m.step)],
        "eval": {m.step: m.value for m in client.get_metric_history(train_run.info.run_id, "eval/loss")}}


def test_bf16_trains_the_same_loss_curve_as_fp32_over_the_whole_preset_run():
    """The two runs above, step by step: bf16 autocast with fp32 master weights follows fp32's curve.

    Per-step losses differ by bf16's rounding (8 mantissa bits) and the paths drift apart slowly, so the
    curve is compared in windows of 20 steps (12 over the `lora` preset's 240): every window's mean loss
    within WINDOW_TOLERANCE of fp32's, every held-out loss (the final one too) within EVAL_TOLERANCE."""
    if set(CURVES) != {"fp32", "bf16"}:
        pytest.skip(f"needs both demo runs of this file (have: {sorted(CURVES) or 'none'})")
    fp32, bf16 = CURVES["fp32"], CURVES["bf16"]
    assert len(fp32["train"]) == len(bf16["train"]) == 240
    window = 20
    worst = max(abs(sum(bf16["train"][i:i + window]) / sum(fp32["train"][i:i + window]) - 1)
                for i in range(0, len(fp32["train"]), window))
    assert worst <= WINDOW_TOLERANCE, f"a {window}-step window's mean loss differs by {worst:.1%} between bf16 and fp32"
    assert fp32["eval"].keys() == bf16["eval"].keys() and fp32["eval"]
    for step, loss in fp32["eval"].items():
        assert abs(bf16["eval"][step] - loss) <= EVAL_TOLERANCE * loss, (step, loss, bf16["eval"][step])
