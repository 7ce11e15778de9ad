"""The one way files and folders are written and fingerprinted: atomically (a reader never sees half a file) and by
content digest.

    write_json_atomic(path, {"key": key})           # temporary name in the same folder, fsync, rename over `path`
    atomic_write(path, lambda f: np.save(f, arr))   # any writer that takes a binary file object
    swap_in(tmp_dir, final_dir)                     # a folder built aside replaces `final_dir` in one rename
    file_sha256(path)                               # hex sha256 of a file's bytes
    with FolderLock(path, "run") as lock: ...       # one holder at a time (flock); a second is refused, named
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import socket
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def temporary_sibling(path: Path, tag: str = "tmp") -> Path:
    """A unique hidden name beside `path` (same folder, so a rename onto `path` is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}")


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write `path` through `write(file)` to a temporary name, fsync, then rename over `path`; nothing is left behind
    when `write` fails."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    atomic_write(path, lambda f: f.write(data))


def write_json_atomic(path: Path, obj: Any, indent: int = 2) -> None:
    """Write `obj` as sorted-key JSON (with a final newline) to `path` atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=indent, sort_keys=True) + "\n").encode())


def swap_in(tmp: Path, final: Path) -> None:
    """Replace the folder `final` by the finished folder `tmp` (built beside it): the old one is renamed aside, the
    new one renamed in, then the old one removed, so `final` is always either the old or the new whole folder."""
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        old = temporary_sibling(final, "old")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FolderLockedError(RuntimeError):
    """Another process holds the lock; the message names it (pid, host, start time)."""

    def __init__(self, lock_path: Path, what: str, holder: str):
        super().__init__(f"{Path(lock_path).parent}: another {what} is writing this folder ({holder}); wait for it "
                         "to end or use another outputs folder")


class FolderLock:
    """An exclusive lock on a file held for as long as the process keeps it (flock: a killed holder frees it at once).

    The file holds the holder's pid, host and start time (and what `update` adds, e.g. its MLflow run), so a refused
    caller can say who holds it, and the next holder can read what a killed one left unfinished (`previous`). The
    file is never deleted: unlinking a lock file lets two processes lock two different files of one name.
    """

    def __init__(self, path: Path, what: str):
        self.path, self.what = Path(path), what
        self.previous: dict = {}   # what the last holder wrote (a killed run's MLflow run, say)
        self.info: dict = {}
        self._f = None

    def __enter__(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _holder_text(f.read())
            f.close()
            raise FolderLockedError(self.path, self.what, holder) from None
        f.seek(0)
        with contextlib.suppress(ValueError):
            self.previous = json.loads(f.read() or "{}")
        self._f = f
        self.update(pid=os.getpid(), host=socket.gethostname(),
                    started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        return self

    def update(self, **info) -> None:
        """Add `info` to what the lock file says about its holder (rewritten in place; the lock stays held)."""
        self.info.update(info)
        f = self._f
        f.seek(0)
        f.truncate()
        f.write(json.dumps(self.info, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())

    def __exit__(self, *exc) -> None:
        if self._f is not None:
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()
            self._f = None


def folder_lock_holder(path: Path) -> str | None:
    """Who holds the lock at `path` ("pid 123 on host, since ..."), or None when nobody does (checked, not taken)."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_text(f.read())
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def _holder_text(text: str) -> str:
    try:
        info = json.loads(text or "{}")
    except ValueError:
        info = {}
    if not info.get("pid"):
        return "holder unknown"
    return f"pid {info['pid']} on {info.get('host', '?')}, started {info.get('started', '?')}"
