"""A standalone Hugging Face folder: the LoRA merged into its full-precision base; loads without peft.

    ech0 registry export --alias production --merged --dest DIR [--force]
    ech0 registry export --version 3 --merged --dest DIR
    ech0 registry export --run-dir models/RUN --merged --dest DIR     # no tracking store needed

    from ech0.registry import export
    export(ctx, "DIR", alias="production")                    # -> Path(DIR)
    AutoModelForCausalLM.from_pretrained(DIR); AutoTokenizer.from_pretrained(DIR)

What lands in DIR: ``config.json`` + ``model.safetensors`` (the adapter merged into its base with
peft's ``merge_and_unload`` in float32, or a full fine-tune's weights as they are, in float32), the
tokenizer with the chat template training used, ``generation_config.json`` whose ``eos_token_id``
is the end-of-turn token (:func:`ech0.chat.end_of_turn_id`; with the tokenizer's EOS after it where
the two differ: the ids ech0's own generation stops at), ``ech0_export.json`` (provenance: the
registered model, version, alias, run id, base model and its content hash; the sha256 and size of
every file) and ``sha256sums.txt`` (``cd DIR && sha256sum -c sha256sums.txt`` checks it without ech0).

Built in a temp folder beside DIR and renamed into place. An existing DIR is refused without
``--force``; with it, only a previous export (or an empty folder) is replaced, never anything else.
"""

from __future__ import annotations

import os
from pathlib import Path

from ech0.context import Context
from ech0.errors import UserError
from ech0.io import sha256_file, utc_now
from ech0.registry import store

MANIFEST = "ech0_export.json"
SUMS = "sha256sums.txt"
FORMAT = "ech0-export/1"
FORMATS = ("hf",)  # GGUF: no maintained HF -> GGUF converter on the package registries (README "Merged export")


def _destination(dest: str | os.PathLike, force: bool) -> Path:
    target = Path(os.path.abspath(Path(dest).expanduser()))
    if target.exists() or target.is_symlink():
        if not force:
            raise UserError(f"{target} exists; pass --force to replace it (or choose another --dest)")
        if not target.is_dir() or target.is_symlink() or not ((target / MANIFEST).is_file() or not any(target.iterdir())):
            raise UserError(f"{target} exists and is not an ech0 export (no {MANIFEST}); --force replaces only a "
                            "previous export or an empty folder: choose another --dest")
    return target


def _from_run_dir(run_dir: Path) -> tuple[Path, dict]:
    from ech0.model_folder import META_FILE, is_model_dir

    model_dir = run_dir / "model"
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    if not is_model_dir(model_dir):
        raise UserError(f"{run_dir}: no trained model (expected {model_dir / META_FILE})")
    return model_dir, {"kind": "run_dir", "run_dir": str(run_dir.resolve())}


def _from_version(ctx: Context, mv, work: Path) -> tuple[Path, Path | None, dict]:
    """Download the version's pyfunc into ``work``: (its model folder, its embedded base or None, source)."""
    import mlflow.artifacts

    import yaml

    from ech0.model_folder import META_FILE, is_model_dir

    mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{mv.name}/{mv.version}", dst_path=str(work),
                                        tracking_uri=ctx.tracking_uri)
    flavor = (yaml.safe_load((work / "MLmodel").read_text()) or {}).get("flavors", {}).get("python_function") \
        if (work / "MLmodel").is_file() else None
    arts = {k: v["path"] for k, v in ((flavor or {}).get("artifacts") or {}).items()
            if isinstance(v, dict) and "path" in v}
    model_dir = work / arts["model"] if "model" in arts else None
    if model_dir is None or not is_model_dir(model_dir):
        raise UserError(f"models:/{mv.name}/{mv.version}: not an ech0 model (no artifacts/model/{META_FILE}); "
                        "register a run trained by ech0")
    base = work / arts["base"] if "base" in arts else None
    tags = mv.tags or {}
    return model_dir, base, {"kind": "registry", "name": mv.name, "version": str(mv.version),
                             "run_id": mv.run_id or "", "gate": tags.get("ech0.gate", "none"),
                             "tracking_uri": ctx.tracking_uri}


def _base_of(meta: dict, embedded: Path | None) -> str:
    """The adapter's base: a package's embedded copy (hash checked) or the recorded, verified one."""
    from ech0.model_folder import verified_base

    if embedded is None:
        return verified_base(meta)
    from ech0.models import content_hash

    recorded = meta.get("base_model_hash") or ""
    if recorded and not recorded.startswith("hub:") and content_hash(embedded) != recorded:
        raise UserError(f"{embedded}: the embedded base is not the one this adapter was trained on (sha256 "
                        f"{recorded[:12]})")
    return str(embedded)


def merged_model(model_dir: Path, base: str | None):
    """The float32 model a folder describes, with no peft layers left: an adapter merged into ``base``."""
    import torch
    from transformers import AutoModelForCausalLM

    from ech0.model_folder import is_adapter
    from ech0.models import load_model

    if not is_adapter(model_dir):
        return _full_precision(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), model_dir)
    from peft import PeftModel

    # Merged in float32 whatever dtype training ran in: W + scale * B @ A rounded once, in full precision.
    peft_model = PeftModel.from_pretrained(load_model(base, dtype="float32"), model_dir)
    return _full_precision(peft_model.merge_and_unload(), base)


