"""The one way files and folders are written and fingerprinted: atomically (a reader never sees half a file) and by
content digest.

    write_json_atomic(path, {"key": key})           # temporary name in the same folder, fsync, rename over `path`
    atomic_write(path, lambda f: np.save(f, arr))   # any writer that takes a binary file object
    swap_in(tmp_dir, final_dir)                     # a folder built aside replaces `final_dir` in one rename
    file_sha256(path)                               # hex sha256 of a file's bytes
"""
from __future__ import annotations

import hashlib
import json
import os
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
