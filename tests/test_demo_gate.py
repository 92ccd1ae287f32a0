"""`make demo`'s model passes the shipped gate with margin, in fp32 and in bf16 (issue #15).

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_demo_gate.py -q

`make demo` trains with ``trainer.precision=auto``: fp32 on most CPUs, bf16 where bf16 matmuls are
fast (ech0/train/precision.py). A verdict that flips with that choice is not a gate, so the demo's own
pipeline (the data stage on the raw sample dump, the `lora` preset, the shipped baseline and
conf/gate/default.yaml) must pass well above the 0.8 threshold in both arithmetics.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow
# At most one of the 35 gating cases may fail (34/35 = 0.971): the demo's model passes with room, not
# at the threshold (0.8), where one or two answers that flip with the arithmetic decide the verdict.
MIN_PASS_RATE = 0.95


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
    train_run = MlflowClient(ctx.tracking_uri).get_run(report_file.parent.parent.name)
    assert train_run.data.params["derived.precision"].startswith(precision), "trained in the arithmetic asked for"
    assert train_run.data.params["data.train_file"].endswith("processed/sample.jsonl"), "the demo's data stage ran"