def _full_precision(model, where):
    """``model`` with no quantization left to save. A base converted from GGUF (ech0.models.gguf) keeps
    transformers' ``quantization_config: {quant_method: gguf}`` although its weights were dequantised to
    float32; saved as is, ``save_pretrained`` refuses ("quantized with gguf and is not serializable") and
    the folder would ask for the GGUF file again on load. Weights that really are quantized are refused."""
    import torch

    qc = getattr(model.config, "quantization_config", None)
    if qc is None:
        return model
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    method = str(getattr(method, "value", method))
    if method != "gguf" or any(p.dtype != torch.float32 for p in model.parameters()):
        raise UserError(f"{where}: the base model is quantized ({method}); a merged export needs its full-precision "
                        "weights: train on (or point the model at) the unquantized base")
    model.hf_quantizer = None
    del model.config.quantization_config
    return model


def generation_config(model, tokenizer):
    """The base's generation config with ech0's stop tokens: the end-of-turn token first, then EOS."""
    from transformers import GenerationConfig

    from ech0.chat import end_of_turn_id

    gc = model.generation_config if model.generation_config is not None else GenerationConfig.from_model_config(
        model.config)
    eot, eos = end_of_turn_id(tokenizer), tokenizer.eos_token_id
    gc.eos_token_id = eot if eos in (None, eot) else [eot, eos]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot
    gc.pad_token_id = pad
    if tokenizer.bos_token_id is not None:
        gc.bos_token_id = tokenizer.bos_token_id
    return gc


def _hashes(root: Path) -> dict[str, dict]:
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in (MANIFEST, SUMS):
            files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return files


def _write(out: Path, model_dir: Path, base: str | None, source: dict) -> None:
    import torch
    from safetensors import SafetensorError
    from transformers import AutoTokenizer

    from ech0.chat import end_of_turn_id, ensure_template
    from ech0.io import atomic_write_json, atomic_write_text
    from ech0.model_folder import is_adapter, read_meta

    meta = read_meta(model_dir)
    try:
        tok = ensure_template(AutoTokenizer.from_pretrained(model_dir))  # the template training saved with it
        model = merged_model(model_dir, base)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # a damaged or truncated weights/tokenizer file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"{model_dir}: cannot load the trained model ({type(e).__name__}: {first})") from None
    model.generation_config = generation_config(model, tok)
    model.to(torch.float32).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    eot = end_of_turn_id(tok)
    template = tok.chat_template if isinstance(tok.chat_template, str) else None
    atomic_write_json(out / MANIFEST, {
        "format": FORMAT, "created_at": utc_now(), "source": {**source, "run_id": source.get("run_id")
                                                               or meta.get("run_id", "")},
        "merged": is_adapter(model_dir), "dtype": "float32", "preset": meta.get("preset"),
        "base_model": {"spec": meta.get("base_model_spec", meta.get("base_model")), "path": base or "",
                       "sha256": meta.get("base_model_hash", ""), "revision": meta.get("revision")},
        "end_of_turn": {"token": tok.convert_ids_to_tokens(eot), "id": eot},
        "chat_template_sha256": _sha256_text(template) if template else None,
        "load": "AutoModelForCausalLM.from_pretrained(DIR); AutoTokenizer.from_pretrained(DIR)  # no peft needed",
        "files": _hashes(out)})
    sums = {**_hashes(out), MANIFEST: {"sha256": sha256_file(out / MANIFEST)}}
    atomic_write_text(out / SUMS, "".join(f"{v['sha256']}  {k}\n" for k, v in sorted(sums.items())))


def _sha256_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def export(ctx: Context, dest: str | os.PathLike, *, run_dir: str | os.PathLike | None = None,
           version: str | int | None = None, alias: str | None = None, force: bool = False,
           name: str | None = None, fmt: str = "hf") -> Path:
    """Write the merged Hugging Face folder for a run folder, a version, or an alias of ``name``
    (default ``ctx.registry_name``) to ``dest``; return its path."""
    import shutil
    import tempfile

    from ech0.io import atomic_dir
    from ech0.model_folder import is_adapter, read_meta

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: ech0 exports {', '.join(FORMATS)} only; for GGUF run llama.cpp's "
                        "convert_hf_to_gguf.py on the exported folder (README: Merged export)")
    if sum(x is not None for x in (run_dir, version, alias)) != 1:
        raise UserError("export needs exactly one of --run-dir, --version, --alias")
    target = _destination(dest, force)
    embedded, source, work = None, None, None
    if run_dir is not None:
        model_dir, source = _from_run_dir(Path(run_dir))
    else:
        mv = store.resolve(store.client(ctx), name or ctx.registry_name, version=version, alias=alias)
        target.parent.mkdir(parents=True, exist_ok=True)  # the download sits beside DIR: one file system
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.download.", dir=target.parent))
    try:
        if work is not None:
            model_dir, embedded, source = _from_version(ctx, mv, work)
            if alias:
                source["alias"] = alias
        base = _base_of(read_meta(model_dir), embedded) if is_adapter(model_dir) else None
        with atomic_dir(target, overwrite=force) as tmp:
            _write(tmp, model_dir, base, source)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return target
