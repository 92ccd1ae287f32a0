"""Base models and tokenizers: the tiny local one or any Hugging Face id/path (core; no mlflow).

    from ech0.models import resolve, load_model, load_tokenizer
    path = resolve("local:tiny-llama", {}, ctx.base_models)   # builds the tiny model once, returns its folder
    model, tok = load_model(path), load_tokenizer(path)

A ``name_or_path`` of ``local:<name>`` means a locally built recipe (:mod:`ech0.models.tiny`) kept
under the context's base-models folder; anything else goes to ``from_pretrained`` unchanged (a hub
id on a GPU box honours ``HF_HOME``).
"""

from __future__ import annotations

from pathlib import Path

LOCAL_PREFIX = "local:"


def ensure_base_model(base_models: Path, recipe=None, verbose: bool = True) -> Path:
    """The default tiny recipe's folder under ``base_models``, built on first use."""
    from ech0.models.tiny import TinyRecipe, build

    return build(recipe or TinyRecipe(), base_models, verbose=verbose)


def resolve(name_or_path: str, recipe_overrides: dict | None, base_models: Path) -> str:
    """Turn ``local:<name>`` into the built model's folder under ``base_models``; pass everything else through."""
    if name_or_path.startswith(LOCAL_PREFIX):
        from ech0.models.tiny import TinyRecipe

        recipe = TinyRecipe(name=name_or_path[len(LOCAL_PREFIX):], **(recipe_overrides or {}))
        return str(ensure_base_model(base_models, recipe))
    return name_or_path


def load_tokenizer(path: str, revision: str | None = None):
    """The tokenizer of a resolved model folder or hub id (a pad token is added when it has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, revision=revision)
    if tok.pad_token is None:  # e.g. Mistral ships none; padding is masked, any id will do
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: str = "float32", attn_implementation: str | None = "sdpa",
               revision: str | None = None, device_map=None):
    """The causal LM of a resolved model folder or hub id."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path, revision=revision, dtype=getattr(torch, dtype),
        attn_implementation=attn_implementation, device_map=device_map)


def content_hash(folder: str | Path) -> str:
    """sha256 over the weight files of a model folder (names + bytes), for lineage tags."""
    import hashlib

    h = hashlib.sha256()
    folder = Path(folder)
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()
