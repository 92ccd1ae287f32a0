"""The trained model as an MLflow pyfunc: prompts in, greedy completions out, fully offline.

    from ech0.mlflow_model import log_pyfunc, save_pyfunc
    log_pyfunc(tracker, run_dir / "model", base_path)        # training: into the open run, at `model`
    save_pyfunc(dest, run_dir / "model", base_path)          # a package folder, no tracking store

    model = mlflow.pyfunc.load_model("models:/ech0@production")
    model.predict(pd.DataFrame({"prompt": ["What color is snow?"]}), params={"max_new_tokens": 32})

Both build the same model (:func:`pyfunc_spec`): MLflow's "models from code" — the model is the
file ``mlflow_model_code.py``, which calls ``mlflow.models.set_model(Ech0Generator())``, not a
pickle — over artifacts holding the run's ``model/`` folder (LoRA adapter or full weights,
tokenizer, ``ech0_model.json``) and, for an adapter on a locally built base, the base model folder
itself, so the logged model needs neither the hub nor the machine it was trained on. The adapter
is loaded with peft explicitly (:func:`ech0.model_folder.load_trained`) and tests check the
output equals the in-process fine-tuned model's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from ech0.model_folder import is_adapter, load_trained

MODEL_CODE = Path(__file__).with_name("mlflow_model_code.py")
DEFAULT_MAX_NEW_TOKENS = 64


class Ech0Generator(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.model, self.tokenizer, self.meta = load_trained(context.artifacts["model"], context.artifacts.get("base"))

    # MLflow hands predict() the frame the signature's `prompt` column describes (served
    # `dataframe_split` and `dataframe_records` alike); a DataFrame hint adds no second validation.
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        from ech0.generation import generate

        params = params or {}
        if "prompt" not in model_input.columns:
            raise ValueError("input needs a 'prompt' column")
        prompts = model_input["prompt"].tolist()
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError("every prompt must be a string")
        return generate(self.model, self.tokenizer, prompts, self.meta["prompt_template"],
                        max_new_tokens=int(params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)))


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", "prompt")]), outputs=Schema([ColSpec("string")]),
                          params=ParamSchema([ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS)]))


def pip_requirements() -> list[str]:
    """Pinned to what trained the model; passed explicitly so MLflow never imports torchvision to guess."""
    from importlib.metadata import version

    pins = [f"{p}=={version(p)}" for p in ("mlflow", "transformers", "peft", "tokenizers", "safetensors", "pandas")]
    import torch

    return pins + [f"torch=={torch.__version__.split('+')[0]}"]


def pyfunc_spec(model_dir: str | os.PathLike, base_path: str | None) -> dict:
    """The keyword arguments of ``mlflow.pyfunc.save_model`` / ``log_model`` for a trained model folder.

    A local base folder travels with an adapter (artifact ``base``); a hub id is fetched by id at load.
    """
    import ech0

    artifacts = {"model": str(model_dir)}
    if is_adapter(model_dir) and base_path and Path(base_path).is_dir():
        artifacts["base"] = str(base_path)
    return {"python_model": str(MODEL_CODE), "artifacts": artifacts, "signature": signature(),
            "pip_requirements": pip_requirements(), "code_paths": [str(Path(ech0.__file__).parent)]}


def log_pyfunc(tracker, model_dir: str | os.PathLike, base_path: str | None):
    """Log the model into ``tracker``'s open run (:meth:`ech0.tracking.Tracker.log_model`) at ``model``."""
    return tracker.log_model(**pyfunc_spec(model_dir, base_path))


def save_pyfunc(path: str | os.PathLike, model_dir: str | os.PathLike, base_path: str | None) -> None:
    """Write the same model to the folder ``path`` (which must not exist yet)."""
    mlflow.pyfunc.save_model(str(path), **pyfunc_spec(model_dir, base_path))
