"""Model registry: register, list, promote, rollback, package, export, verify — ``ech0 registry ...``.

    ech0 registry register --run-id RUN [--eval-report R] [--score S]   # = python scripts/model_registry.py register ...
    ech0 registry register --run-id RUN --best [--best-metric eval/loss --best-mode min]   # its best checkpoint
    ech0 registry list
    ech0 registry promote --run-id RUN --stage production [--force --reason "..."]
    ech0 registry rollback [--stage production] [--to-version N]
    ech0 registry history [--stage production]
    ech0 registry package --alias production --dest ech0-prod [--force]
    ech0 registry export --alias production --merged --dest DIR [--force]   # a standalone HF folder
    ech0 registry verify packages/ech0-prod

A stage is an MLflow alias (``models:/ech0@production``); every move is an event in a promotion
history kept as tags on the registered model, written under a registry-wide lock, and the alias is
derived from that history (see ech0/registry/history.py for the design and its limits). On a server
with MLflow's basic-auth app each write is checked against the user's permission before anything is
written, and a refusal is one line naming user, operation and permission (ech0/registry/access.py).

The public API other stages use; each takes the command's :class:`ech0.context.Context` first
(its store; its ``registry_name`` when no ``name`` is given)::

    register(ctx, run_id, eval_report=..., score=...) -> ModelVersion    # best=True: its best checkpoint
    best_model(ctx, run_id, metric="eval/loss", mode="min") -> Picked    # .model_id .step .kind .model_dir
    promote(ctx, version=N | run_id=RUN, stage="production") -> Move      # rollback(ctx, stage=...)
    resolve_uri(ctx, "models:/ech0@production" | "models:/ech0/3") -> ModelVersion   (UserError if unknown)
    alias_version(ctx, name, "production") -> ModelVersion | None
    version_of_run(ctx, run_id) -> ModelVersion | None                   # its newest version
    tag_version(ctx, mv, {"ech0.smoke": "passed"})                       # record a later stage's result
    package(ctx, dest, alias="production"), verify(folder) -> [problems]
    export(ctx, dest, alias="production") -> Path                       # the LoRA merged into its base

Exit codes: 0 ok, 1 verification failed, 2 user error (one line on stderr). mlflow is imported only
when a command runs, so ``--help`` is instant.
"""

from __future__ import annotations

from ech0.registry.cli import main
from ech0.registry.export import export
from ech0.registry.history import Move, promote, rollback
from ech0.registry.package import package, verify
from ech0.registry.store import (ALIASES, alias_version, best_model, register, resolve_uri, tag_version,
                                 version_of_run)

__all__ = ["main", "register", "promote", "rollback", "Move", "package", "export", "verify", "resolve_uri",
           "alias_version", "version_of_run", "tag_version", "best_model", "ALIASES"]
