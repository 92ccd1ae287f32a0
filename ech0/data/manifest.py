"""Manifests: what each data stage read, wrote and did, chained raw -> clean -> processed.

Written by ``ech0 data import|validate``, checked by ``ech0 data verify NAME.STAGE``; in code::

    from ech0.data.manifest import manifest_path, load, verify, chain, dataset_digest
    m = manifest_path(ctx, "crypto", "processed")   # <home>/metadata/crypto.processed.manifest.json
    verify(ctx, m)                                  # re-hash outputs and every parent; raises on mismatch
    dataset_digest(m)                               # sha256 of the manifest file: the MLflow dataset digest
    chain(ctx, m)                                   # [processed, clean, raw] manifest paths

A manifest's identity is the sha256 of its file bytes. Each manifest records its parent's path and
sha256, and its input's sha256 equals the parent's output sha256, so the chain cannot be edited
or re-ordered without ``verify`` noticing. Paths under the context's home are stored relative to it
(:meth:`ech0.context.Context.relative`), so the tree can move.

Concurrency: every level of dataset NAME is written under :class:`DatasetLock` (``metadata/locks/``):
one writer at a time, and never while a pipeline that trains on the dataset holds it shared.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

from ech0 import __version__
from ech0.context import DATA_LEVELS, Context
from ech0.data.schema import SCHEMA_VERSION as ROW_SCHEMA_VERSION
from ech0.errors import UserError
from ech0.io import FileLock, atomic_write_json, git_info, sha256_file, utc_now

__all__ = ["manifest_path", "load", "verify", "check", "chain", "dataset_digest", "sha256_file", "VerifyFailed",
           "DatasetLock"]

MANIFEST_SCHEMA_VERSION = 1
KIND = "ech0.data.manifest"


class VerifyFailed(UserError):
    """A manifest or one of its files does not match (exit code 1)."""

    exit_code = 1


def manifest_path(ctx: Context, name: str, stage: str) -> Path:
    return ctx.metadata_dir / f"{name}.{stage}.manifest.json"


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
    return n


def file_entry(ctx: Context, path: Path, rows: int | None = None) -> dict:
    return {"path": ctx.relative(path), "sha256": sha256_file(path), "bytes": path.stat().st_size,
            "rows": count_lines(path) if rows is None else rows}


def find_parent(ctx: Context, input_path: Path) -> dict | None:
    """The manifest that produced ``input_path`` (same sha256), looked up by the stage layout."""
    input_path = Path(input_path).resolve()
    for stage in DATA_LEVELS:
        if input_path.parent == ctx.data_dir(stage).resolve() and input_path.suffix == ".jsonl":
            m = manifest_path(ctx, input_path.stem, stage)
            if m.is_file():
                try:
                    data = load(m)
                except UserError:
                    return None
                return {"path": ctx.relative(m), "sha256": sha256_file(m), "stage": stage,
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


def chain(ctx: Context, path: str | os.PathLike) -> list[Path]:
    """This manifest and its ancestors, newest first (stops at a missing parent)."""
    out = [Path(path)]
    seen = {Path(path).resolve()}
    while True:
        parent = load(out[-1]).get("parent")
        if not parent:
            return out
        p = ctx.resolve(parent["path"])
        if p.resolve() in seen or not p.is_file():
            return out
        seen.add(p.resolve())
        out.append(p)


def check(ctx: Context, path: str | os.PathLike) -> tuple[list[dict], list[str]]:
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
            f = ctx.resolve(ent["path"])
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
            src = ctx.resolve(inp["path"]) if inp.get("path") else None
            if src is not None and src.is_file():
                ok = sha256_file(src) == inp.get("sha256")
                results.append({"manifest": str(cur), "check": f"{label} input", "path": str(src), "ok": ok,
                                "detail": "ok" if ok else "source file changed since import"})
                if not ok:
                    failures.append(f"{src}: source changed since import")
            break
        p = ctx.resolve(parent["path"])
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


def raise_failures(path: str | os.PathLike, failures: list[str]) -> None:
    """``VerifyFailed`` (exit 1) naming the first of ``check``'s failures, if any."""
    if failures:
        raise VerifyFailed(f"{path}: verification failed: {failures[0]}"
                           + (f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""))


