"""The model under evaluation: resolving what the user named and loading it. Not run directly.

    from ech0.eval.subject import load_subject, resolve_ref
    kind, folder = resolve_ref(ctx, "models/<run_id>")        # checked without loading: run | hf | mlflow
    subject = load_subject(ctx, "models:/ech0@production")    # model, tokenizer (with its chat template), its run

A reference is a run dir (``models/<run_id>``, relative to ``ctx.home`` or the current folder, or its
``model/`` folder), a plain Hugging Face model dir, or an MLflow URI (``runs:/<id>/model``,
``models:/<name>@<alias>``, ``models:/<name>/<version>``; aliases are resolved by
:func:`ech0.registry.store.resolve_uri`, the one place that does). Used by :mod:`ech0.eval.evaluate`
for the candidate and by :mod:`ech0.eval.champion` for the champion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ech0.context import Context
from ech0.errors import UserError
from ech0.model_folder import META_FILE

MLFLOW_SCHEMES = ("runs:/", "models:/")


@dataclass
class Subject:
    """A loaded model and how to reach it: generation, reference loss, where its verdict goes."""

    ref: str
    kind: str  # run | hf | mlflow
    label: str
    run_id: str | None = None  # its training run, when it has one
    model: Any = None  # torch model (None: a foreign pyfunc without one)
    tokenizer: Any = None  # carries the chat template the model was trained with
    pyfunc: Any = None  # set when generation must go through the pyfunc's own predict()
    local_run_dir: Path | None = None
    info: dict = field(default_factory=dict)


def _load_error(ref: str, e: BaseException) -> UserError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return UserError(f"{ref}: could not load the model ({type(e).__name__}: {first[:300]})")


def resolve_ref(ctx: Context, ref: str | Path) -> tuple[str, Path | None]:
    """(kind, folder) for a model reference, checked without loading anything: ``run``, ``hf`` or ``mlflow``."""
    ref = str(ref)
    if ref.startswith(MLFLOW_SCHEMES):
        return "mlflow", None
    if "://" in ref or ref.startswith(("models:", "runs:")):
        raise UserError(f"{ref}: unsupported URI; use runs:/<run_id>/model or models:/<name>@<alias> (or /<version>)")
    p = Path(ref).expanduser()
    if not p.exists() and not p.is_absolute() and (ctx.home / p).exists():
        p = ctx.home / p
    if not p.is_dir():
        raise UserError(f"{ref}: no such model folder; pass a run dir (models/<run_id>), a Hugging Face model "
                        f"dir, or an MLflow URI (runs:/<run_id>/model, models:/{ctx.registry_name}@production)")
    p = p.resolve()
    if (p / "model" / META_FILE).is_file():
        return "run", p / "model"
    if (p / META_FILE).is_file():
        return "run", p
    if (p / "config.json").is_file():
        return "hf", p
    raise UserError(f"{ref}: neither a run dir (model/{META_FILE}) nor a Hugging Face model dir (config.json)")


def load_subject(ctx: Context, ref: str | Path) -> Subject:
    """Resolve and load ``ref``; any problem the user can fix raises :class:`UserError`."""
    ref = str(ref)
    kind, folder = resolve_ref(ctx, ref)
    if kind == "mlflow":
        return _load_mlflow(ctx, ref)
    if kind == "run":
        return _load_run_folder(ref, folder)
    return _load_hf_folder(ref, folder)


def _load_run_folder(ref: str, folder: Path) -> Subject:
    from ech0.model_folder import load_trained

    try:
        model, tok, meta = load_trained(folder)
    except Exception as e:  # missing base model, corrupt weights ...
        raise _load_error(ref, e) from None
    run_id = meta.get("run_id") or folder.parent.name
    return Subject(ref, "run", run_id, run_id, model, tok, local_run_dir=folder.parent, info={"model_dir": str(folder), "base_model": meta.get("base_model")})


def _load_hf_folder(ref: str, folder: Path) -> Subject:
    from ech0.models import load_model, load_tokenizer

    try:
        model, tok = load_model(str(folder)), load_tokenizer(str(folder))
    except Exception as e:
        raise _load_error(ref, e) from None
    model.eval()
    return Subject(ref, "hf", folder.name, None, model, tok, info={"model_dir": str(folder)})


def _pin(ctx: Context, ref: str) -> tuple[str, str | None, dict]:
    """(URI to load, training run id, info): a ``models:/`` alias is pinned to its version (it may move while we load)."""
    if ref.startswith("runs:/"):
        return ref, ref[len("runs:/"):].split("/", 1)[0], {"uri": ref}
    from ech0.registry.store import resolve_uri

    mv = resolve_uri(ctx, ref)
    pinned = f"models:/{mv.name}/{mv.version}"
    return pinned, mv.run_id, {"uri": ref, "model_name": mv.name, "version": str(mv.version), "pinned": pinned}


def _load_mlflow(ctx: Context, ref: str) -> Subject:
    import mlflow
    from mlflow.exceptions import MlflowException

    from ech0.mlflow_model import Ech0Generator

    mlflow.set_tracking_uri(ctx.tracking_uri)  # pyfunc.load_model resolves runs:/ and models:/ through it
    try:
        uri, run_id, info = _pin(ctx, ref)
        loaded = mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as e:
        raise _load_error(ref, e) from None
    try:
        pm = loaded.unwrap_python_model()
    except Exception:
        pm = None
    label = f"{info['model_name']}-v{info['version']}" if "version" in info else (run_id or "mlflow-model")
    local = ctx.run_dir(run_id) if run_id and (ctx.run_dir(run_id) / "status.json").exists() else None
    subject = Subject(ref, "mlflow", label, run_id, local_run_dir=local, info=info)
    if pm is not None and all(hasattr(pm, a) for a in ("model", "tokenizer", "meta")):
        subject.model, subject.tokenizer = pm.model, pm.tokenizer
    # Our generator's predict() is generate() itself: call it directly (batched, per-case lengths).
    # Anything else (a wrapper, a foreign pyfunc) is asked through its own predict().
    if not (isinstance(pm, Ech0Generator) and type(pm).predict is Ech0Generator.predict):
        subject.pyfunc = loaded
    return subject
