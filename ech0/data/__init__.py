"""The data stage: import legacy dumps, validate/redact/filter/dedupe, manifests with lineage.

    python -m ech0.data import --input legacy.json --tag crypto        # -> data/raw/legacy.jsonl
    python -m ech0.data validate --input legacy --stage clean --max-tokens 2048 --min-quality 0.25
    python -m ech0.data validate --input legacy --stage processed --dedupe --fail-on-secrets model=mistral-7b
    python -m ech0.data verify legacy.processed

(also ``ech0 data ...``; options compose through Hydra from ``conf/data.yaml``, see ech0/data/cli.py).
For the trainer (no heavy imports at package import time)::

    from ech0.data import processed_dataset
    ds = processed_dataset(ctx, "legacy")   # {"path", "manifest", "digest", "chain", "rows", ...}

Every stage's rows are canonical (ech0/data/schema.py): a ``messages`` conversation or a prompt/completion
pair, each kept in its own form; ``ech0.chat.messages_of(row)`` is the conversation either way.
"""

from __future__ import annotations

from pathlib import Path


def processed_dataset(ctx, name: str, stage: str = "processed", verify: bool = True) -> dict:
    """Everything the trainer logs for a dataset of ``ctx``'s home: file, manifest, MLflow digest and chain.

    ``digest`` is the sha256 of the stage's manifest file (use it as the MLflow dataset digest);
    ``chain`` lists the manifest files newest first (processed, clean, raw) to attach as artifacts.
    With ``verify`` (default) the files are re-hashed first; a mismatch raises ``UserError``.
    """
    from ech0.data import manifest as mf
    from ech0.errors import UserError

    m = mf.manifest_path(ctx, name, stage)
    if not m.is_file():
        raise UserError(f"{m}: no manifest; run `ech0 data validate --input {name} --stage {stage}` first")
    if verify:
        mf.verify(ctx, m)
    data = mf.load(m)
    return {
        "name": name,
        "stage": stage,
        "path": Path(ctx.resolve(data["output"]["path"])),
        "rows": data["output"]["rows"],
        "sha256": data["output"]["sha256"],
        "manifest": m,
        "digest": mf.dataset_digest(m),
        "chain": mf.chain(ctx, m),
        "data_dir": ctx.data_dir(stage),
    }
