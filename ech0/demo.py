"""The quick-start demo: the whole pipeline on the shipped sample data, then a summary for a newcomer.

    make demo            # = .venv/bin/python -m ech0.demo [--force]

Builds the tiny base model (once), fine-tunes it with the `lora` preset, runs the evaluation gate,
registers the model, promotes it to `production` if the gate passed, and serves it with
`mlflow models serve` to check the answers. A second run reuses the finished training run and the
registered version (same config, data and base model); ``--force`` retrains.
"""

from __future__ import annotations

import sys

from ech0.errors import cli_errors


@cli_errors
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from ech0 import paths, tracking
    from ech0.cli_common import quiet_libraries
    from ech0.models import ensure_base_model
    from ech0.pipeline import print_result, run

    quiet_libraries()
    ensure_base_model()
    result = run([], preset="lora", promote_on_pass=True, smoke=True, force_train="--force" in argv)
    print_result(result, tracking.tracking_uri())
    print(f"\n  Everything above lives under {paths.home()}: data/, models/<run_id>/ (model, status.json, "
          "loss_curve.png, reports/), mlflow.db.")
    print("  Load the production model:  mlflow.pyfunc.load_model('models:/ech0@production')")
    return 0 if result.gate_passed and result.smoke_passed else 1


if __name__ == "__main__":
    sys.exit(main())
