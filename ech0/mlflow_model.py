"""The trained model as an MLflow pyfunc: prompts in, greedy completions out, fully offline.

    model = mlflow.pyfunc.load_model("models:/ech0@production")
    model.predict(pd.DataFrame({"prompt": ["What color is snow?"]}), params={"max_new_tokens": 32})

The artifacts hold the run's ``model/`` folder (LoRA adapter or full weights, tokenizer,
``ech0_model.json``) and, for an adapter on a locally built base, the base model folder itself, so
the logged model needs neither the hub nor the machine it was trained on. The adapter is loaded
with peft explicitly — never left to a flavor's guesswork — and tests check the output equals the
in-process fine-tuned model's.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc

META_FILE = "ech0_model.json"


def load_trained(model_dir: str | Path, base_dir: str | None = None):
    """(model, tokenizer, meta) from a run's model folder; ``base_dir`` overrides the recorded base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ech0.models import load_model

    model_dir = Path(model_dir)
    meta = json.loads((model_dir / META_FILE).read_text())
    tok = AutoTokenizer.from_pretrained(model_dir)
    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        base = load_model(base_dir or meta["base_model"], dtype=meta.get("dtype", "float32"))
        model = PeftModel.from_pretrained(base, model_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    return model, tok, meta


class Ech0Generator(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.model, self.tokenizer, self.meta = load_trained(context.artifacts["model"], context.artifacts.get("base"))

    def predict(self, context, model_input, params=None):
        from ech0.generation import generate

        params = params or {}
        if hasattr(model_input, "columns"):
            if "prompt" not in model_input.columns:
                raise ValueError("input needs a 'prompt' column")
            prompts = model_input["prompt"].tolist()
        else:
            prompts = list(model_input)
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError("every prompt must be a string")
        return generate(self.model, self.tokenizer, prompts, self.meta["prompt_template"],
                        max_new_tokens=int(params.get("max_new_tokens", 64)))


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", "prompt")]), outputs=Schema([ColSpec("string")]),
                          params=ParamSchema([ParamSpec("max_new_tokens", "long", 64)]))


def pip_requirements() -> list[str]:
    """Pinned to what trained the model; passed explicitly so MLflow never imports torchvision to guess."""
    from importlib.metadata import version

    pins = [f"{p}=={version(p)}" for p in ("mlflow", "transformers", "peft", "tokenizers", "safetensors", "pandas")]
    import torch

    return pins + [f"torch=={torch.__version__.split('+')[0]}"]
