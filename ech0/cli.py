"""The ``ech0`` command: a thin dispatcher to each stage's own entry point.

    ech0 train +preset=lora          = python -m ech0.train +preset=lora
    ech0 data import --input x.json  = python -m ech0.data import --input x.json

One name per stage: ``ech0 <name>`` runs the module ``ech0.<name>`` (``-`` becomes ``_``), which is
also its MLproject entry point and the prefix of its tests (``tests/test_<name>*.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

SUBCOMMANDS = {
    "data": "import, validate, redact, dedupe data; verify manifests",
    "train": "fine-tune a model (Hydra overrides, e.g. +preset=lora)",
    "eval": "run regression cases against a model; the gate decides (exit 0/1)",
    "registry": "register, list, promote, rollback, history, package, verify model versions",
    "smoke": "serve a model with `mlflow models serve` and check its answers",
    "pipeline": "data -> train -> eval gate -> register -> promote on pass -> serving smoke",
    "sweep": "a Hydra multirun of training under one parent run (= ech0 train -m ...)",
    "watch": "follow a run's status.json until it ends",
    "sync": "deliver what a tracking-server outage left in runs' spools (idempotent)",
    "base-model": "prepare the configured base model; print its folder, size and one answer",
}


def module_of(name: str) -> str:
    """The module behind ``ech0 <name>``; a package's entry is its ``cli`` module."""
    module = "ech0." + name.replace("-", "_")
    return module + ".cli" if importlib.util.find_spec(module).submodule_search_locations else module


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: ech0 <stage> [args...]\n\nstages:")
        for name, help_ in SUBCOMMANDS.items():
            print(f"  {name:<11} {help_}")
        print("\n`ech0 <stage> --help` shows a stage's own options.")
        raise SystemExit(0 if argv else 2)
    stage, rest = argv[0], argv[1:]
    if stage not in SUBCOMMANDS:
        print(f"error: unknown stage {stage!r}; expected one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    from ech0.config import expand_overrides

    rest = expand_overrides(rest)  # MLproject passes `--args "..."` / `--overrides "..."` as one argument
    module = importlib.import_module(module_of(stage))
    sys.argv = [f"ech0 {stage}", *rest]
    raise SystemExit(module.main(rest) or 0)


if __name__ == "__main__":
    main()
