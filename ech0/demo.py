"""The quick-start demo: build the tiny base model, fine-tune it with the `lora` preset, summarise.

    make demo            # = .venv/bin/python -m ech0.demo

A second run finds the finished run with the same fingerprint (config, data, base model) in MLflow
and shows it instead of training again; ``--force`` retrains.
"""

from __future__ import annotations

import sys

from ech0.errors import cli_errors


@cli_errors
def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    from ech0.cli_common import compose, print_summary, quiet_libraries
    from ech0.models import ensure_base_model

    quiet_libraries()
    ensure_base_model()
    cfg = compose("train", ["+preset=lora"])
    from ech0.trainer.fit import find_finished, fit

    done = None if "--force" in argv else find_finished(cfg)
    if done is not None:
        print(f"already trained with this exact config, data and base model (pass --force to retrain):")
        print_summary(done)
        return
    print_summary(fit(cfg))


if __name__ == "__main__":
    main()
