"""The data stage: import legacy dumps, validate/redact/filter/dedupe, manifests with lineage.

    python -m ech0.data import --input legacy.json --tag crypto        # -> data/raw/legacy.jsonl
    python -m ech0.data validate --input legacy --stage clean --max-tokens 2048 --min-quality 0.25
    python -m ech0.data validate --input legacy --stage processed --dedupe --fail-on-secrets
    python -m ech0.data verify legacy.processed

For the trainer (no heavy imports at package import time)::

    from ech0.data import processed_dataset
    ds = processed_dataset("legacy")   # {"path", "manifest", "digest", "chain", "rows", ...}
"""

from __future__ import annotations

from pathlib import Path


def processed_dataset(name: str, stage: str = "processed", verify: bool = True) -> dict:
    """Everything the trainer logs for a dataset: file, manifest, MLflow digest and manifest chain.

    ``digest`` is the sha256 of the stage's manifest file (use it as the MLflow dataset digest);
    ``chain`` lists the manifest files newest first (processed, clean, raw) to attach as artifacts.
    With ``verify`` (default) the files are re-hashed first; a mismatch raises ``UserError``.
    """
    from ech0 import paths
    from ech0.data import manifest as mf
    from ech0.errors import UserError

    m = mf.manifest_path(name, stage)
    if not m.is_file():
        raise UserError(f"{m}: no manifest; run `ech0 data validate --input {name} --stage {stage}` first")
    if verify:
        mf.verify(m)
    data = mf.load(m)
    path = mf.resolve(data["output"]["path"])
    return {
        "name": name,
        "stage": stage,
        "path": Path(path),
        "rows": data["output"]["rows"],
        "sha256": data["output"]["sha256"],
        "manifest": m,
        "digest": mf.dataset_digest(m),
        "chain": mf.chain(m),
        "data_dir": paths.data_dir(stage),
    }
