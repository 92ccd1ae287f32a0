"""The evaluation stage: regression cases, checks, safety flags, the gate's verdict.

    python -m ech0.eval --model-dir models/<run_id> --baseline ech0/eval/baselines/regression.jsonl
    ech0 eval --model-dir models:/ech0@production

From Python (the pipeline): ``from ech0.eval.evaluate import evaluate; evaluate(ctx, model_ref)``.
Modules, in the order imports flow: ``cases`` (baselines) and ``checks``, ``safety``, ``gate``;
``subject`` (resolving and loading a model), ``scoring``, ``champion``, ``report``, ``genai_view`` (the cases
in MLflow's evaluation view); ``evaluate`` (the stage); ``cli`` (its command line). The baseline format, the exit codes and the measured margins are
in README.md, "Evaluation gate".
"""

from pathlib import Path

DEFAULT_BASELINE = Path(__file__).resolve().parent / "baselines" / "regression.jsonl"
BASELINES_DIR = DEFAULT_BASELINE.parent  # regression.jsonl (the tiny model), persona.jsonl (make demo-real)
