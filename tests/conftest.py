"""Shared fixtures: an isolated Prefect home, the tiny benchmark generated once per session, mutable copies of it."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_PREFECT_HOME = tempfile.mkdtemp(prefix="gsco-prefect-home-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")   # a loaded 2-core machine
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_profile():
    """The tiny profile, as `gsco run --profile tiny` loads it (tests read its values, never copies of them)."""
    from infra.profiles import load_profile

    return load_profile("tiny")


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """The tiny synthetic benchmark's raw files (generated once; do not modify: use `tiny_copy`)."""
    from tasks.ingest.tiny_benchmark import generate_tiny_benchmark

    root = tmp_path_factory.mktemp("tiny") / "data"
    generate_tiny_benchmark(root, seed=0)
    return root


@pytest.fixture()
def tiny_copy(tiny_root, tmp_path) -> Path:
    """A private, mutable copy of the tiny benchmark's raw files."""
    dst = tmp_path / "data"
    shutil.copytree(tiny_root, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_tables(tiny_root, tmp_path_factory) -> Path:
    """Canonical tables of the whole tiny benchmark (ingested once; read-only)."""
    from data_contracts.cards import get_card
    from tasks.ingest.dataset import ingest_dataset
    from tasks.ingest.tiny_benchmark import TINY_DATASETS

    out = tmp_path_factory.mktemp("tiny-tables")
    for name in TINY_DATASETS:
        ingest_dataset(get_card(name), tiny_root, out)
    return out


@pytest.fixture(scope="session")
def tiny_generalist_dir(tiny_tables, tmp_path_factory) -> Path:
    """A tiny random-initialised InternVL built from the tiny tables' texts (the tiny profile's base model)."""
    from infra.profiles import load_profile
    from tasks.generalist.stage import tokenizer_texts
    from tasks.generalist.tiny_internvl import build_tiny_internvl
    from tasks.ingest.tiny_benchmark import TINY_DATASETS

    out = tmp_path_factory.mktemp("models") / "tiny-internvl"
    return build_tiny_internvl(out, tokenizer_texts(tiny_tables, list(TINY_DATASETS)),
                               load_profile("tiny").generalist.tiny_model)


@pytest.fixture()
def kill_at_validation(monkeypatch):
    """kill(n, *train_args): run tasks.specialists.training.train_specialist(*train_args) and kill it
    (KeyboardInterrupt) in its n-th validation pass, as a killed process would stop; the real validation is back in
    place afterwards."""
    import tasks.specialists.training as training

    real = training.evaluate

    def kill(n: int, *train_args) -> None:
        calls = {"n": 0}

        def dies_on_nth_validation(*a, **k):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt("killed")
            return real(*a, **k)

        monkeypatch.setattr(training, "evaluate", dies_on_nth_validation)
        try:
            with pytest.raises(KeyboardInterrupt):
                training.train_specialist(*train_args)
        finally:
            monkeypatch.setattr(training, "evaluate", real)

    return kill

