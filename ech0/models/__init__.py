"""Loading base models and tokenizers: the tiny local one or any Hugging Face id/path.

    from ech0.models import ensure_base_model, load_tokenizer
    path = ensure_base_model()            # builds the tiny model once, then returns its folder

A ``name_or_path`` of ``local:tiny-llama`` means the locally built recipe; anything else goes to
``AutoModelForCausalLM.from_pretrained`` unchanged (a hub id on a GPU box honours ``HF_HOME``).
"""

from __future__ import annotations

from pathlib import Path

LOCAL_PREFIX = "local:"


def ensure_base_model(recipe=None, verbose: bool = True) -> Path:
    from ech0.models.tiny import TinyRecipe, build

    return build(recipe or TinyRecipe(), verbose=verbose)


def resolve(name_or_path: str, recipe_overrides: dict | None = None) -> str:
    """Turn ``local:<name>`` into the built model's folder; pass everything else through."""
    if name_or_path.startswith(LOCAL_PREFIX):
        from ech0.models.tiny import TinyRecipe

        recipe = TinyRecipe(name=name_or_path[len(LOCAL_PREFIX):], **(recipe_overrides or {}))
        return str(ensure_base_model(recipe))
    return name_or_path


def load_tokenizer(name_or_path: str, revision: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve(name_or_path), revision=revision)
    if tok.pad_token is None:  # e.g. Mistral ships none; padding is masked, any id will do
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, dtype: str = "float32", attn_implementation: str | None = "sdpa",
               revision: str | None = None, device_map=None):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        resolve(name_or_path), revision=revision, dtype=getattr(torch, dtype),
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
