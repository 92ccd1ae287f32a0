"""The quick-start demo: the whole pipeline on the shipped sample data, then a summary for a newcomer.

    make demo            # = .venv/bin/python -m ech0.demo [--force]

Builds the tiny base model (once), runs the data stage on the shipped raw sample (a messy legacy
dump: import → clean → processed), fine-tunes on its output with the `lora` preset, runs the
evaluation gate, registers the model, promotes it to `production` if the gate passed, and serves it
with `mlflow models serve` to check the answers. A second run skips what is already done (same input
bytes, config, data and base model); ``--force`` retrains.
"""

from __future__ import annotations

import sys

from ech0.errors import cli_errors


@cli_errors
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from ech0.context import Context
    from ech0.models import ensure_base_model
    from ech0.pipeline import main as pipeline
    from ech0.sample_data import RAW_FILE

    ctx = Context.from_env()  # only for the base model and the closing lines: the pipeline builds its own
    ensure_base_model(ctx.base_models)
    rc = pipeline(["--mode", "pipeline", "--promote-on-pass", "--input", str(RAW_FILE), "--name", "sample",
                   *(["--force-train"] if "--force" in argv else [])])
    if rc in (0, 1):
        print(f"\n  Everything above lives under {ctx.home}: data/{{raw,clean,processed}}/ + metadata/ "
              "(manifests), models/<run_id>/ (model, status.json, loss_curve.png, reports/), mlflow.db.")
        print("  Load the production model:  mlflow.pyfunc.load_model('models:/ech0@production')")
    return rc


if __name__ == "__main__":
    sys.exit(main())
