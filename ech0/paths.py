"""Where ech0 keeps everything: one root, ``ECH0_HOME`` (default: the current directory).

    ECH0_HOME=/data/ech0 python -m ech0.train +preset=lora

Layout under the root::

    data/{raw,clean,processed}/   JSONL stages (the data stage writes them)
    metadata/                     manifests
    models/{run_id}/              one folder per training run (MLflow run id)
    base_models/                  locally built base models, keyed by recipe hash
    mlflow.db, mlartifacts/       the embedded MLflow store
    logs/                         Hydra's own output folders, kept out of the user's way
"""

from __future__ import annotations

import os
from pathlib import Path

STAGES = ("raw", "clean", "processed")


def home() -> Path:
    """The root every ech0 output lives under (absolute)."""
    return Path(os.environ.get("ECH0_HOME") or os.getcwd()).expanduser().resolve()


def data_dir(stage: str) -> Path:
    if stage not in STAGES:
        raise ValueError(f"unknown data stage {stage!r}; expected one of {', '.join(STAGES)}")
    return home() / "data" / stage


def metadata_dir() -> Path:
    return home() / "metadata"


def models_dir() -> Path:
    return home() / "models"


def run_dir(run_id: str) -> Path:
    return models_dir() / run_id


def base_models_dir() -> Path:
    """Built base models; ``ECH0_BASE_MODELS_DIR`` shares one cache between several homes."""
    override = os.environ.get("ECH0_BASE_MODELS_DIR")
    return Path(override).expanduser().resolve() if override else home() / "base_models"


def logs_dir() -> Path:
    return home() / "logs"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store under the root (absolute path)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def artifact_root() -> Path:
    return home() / "mlartifacts"
