"""A self-contained model directory: an MLflow pyfunc that transformers/peft can load too, with hashes.

    ech0 registry package --alias production --dest ech0-prod      # -> $ECH0_HOME/packages/ech0-prod
    ech0 registry verify $ECH0_HOME/packages/ech0-prod             # exit 1 if any file changed

    from ech0.registry import package, verify
    package(ctx, "ech0-prod", alias="production"); verify(ctx.home / "packages" / "ech0-prod") == []

Layout: the pyfunc model as training logs it (:mod:`ech0.mlflow_model`: ``MLmodel``, the model's code
file, ``code/ech0``, requirements) whose ``artifacts/<adapter>`` holds the LoRA adapter (or full
weights) with its tokenizer and ``ech0_model.json`` and ``artifacts/<base>`` the base model it
needs, plus ``ech0_package.json``:
where each part is, the source, and the sha256 and size of every other file. Built in a temp folder
beside the destination and renamed into place; an existing destination needs ``--force``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ech0.context import Context
from ech0.errors import UserError
from ech0.io import sha256_file, utc_now
from ech0.registry import store

MANIFEST = "ech0_package.json"
FORMAT = "ech0-package/1"


def destination(ctx: Context, dest: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """``dest`` under ``root`` (default ``<home>/packages``); anything resolving outside it is refused."""
    root_p = Path(os.path.realpath(Path(root).expanduser() if root else ctx.home / "packages"))
    d = Path(dest).expanduser()
    target = Path(os.path.realpath(d if d.is_absolute() else root_p / d))
    if target == root_p or root_p not in target.parents:
        raise UserError(f"--dest {dest}: resolves to {target}, outside {root_p}; pass a folder inside it "
                        f"(or --root to choose another parent)")
    return target


def _pyfunc_artifacts(model_dir: Path) -> dict[str, str]:
    import yaml

    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    arts = (mlmodel.get("flavors", {}).get("python_function", {}) or {}).get("artifacts") or {}
    return {k: v["path"] for k, v in arts.items() if isinstance(v, dict) and "path" in v}


def _save_from_run_dir(run_dir: Path, out: Path) -> dict:
    """Build the pyfunc from a run folder alone (no tracking store needed), as training logs it."""
    from ech0.mlflow_model import save_pyfunc
    from ech0.model_folder import META_FILE, is_adapter, is_model_dir, read_meta

    model_dir = run_dir / "model"
    if not is_model_dir(model_dir):
        raise UserError(f"{run_dir}: no trained model (expected {model_dir / META_FILE})")
    meta = read_meta(model_dir)
    base = meta.get("base_model") or ""
    if is_adapter(model_dir) and not Path(base).is_dir():
        raise UserError(f"{run_dir}: the adapter's base model {base!r} is not a local folder")
    save_pyfunc(out, model_dir, base)
    return {"kind": "run_dir", "run_dir": str(run_dir), "run_id": meta.get("run_id", run_dir.name)}


def _download_version(ctx: Context, mv, out: Path) -> dict:
    import mlflow.artifacts

    mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{mv.name}/{mv.version}", dst_path=str(out),
                                        tracking_uri=ctx.tracking_uri)
    return {"kind": "registry", "name": mv.name, "version": str(mv.version), "run_id": mv.run_id or "",
            "gate": (mv.tags or {}).get("ech0.gate", "none"), "tracking_uri": ctx.tracking_uri}


def hash_tree(root: Path) -> dict[str, dict]:
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != MANIFEST:
            files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return files


def package(ctx: Context, dest: str | os.PathLike, *, run_dir: str | os.PathLike | None = None,
            version: str | int | None = None, alias: str | None = None, root: str | os.PathLike | None = None,
            force: bool = False, name: str | None = None) -> Path:
    """Write the package for a run folder, a version, or an alias of ``name`` (default
    ``ctx.registry_name``); return its path."""
    from ech0.io import atomic_dir, atomic_write_json

    if sum(x is not None for x in (run_dir, version, alias)) != 1:
        raise UserError("package needs exactly one of --run-dir, --version, --alias")
    target = destination(ctx, dest, root)
    if target.exists() and not force:
        raise UserError(f"{target} exists; pass --force to replace it")
    mv = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: run folder not found")
    else:
        mv = store.resolve(store.client(ctx), name or ctx.registry_name, version=version, alias=alias)
    with atomic_dir(target, overwrite=force) as tmp:
        source = _save_from_run_dir(run_dir, tmp) if mv is None else _download_version(ctx, mv, tmp)
        if alias:
            source["alias"] = alias
        arts = _pyfunc_artifacts(tmp)
        atomic_write_json(tmp / MANIFEST, {
            "format": FORMAT, "created_at": utc_now(), "source": source,
            "adapter_dir": arts.get("model"), "base_dir": arts.get("base"),
            "load": {"mlflow": "mlflow.pyfunc.load_model(DIR)",
                     "transformers": "AutoTokenizer.from_pretrained(DIR/adapter_dir); PeftModel.from_pretrained("
                                     "AutoModelForCausalLM.from_pretrained(DIR/base_dir), DIR/adapter_dir)"},
            "files": hash_tree(tmp)})
    return target


def verify(pkg_dir: str | os.PathLike) -> list[str]:
    """Problems found re-hashing a package (empty when intact)."""
    d = Path(pkg_dir)
    if not (d / MANIFEST).is_file():
        raise UserError(f"{pkg_dir}: not an ech0 package (no {MANIFEST})")
    try:
        man = json.loads((d / MANIFEST).read_text())
        files = man["files"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{d / MANIFEST}: unreadable manifest") from None
    problems = []
    for rel, info in files.items():
        p = d / rel
        if not p.is_file():
            problems.append(f"missing: {rel}")
        elif p.stat().st_size != info["bytes"] or sha256_file(p) != info["sha256"]:
            problems.append(f"changed: {rel}")
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d).as_posix()
        if p.is_file() and rel != MANIFEST and rel not in files:
            problems.append(f"unexpected: {rel}")
    return problems
