"""The quick-start demos: the whole pipeline on shipped data, then a summary for a newcomer.

    make demo            # = .venv/bin/python -m ech0.demo [--force]          the tiny model, ~50 s
    make demo-real       # = .venv/bin/python -m ech0.demo --real [--force]   SmolLM2-135M-Instruct, <10 min

``make demo`` builds the tiny base model (once), runs the data stage on the shipped raw sample (a messy
legacy dump: import → clean → processed), fine-tunes on its output with the `lora` preset, runs the
evaluation gate, registers the model, promotes it to `production` if the gate passed, and serves it
with `mlflow models serve` to check the answers.

``make demo-real`` does the same on a real pretrained instruct model: SmolLM2-135M-Instruct (converted
once from the packaged GGUF file), a generated multi-turn chat dump that teaches it a persona
(``ech0/sample_data/persona.py``: five export shapes, duplicates, a leaked key, personal data), the
``conversation_lora`` preset, and the content gate (``ech0/eval/baselines/persona.jsonl``, ``gate=persona``)
that also scores the untrained base: the summary shows both models' answers side by side.

A second run skips what is already done (same input bytes, config, data and base model); ``--force``
retrains.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import time

from ech0.errors import cli_errors

# The real demo's training: conversation_lora's adapters (r=16 on every projection) with what the
# persona needed, each measured in fp32 and bf16 (README.md, "make demo-real", has the runs):
# - 80 steps of 8 rows at lr 3e-4: 60 steps of 16 at 2e-4 left two ech0 facts above their reference
#   loss (1/4-2/4 learned); 8-row steps at 3e-4 learn all four in fewer tokens (640 rows, not 960);
# - lora_dropout=0: on 2 cores the dropout masks of 210 adapters were 28% of a step (aten::bernoulli_
#   1.1 s of 6.3 s, profiled), time the KL terms below need;
# - KL to the base, by position: 0.2 where the data says something new (the name), 1.0 where the
#   token is the base's own choice (a known answer: it kept "2 + 2 is 4."), 0.5 on the prompt tokens
#   (they hold the proper-noun slots the name "Echo" pulls on: "the Red Planet is Mars", not "Europa").
REAL_TRAINING = ["model=smollm2-135m", "trainer.max_steps=80", "trainer.batch_size=8", "trainer.learning_rate=3e-4",
                 "trainer.warmup_steps=5", "trainer.eval_every=40", "trainer.checkpoint_every=40",
                 "trainer.max_length=512", "peft.lora_dropout=0", "trainer.kl_to_base=0.2",
                 "trainer.kl_to_base_agreed=1.0", "trainer.kl_to_base_prompt=0.5"]


def _side_by_side(report_path: str, width: int | None = None) -> None:
    """The base's and the tuned model's answers to the gate's questions, one block per case."""
    data = json.loads(open(report_path).read())
    base = data.get("base_model") or {}
    if base.get("status") != "compared":
        return
    width = width or min(shutil.get_terminal_size((120, 20)).columns, 140)
    col = (width - 4) // 2
    print("\n== the same questions, before and after ==")
    print(f"  {'base (SmolLM2-135M-Instruct)':<{col}}  {'fine-tuned':<{col}}")
    for r in data["cases"]:
        b = base["cases"].get(r["id"], {})
        q = r["prompt"] if r.get("prompt") else "(multi-turn)"
        print(f"\n  [{', '.join(r['tags'])}] {q}")
        left = textwrap.wrap(f"{'✓' if b.get('passed') else '✗'} {b.get('output', '')}", col)[:3]
        right = textwrap.wrap(f"{'✓' if r['passed'] else '✗'} {r['output']}", col)[:3]
        for i in range(max(len(left), len(right))):
            print(f"  {left[i] if i < len(left) else '':<{col}}  {right[i] if i < len(right) else ''}")
    m = base["margins"]["pass_rate"]
    print(f"\n  pass rate: base {m['base']:.3f}, fine-tuned {m['candidate']:.3f}, gate >= {m['threshold']} "
          f"(margins {-m['base_margin']:+.3f} / {m['candidate_margin']:+.3f})")


def pipeline_args(real: bool = False, force: bool = False) -> list[str]:
    """The `ech0 pipeline` arguments of `make demo` (or `make demo-real`); tests/test_demo_gate.py runs the same."""
    force_train = ["--force-train"] if force else []
    if real:
        from ech0.eval import BASELINES_DIR
        from ech0.sample_data.persona import PERSONA_RAW_FILE

        return ["--mode", "pipeline", "--promote-on-pass", "--preset", "conversation_lora", "--input",
                str(PERSONA_RAW_FILE), "--name", "persona", "--baseline", str(BASELINES_DIR / "persona.jsonl"),
                "--gate", "persona", *force_train, *REAL_TRAINING]
    from ech0.sample_data import EVAL_FILE, RAW_FILE

    # the toy sample's own held-out file: whole facts and phrasings training never sees
    return ["--mode", "pipeline", "--promote-on-pass", "--input", str(RAW_FILE), "--name", "sample", *force_train,
            f"data.eval_file={EVAL_FILE}"]


@cli_errors
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from ech0.context import Context
    from ech0.models import ensure_base_model
    from ech0.pipeline import main as pipeline

    real = "--real" in argv
    ctx = Context.from_env()  # only for the base model and the closing lines: the pipeline builds its own
    started = time.time()
    if not real:
        ensure_base_model(ctx.base_models)
    rc = pipeline(pipeline_args(real, force="--force" in argv))
    if rc in (0, 1):
        if real:
            _side_by_side(_latest_report(ctx))
        print(f"\n  {'make demo-real' if real else 'make demo'} took {time.time() - started:.0f} s. Everything above "
              f"lives under {ctx.home}: data/{{raw,clean,processed}}/ + metadata/ (manifests), models/<run_id>/ "
              "(model, status.json, loss_curve.png, reports/), mlflow.db.")
        print("  Load the production model:  mlflow.pyfunc.load_model('models:/ech0@production')")
    return rc


def _latest_report(ctx) -> str:
    from ech0.eval.evaluate import REPORT_JSON

    reports = sorted(ctx.models_dir.glob(f"*/reports/{REPORT_JSON}"), key=lambda p: p.stat().st_mtime)
    return str(reports[-1])


if __name__ == "__main__":
    sys.exit(main())
