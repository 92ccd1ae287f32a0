"""Model registry: register, list, promote, rollback, package, verify — ``ech0 registry ...``.

    ech0 registry register --run-id RUN [--eval-report R] [--score S]   # = python scripts/model_registry.py register ...
    ech0 registry list
    ech0 registry promote --run-id RUN --stage production [--force --reason "..."]
    ech0 registry rollback [--stage production] [--to-version N]
    ech0 registry history [--stage production]
    ech0 registry package --alias production --dest ech0-prod [--force]
    ech0 registry verify packages/ech0-prod

A stage is an MLflow alias (``models:/ech0@production``); every move is an event in a promotion
history kept as tags on the registered model, written under a registry-wide lock, and the alias is
derived from that history (see ech0/registry/history.py for the design and its limits).

Pipeline entry points: :func:`register`, :func:`promote`, :func:`rollback`, :func:`package`,
:func:`verify`. Exit codes: 0 ok, 1 verification failed, 2 user error (one line on stderr).
mlflow is imported only when a command runs, so ``--help`` is instant.
"""

from __future__ import annotations

from ech0.registry.cli import main
from ech0.registry.history import promote, rollback
from ech0.registry.package import package, verify
from ech0.registry.store import DEFAULT_NAME, register

__all__ = ["main", "register", "promote", "rollback", "package", "verify", "DEFAULT_NAME"]
