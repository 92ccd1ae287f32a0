"""A trained model's folder: weights or a LoRA adapter, its tokenizer, and ``ech0_model.json``.

    from ech0.model_folder import is_model_dir, load_trained, read_meta, save_trained
    save_trained(run_dir / "model", model, tokenizer, {"base_model": ..., "train_on": ...})
    model, tokenizer, meta = load_trained(run_dir / "model")

The meta file records what loading needs: ``base_model`` (the local folder or hub id an adapter
sits on), ``dtype``, ``train_on``, ``run_id``, ``preset``, ``adapter``. This module imports
neither mlflow nor torch at import time, so eval and training use it without pulling in
``mlflow.pyfunc`` (ech0.mlflow_model wraps this folder as a pyfunc).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

META_FILE = "ech0_model.json"
ADAPTER_CONFIG = "adapter_config.json"  # peft's marker: the folder holds an adapter, not full weights


def is_model_dir(model_dir: str | os.PathLike) -> bool:
    return (Path(model_dir) / META_FILE).is_file()


def is_adapter(model_dir: str | os.PathLike) -> bool:
    return (Path(model_dir) / ADAPTER_CONFIG).exists()


def read_meta(model_dir: str | os.PathLike) -> dict:
    return json.loads((Path(model_dir) / META_FILE).read_text())


def save_trained(out: str | os.PathLike, model, tokenizer, meta: dict, state_dict: dict | None = None) -> None:
    """Write the folder atomically (built beside ``out``, renamed into place; an old one is replaced).
    ``state_dict``: the weights to write instead of the model's own (a sharded model's, gathered whole)."""
    from ech0.io import atomic_dir, atomic_write_json

    with atomic_dir(out, overwrite=True) as tmp:
        given = {} if state_dict is None else {"state_dict": state_dict}
        model.save_pretrained(tmp, safe_serialization=True, **given)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / META_FILE, {**meta, "adapter": is_adapter(tmp)})


def verified_base(meta: dict) -> str:
    """The base an adapter was trained on, checked: a local folder must hold the recorded weights."""
    base, recorded = meta["base_model"], meta.get("base_model_hash")
    if not recorded or recorded.startswith("hub:"):
        return base  # a hub id (pinned by revision when one was given)
    from ech0.errors import UserError
    from ech0.models import content_hash

    if not Path(base).is_dir():
        raise UserError(f"base model {meta.get('base_model_spec', base)} is not at {base} on this machine: prepare it "
                        "there (ech0 base-model model=...) or serve a self-contained copy (ech0 registry package)")
    if content_hash(base) != recorded:
        raise UserError(f"{base}: its weights are not the ones this adapter was trained on (sha256 "
                        f"{recorded[:12]}); rebuild that base or use a self-contained package")
    return base


def load_trained(model_dir: str | os.PathLike, base_dir: str | None = None):
    """(model, tokenizer, meta) from a model folder, in eval mode; ``base_dir`` overrides the recorded base.

    An adapter is loaded onto its base with peft explicitly, never left to a library's guesswork.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ech0.models import load_model

    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    from ech0.chat import ensure_template

    tok = ensure_template(AutoTokenizer.from_pretrained(model_dir))  # the template training used is in the folder
    if is_adapter(model_dir):
        from peft import PeftModel

        base = load_model(base_dir or verified_base(meta), dtype=meta.get("dtype", "float32"))
        model = PeftModel.from_pretrained(base, model_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    return model, tok, meta
