"""Shared fixtures: an isolated Prefect home, the tiny benchmark generated once per session, mutable copies of it."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_PREFECT_HOME = tempfile.mkdtemp(prefix="gsco-prefect-home-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """The tiny synthetic benchmark's raw files (generated once; do not modify: use `tiny_copy`)."""
    from tasks.tiny_data import generate_tiny_benchmark

    root = tmp_path_factory.mktemp("tiny") / "data"
    generate_tiny_benchmark(root, seed=0)
    return root


@pytest.fixture()
def tiny_copy(tiny_root, tmp_path) -> Path:
    """A private, mutable copy of the tiny benchmark's raw files."""
    dst = tmp_path / "data"
    shutil.copytree(tiny_root, dst)
    return dst