def verify(ctx: Context, path: str | os.PathLike) -> list[dict]:
    """``check`` and raise ``VerifyFailed`` (exit 1) naming the first mismatch."""
    results, failures = check(ctx, path)
    raise_failures(path, failures)
    return results


def base(name: str, stage: str, command: str, options: dict, t0: float) -> dict:
    """The head every stage's manifest starts with; ``t0`` is when the stage started (``time.time()``)."""
    g = git_info()
    return {
        "kind": KIND,
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "row_schema_version": ROW_SCHEMA_VERSION,
        "name": name,
        "stage": stage,
        "command": command,
        "ech0_version": __version__,
        "git_commit": g["commit"],
        "git_dirty": g["dirty"],
        "options": options,
        "started_at": utc_now(t0),
    }


def record_io(ctx: Context, man: dict, src: Path, in_sha: str, fmt_mode: str, read: int, out_path: Path,
              kept: int, rej_path: Path, rejected: int) -> dict:
    """The input/output/rejects/counts part every stage's manifest shares."""
    man["input"] = {"path": ctx.relative(src), "sha256": in_sha, "bytes": src.stat().st_size, "format": fmt_mode,
                    "rows": read}
    man["output"] = file_entry(ctx, out_path, kept)
    man["rejects"] = file_entry(ctx, rej_path, rejected)
    man["counts"] = {"read": read, "kept": kept, "rejected": rejected}
    return man


def finish(man: dict, path: Path, t0: float) -> dict:
    """Stamp the end time, write the manifest atomically (last, after its files) and return it."""
    man["finished_at"] = utc_now()
    man["duration_s"] = round(time.time() - t0, 3)
    write(path, man)
    man["_manifest_path"] = str(path)
    return man


class DatasetLock:
    """Dataset ``name``'s two locks under ``metadata/locks/`` (see :class:`ech0.io.FileLock`).

    ``NAME.write.lock`` (exclusive): one process at a time checks or writes any level of the dataset
    (raw, clean, processed and their manifests), so a chain is never made by two processes at once.
    ``NAME.use.lock``: held shared by every pipeline that trains on the dataset, until it ends; a
    writer takes it exclusively, so rows are never replaced under a run that reads them. Readers take
    it only while holding the write lock, which is what makes :meth:`share` safe.

        with DatasetLock(ctx, "sample", "ech0 data validate").writing():    # a standalone data command
            ...
        lock = DatasetLock(ctx, "sample", "ech0 pipeline", say=print)       # the pipeline: see ech0/pipeline.py
        lock.lock_writes(); ...; lock.use(exclusive=True); ...; lock.share(); lock.unlock_writes()
        ...; lock.release()

    Waiting is said once, in one line naming the holder (pid, host, what), through ``say``.
    """

    def __init__(self, ctx: Context, name: str, what: str, say=None) -> None:
        d = ctx.metadata_dir / "locks"
        self.name = name
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.write_lock = FileLock(d / f"{name}.write.lock", what)
        self.use_lock = FileLock(d / f"{name}.use.lock", what)

    def lock_writes(self) -> float:
        """Wait for any other process checking or writing the dataset; returns the seconds waited."""
        return self.write_lock.acquire(on_wait=lambda h: self.say(f"waiting for dataset {self.name}: {h} is "
                                                                  "writing it"))

    def use(self, exclusive: bool = False) -> float:
        """Hold the rows shared (to read them), or exclusive (to replace them: waits for every reader)."""
        assert self.write_lock.fd is not None, "take lock_writes() first"
        return self.use_lock.acquire(shared=not exclusive, on_wait=lambda h: self.say(
            f"waiting for dataset {self.name}: {h} trains on its current rows; it is rewritten when that ends"))

    def share(self) -> None:
        """Exclusive use -> shared (other pipelines may read along); safe while the write lock is held."""
        assert self.write_lock.fd is not None
        self.use_lock.share()

    def unlock_writes(self) -> None:
        self.write_lock.release()

    def release(self) -> None:
        self.use_lock.release()
        self.write_lock.release()

    @contextlib.contextmanager
    def writing(self):
        """Both locks, exclusive, for one standalone write of the dataset."""
        self.lock_writes()
        try:
            self.use(exclusive=True)
            yield self
        finally:
            self.release()
