"""Where a command works: one value built at the CLI edge and passed down to every stage.

    ctx = Context.from_env()                            # ECH0_HOME, MLFLOW_TRACKING_URI, ECH0_REGISTRY_NAME ...
    ctx = Context.from_env(home="/data/ech0", tracking_uri="http://mlflow:5000")
    ctx.run_dir(run_id), ctx.data_file("clean", "crypto"), ctx.tracking_uri

This is the only module that reads ech0's own environment variables, and it reads them only when a
CLI entry point (or a test) calls :meth:`Context.from_env`. Stages receive the value and never look
at ``os.environ`` themselves. Layout under ``home``::

    data/{raw,clean,processed}/   JSONL levels the data stage writes
    metadata/                     their manifests
    models/<run_id>/              one folder per training run (MLflow run id)
    base_models/                  base models built or converted here, keyed by content
    mlflow.db, mlartifacts/       the embedded MLflow store (when no tracking server is named)
    logs/                         Hydra's folders and job logs, out of the user's way
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

DATA_LEVELS = ("raw", "clean", "processed")  # the data stage's outputs, in the order it writes them
DEFAULT_REGISTRY_NAME = "ech0"
SUBFOLDERS = {"metadata_dir": "metadata", "models_dir": "models", "logs_dir": "logs", "artifact_root": "mlartifacts"}


@dataclass(frozen=True)
class Context:
    home: Path  # root of everything ech0 writes (absolute)
    tracking_uri: str  # the MLflow store every stage of this command talks to
    registry_name: str = DEFAULT_REGISTRY_NAME  # registered-model name the registry, eval and smoke use
    base_models_dir: Path | None = None  # None: <home>/base_models; a shared cache for several homes
    user: str | None = None  # who the registry history records (None: the login name)
    metadata_dir: Path = field(init=False)  # the data stage's manifests
    models_dir: Path = field(init=False)  # models/<run_id>/
    logs_dir: Path = field(init=False)  # Hydra's folders, job logs
    artifact_root: Path = field(init=False)  # the embedded store's artifacts

    def __post_init__(self) -> None:
        for name, sub in SUBFOLDERS.items():
            object.__setattr__(self, name, self.home / sub)

    @classmethod
    def from_env(cls, home: str | os.PathLike | None = None, tracking_uri: str | None = None,
                 registry_name: str | None = None, environ: Mapping[str, str] | None = None) -> "Context":
        """Explicit values first, then ``ECH0_HOME``, ``MLFLOW_TRACKING_URI``, ``ECH0_REGISTRY_NAME``,
        ``ECH0_BASE_MODELS_DIR``, ``ECH0_USER``; then the defaults (the current folder, SQLite under it)."""
        env = os.environ if environ is None else environ
        root = Path(home or env.get("ECH0_HOME") or os.getcwd()).expanduser().resolve()
        base = env.get("ECH0_BASE_MODELS_DIR")
        return cls(home=root,
                   tracking_uri=tracking_uri or env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}",
                   registry_name=registry_name or env.get("ECH0_REGISTRY_NAME") or DEFAULT_REGISTRY_NAME,
                   base_models_dir=Path(base).expanduser().resolve() if base else None,
                   user=env.get("ECH0_USER") or None)

    @classmethod
    def from_config(cls, cfg, environ: Mapping[str, str] | None = None) -> "Context":
        """The context of a composed config: its ``paths.home`` and ``tracking.uri`` win over the environment."""
        tracking = cfg.get("tracking") or {}
        return cls.from_env(home=cfg.paths.home, tracking_uri=tracking.get("uri"), environ=environ)

    def with_(self, **changes) -> "Context":
        return replace(self, **changes)

    # ------------------------------------------------------------------ layout
    def data_dir(self, level: str) -> Path:
        if level not in DATA_LEVELS:
            raise ValueError(f"unknown data level {level!r}; expected one of {', '.join(DATA_LEVELS)}")
        return self.home / "data" / level

    def data_file(self, level: str, name: str) -> Path:
        return self.data_dir(level) / f"{name}.jsonl"

    def run_dir(self, run_id: str) -> Path:
        return self.models_dir / run_id

    @property
    def base_models(self) -> Path:
        return self.base_models_dir or self.home / "base_models"

    @property
    def is_local_store(self) -> bool:
        return self.tracking_uri.startswith("sqlite:")

    def relative(self, p: str | os.PathLike) -> str:
        """``p`` relative to home when it lies under it (the tree can move), else absolute."""
        p = Path(p).resolve()
        try:
            return p.relative_to(self.home).as_posix()
        except ValueError:
            return str(p)

    def resolve(self, p: str) -> Path:
        """The inverse of :meth:`relative`."""
        q = Path(p)
        return q if q.is_absolute() else self.home / q
