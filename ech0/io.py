"""Core helpers every stage shares: atomic writes, hashes, UTC timestamps, the code's git state.

    from ech0.io import atomic_write_json, utc_now
    atomic_write_json(path, {"state": "running", "updated_at": utc_now()})

Atomic: a reader sees the old file or the new one, never half of one (temp file + ``os.replace``).
:class:`FileLock` is the one lock between processes that share a home (``flock``; the data stage and
the store's creation use it). Importing this module changes no process state.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Iterator


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process umask, read once on the first write (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def utc_now(t: float | None = None) -> str:
    """ISO-8601 UTC with seconds, the one timestamp format ech0 writes: ``2026-12-01T10:07:41+00:00``."""
    moment = datetime.now(timezone.utc) if t is None else datetime.fromtimestamp(t, timezone.utc)
    return moment.isoformat(timespec="seconds")


def stamp() -> str:
    """A local-time suffix for run names: ``20261201-100741``."""
    return datetime.now().strftime("%Y%m%d-%H%M%S")


@functools.lru_cache(maxsize=1)
def git_info() -> dict:
    """``{"commit": sha | None, "dirty": bool | None}`` of the checkout ech0 runs from (None outside git)."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": sha or None, "dirty": dirty if sha else None}


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Write to a temp file beside ``path``; ``os.replace`` it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory in a temp sibling; rename it into place when the block succeeds."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def build_lock(out: Path, verbose: bool = True) -> Iterator[None]:
    """Held while one process builds the folder ``out`` (a base model), so that runs, sweep jobs or test
    workers sharing a base-model cache build it once: the others wait, then find it built."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out.parent / f".{out.name}.lock", f"building {out.name}")
    lock.acquire(on_wait=lambda holder: verbose and print(f"waiting for {holder} to build {out.name} ...", flush=True))
    try:
        yield
    finally:
        lock.release()


class FileLock:
    """An advisory lock on ``path`` between processes (``fcntl.flock``): exclusive, or shared by many.

        lock = FileLock(home / "metadata" / "locks" / "sample.lock", "ech0 pipeline")
        lock.acquire(on_wait=lambda holder: print(f"waiting for {holder}"))   # blocks until it is ours
        lock.share()     # exclusive -> shared
        lock.release()

    The kernel drops the lock when its holder exits or dies, so a crash never leaves a stale lock and
    there is no lease to expire. The holder writes who it is (pid, host, what, since) into the file; a
    waiter reads that to say whom it waits for. Waiting blocks in the kernel (no polling); Ctrl-C or
    SIGTERM interrupts it. Locks live on open files: two ``FileLock`` objects on one path exclude each
    other even in one process, and a forked child shares its parent's lock until the parent releases
    it. ``flock`` works on local file systems and on NFS (Linux >= 2.6.12 maps it onto NFS locks).
    """

    def __init__(self, path: str | os.PathLike, what: str) -> None:
        self.path, self.what = Path(path), what
        self.fd: int | None = None

    def acquire(self, shared: bool = False, on_wait=None) -> float:
        """Take the lock (``shared`` or exclusive); if another holds it, call ``on_wait(holder)`` once
        (``holder``: "pid 123 on host h (what, since ...)") and wait. Returns the seconds waited."""
        import fcntl
        import time

        if self.fd is not None:
            raise RuntimeError(f"{self.path}: already held by this FileLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        t0 = time.monotonic()
        try:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait(self._holder(fd))
                fcntl.flock(fd, op)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self._stamp("shared" if shared else "exclusive")
        return time.monotonic() - t0

    def share(self) -> None:
        """Exclusive -> shared. Not atomic (``flock`` drops, then re-takes): a caller that must keep
        writers out in between holds a second lock that every writer takes first."""
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_SH)
        self._stamp("shared")

    def release(self) -> None:
        import fcntl

        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _stamp(self, mode: str) -> None:
        import socket

        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": self.what, "mode": mode,
                           "since": utc_now()}).encode() + b"\n"
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, info, 0)

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            h = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"pid {h['pid']} on host {h['host']} ({h['what']}, {h['mode']} since {h['since']})"
        except (ValueError, KeyError, TypeError):
            return "another process"  # it took the lock and has not written its name yet
