"""Domain log lines on the standard `logging` module: what a stage counted, its losses and scores, its cache hits, and
third-party warnings summarised once per kind with a count. Loggers are named `gsco.<part>`; the flows forward them
to the Prefect run log (flows/observe.py), anything else sees them through its own handlers.

    log = part_logger("ingest")
    log.info("ham10000: 120 rows (train 80, val 20, test 20), 2 rejected")
    cache_hit(log, "ingest", "ham10000", key)                # "cache hit: ingest/ham10000 (key 1a2b3c4d5e6f)"
    with summarised_warnings(log, "specialist chestmnist/eva02"):
        train()                                              # then one line per distinct warning, with its count
    follow_lines(proc, loss_curve, on_line)                  # a child's JSONL lines, read while it runs
"""
from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = "gsco"


def part_logger(part: str) -> logging.Logger:
    """The logger of one part of the pipeline (`gsco.<part>`)."""
    return logging.getLogger(f"{ROOT}.{part}")


def cache_hit(log: logging.Logger, stage: str, unit: str, key: str | None) -> None:
    """The one spelling of a cache hit: `cache hit: <stage>/<unit> (key <first 12 hex>)`."""
    log.info("cache hit: %s/%s (key %s)", stage, unit, (key or "?")[:12])


# ---------------------------------------------------------------------------------------------------------- warnings
# warnings.catch_warnings swaps process-wide state, so jobs training side by side in threads would steal each other's
# records: a collector is per thread instead, fed by one process-wide showwarning hook.
_local = threading.local()
_hook_lock = threading.Lock()
_shown_before: Callable | None = None


def _collecting_showwarning(message, category, filename, lineno, file=None, line=None):
    collector = getattr(_local, "collector", None)
    if collector is None:
        return _shown_before(message, category, filename, lineno, file, line)
    collector[(category.__name__, str(message).strip(), _short_path(filename), lineno)] += 1


def _short_path(filename: str) -> str:
    """A warning's file from its package on (site-packages/sklearn/metrics/x.py -> sklearn/metrics/x.py)."""
    parts = Path(filename).parts
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1:])
    return "/".join(parts[-3:])


def _install_hook() -> None:
    global _shown_before
    with _hook_lock:
        if warnings.showwarning is not _collecting_showwarning:
            _shown_before = warnings.showwarning
            warnings.showwarning = _collecting_showwarning


@contextlib.contextmanager
def summarised_warnings(log: logging.Logger, scope: str) -> Iterator[Counter]:
    """Collect the warnings this thread shows inside the block; afterwards log one line per distinct warning (its
    category, where it was raised, its count and text), however often it repeated, then hand it on nowhere else."""
    _install_hook()
    outer = getattr(_local, "collector", None)
    _local.collector = collected = Counter()
    try:
        yield collected
    finally:
        _local.collector = outer
        for (category, text, where, lineno), n in collected.most_common():
            first = text.splitlines()[0] if text else ""
            log.warning("%s: %d x %s at %s:%d: %s", scope, n, category, where, lineno, first[:300])


# ------------------------------------------------------------------------------------------------------- child files
def follow_lines(proc: subprocess.Popen, path: Path, on_line: Callable[[str], None], poll_s: float = 0.5) -> int:
    """Wait for `proc`, handing each complete line appended to `path` to `on_line` as it is written; the exit code.

    Lines already in the file when called are skipped (a resumed run's earlier steps are not news)."""
    path = Path(path)
    offset = path.stat().st_size if path.exists() else 0
    buf = ""
    while True:
        done = proc.poll() is not None   # read once more after the child ended: its last lines
        if path.exists():
            with open(path, "rb") as f:
                size = f.seek(0, 2)
                if size < offset:   # rewritten (cut back to a resumed step): follow it from its new end
                    offset, buf = size, ""
                f.seek(offset)
                buf += f.read().decode("utf-8", errors="replace")
                offset = f.tell()
            *lines, buf = buf.split("\n")
            for ln in lines:
                if ln.strip():
                    on_line(ln)
        if done:
            return proc.returncode
        time.sleep(poll_s)
