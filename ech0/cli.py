"""The ``ech0`` command: a thin dispatcher to each stage's own entry point.

    ech0 train +preset=lora          = python -m ech0.train +preset=lora
    ech0 data import --input x.json  = python -m ech0.data import --input x.json
"""

from __future__ import annotations

import importlib
import sys

STAGES = {
    "train": ("ech0.train", "fine-tune a model (Hydra overrides, e.g. +preset=lora)"),
    "data": ("ech0.data.cli", "import, validate, redact, dedupe data; verify manifests"),
    "eval": ("ech0.eval.runner", "run regression cases against a model; the gate decides (exit 0/1)"),
    "registry": ("ech0.registry", "register, list, promote, rollback, package, verify model versions"),
    "smoke": ("ech0.serving", "serve a model with `mlflow models serve` and check its answers"),
    "pipeline": ("ech0.pipeline", "train -> eval gate -> register -> promote on pass -> serving smoke"),
    "watch": ("ech0.watch", "follow a run's status.json until it ends"),
    "base-model": ("ech0.models.tiny", "build (or find) the local tiny base model"),
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: ech0 <stage> [args...]\n\nstages:")
        for name, (_, help_) in STAGES.items():
            print(f"  {name:<11} {help_}")
        print("\n`ech0 <stage> --help` shows a stage's own options.")
        raise SystemExit(0 if argv else 2)
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"error: unknown stage {stage!r}; expected one of {', '.join(STAGES)}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(STAGES[stage][0])
    sys.argv = [f"ech0 {stage}", *rest]
    raise SystemExit(module.main(rest) or 0)


if __name__ == "__main__":
    main()
