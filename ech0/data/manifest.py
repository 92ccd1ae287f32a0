"""Manifests: what each data stage read, wrote and did, chained raw -> clean -> processed.

    from ech0.data.manifest import manifest_path, load, verify, chain, dataset_digest
    m = manifest_path("crypto", "processed")    # ECH0_HOME/metadata/crypto.processed.manifest.json
    verify(m)                                    # re-hash outputs and every parent; raises on mismatch
    dataset_digest(m)                            # sha256 of the manifest file: the MLflow dataset digest
    chain(m)                                     # [processed, clean, raw] manifest paths

A manifest's identity is the sha256 of its file bytes. Each manifest records its parent's path and
sha256, and its input's sha256 equals the parent's output sha256, so the chain cannot be edited
or re-ordered without ``verify`` noticing.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from ech0 import __version__, paths
from ech0.errors import UserError
from ech0.io import atomic_write_json, sha256_file

MANIFEST_SCHEMA_VERSION = 1
KIND = "ech0.data.manifest"


class VerifyFailed(UserError):
    """A manifest or one of its files does not match (exit code 1)."""

    exit_code = 1


def manifest_path(name: str, stage: str) -> Path:
    return paths.metadata_dir() / f"{name}.{stage}.manifest.json"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_commit() -> dict:
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": sha or None, "dirty": dirty if sha else None}


def rel(p: str | os.PathLike) -> str:
    """Paths under ECH0_HOME are stored relative to it (the tree can move); others absolute."""
    p = Path(p).resolve()
    try:
        return p.relative_to(paths.home()).as_posix()
    except ValueError:
        return str(p)


def resolve(p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else paths.home() / q


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
    return n


def file_entry(path: Path, rows: int | None = None) -> dict:
    return {"path": rel(path), "sha256": sha256_file(path), "bytes": path.stat().st_size,
            "rows": count_lines(path) if rows is None else rows}


def find_parent(input_path: Path) -> dict | None:
    """The manifest that produced ``input_path`` (same sha256), looked up by the stage layout."""
    input_path = Path(input_path).resolve()
    for stage in paths.STAGES:
        if input_path.parent == paths.data_dir(stage).resolve() and input_path.suffix == ".jsonl":
            m = manifest_path(input_path.stem, stage)
            if m.is_file():
                try:
                    data = load(m)
                except UserError:
                    return None
                return {"path": rel(m), "sha256": sha256_file(m), "stage": stage,
                        "output_sha256": data.get("output", {}).get("sha256")}
    return None


def write(path: Path, manifest: dict) -> str:
    atomic_write_json(path, manifest)
    return sha256_file(path)


def load(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: manifest not found") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise VerifyFailed(f"{path}: not a valid manifest ({e})") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise VerifyFailed(f"{path}: not an ech0 data manifest")
    return data


def dataset_digest(path: str | os.PathLike) -> str:
    """The digest to give MLflow for the dataset: sha256 of the manifest file."""
    return sha256_file(path)


def chain(path: str | os.PathLike) -> list[Path]:
    """This manifest and its ancestors, newest first (stops at a missing parent)."""
    out = [Path(path)]
    seen = {Path(path).resolve()}
    while True:
        parent = load(out[-1]).get("parent")
        if not parent:
            return out
        p = resolve(parent["path"])
        if p.resolve() in seen or not p.is_file():
            return out
        seen.add(p.resolve())
        out.append(p)


def check(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Re-hash every file named by the manifest and its ancestors: (one report per check, failures)."""
    results = []
    failures = []
    cur = Path(path)
    seen = set()
    while True:
        m = load(cur)
        seen.add(cur.resolve())
        label = f"{m.get('name')}.{m.get('stage')}"
        for key in ("output", "rejects"):
            ent = m.get(key)
            if not ent:
                continue
            f = resolve(ent["path"])
            if not f.is_file():
                ok, what = False, "missing"
            else:
                sha = sha256_file(f)
                ok = sha == ent["sha256"] and f.stat().st_size == ent["bytes"]
                what = "ok" if ok else "sha256 differs (file changed since the manifest was written)"
                if ok and ent.get("rows") is not None and count_lines(f) != ent["rows"]:
                    ok, what = False, "row count differs"
            results.append({"manifest": str(cur), "check": f"{label} {key}", "path": str(f), "ok": ok, "detail": what})
            if not ok:
                failures.append(f"{f}: {what}")
        inp = m.get("input", {})
        parent = m.get("parent")
        if not parent:
            # the first stage: the user's source file, checked when it is still there
            src = resolve(inp["path"]) if inp.get("path") else None
            if src is not None and src.is_file():
                ok = sha256_file(src) == inp.get("sha256")
                results.append({"manifest": str(cur), "check": f"{label} input", "path": str(src), "ok": ok,
                                "detail": "ok" if ok else "source file changed since import"})
                if not ok:
                    failures.append(f"{src}: source changed since import")
            break
        p = resolve(parent["path"])
        if not p.is_file():
            results.append({"manifest": str(cur), "check": f"{label} parent", "path": str(p), "ok": False,
                            "detail": "parent manifest missing"})
            failures.append(f"{p}: parent manifest missing")
            break
        ok = sha256_file(p) == parent["sha256"]
        results.append({"manifest": str(cur), "check": f"{label} parent", "path": str(p), "ok": ok,
                        "detail": "ok" if ok else "parent manifest changed"})
        if not ok:
            failures.append(f"{p}: parent manifest changed since {label} was written")
        pm = load(p)
        link = pm.get("output", {}).get("sha256") == inp.get("sha256")
        results.append({"manifest": str(cur), "check": f"{label} input = parent output", "path": str(p), "ok": link,
                        "detail": "ok" if link else "input was not the parent's output"})
        if not link:
            failures.append(f"{cur}: its input is not {p}'s output")
        if p.resolve() in seen:
            break
        cur = p
    return results, failures


def verify(path: str | os.PathLike) -> list[dict]:
    """``check`` and raise ``VerifyFailed`` (exit 1) naming the first mismatch."""
    results, failures = check(path)
    if failures:
        raise VerifyFailed(f"{path}: verification failed: {failures[0]}"
                           + (f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""))
    return results


def base(name: str, stage: str, command: str, options: dict) -> dict:
    g = git_commit()
    return {
        "kind": KIND,
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "row_schema_version": 1,
        "name": name,
        "stage": stage,
        "command": command,
        "ech0_version": __version__,
        "git_commit": g["commit"],
        "git_dirty": g["dirty"],
        "options": options,
        "started_at": now(),
    }


def record_io(man: dict, t0: float, src: Path, in_sha: str, fmt_mode: str, read: int, out_path: Path,
              kept: int, rej_path: Path, rejected: int) -> dict:
    """The input/output/rejects/counts part every stage's manifest shares."""
    import time

    man["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t0))
    man["input"] = {"path": rel(src), "sha256": in_sha, "bytes": src.stat().st_size, "format": fmt_mode, "rows": read}
    man["output"] = file_entry(out_path, kept)
    man["rejects"] = file_entry(rej_path, rejected)
    man["counts"] = {"read": read, "kept": kept, "rejected": rejected}
    return man
