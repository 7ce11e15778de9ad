"""Concurrent writers of one dataset: each builds its own temporary folder, none removes another's, one whole,
digest-valid dataset is left.

    OMP_NUM_THREADS=1 pytest -q tests/test_concurrent_ingest.py
"""
from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path

import polars as pl

from data_contracts.cards import get_card
from data_contracts.io import DatasetWriter, read_manifest, read_samples
from tasks.ingest.dataset import ingest_dataset

WRITERS = 6
DATASET = "pneumoniamnist"


def _write(data_root: str, tables_root: str, barrier, results) -> None:
    """One writer process: wait for the others, then ingest the dataset (forced, so every writer really writes)."""
    try:
        barrier.wait(timeout=120)
        r = ingest_dataset(get_card(DATASET), Path(data_root), Path(tables_root), force=True)
        results.put(("ok", r.status))
    except BaseException as e:   # noqa: BLE001 - the parent asserts on what each writer ended with
        results.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def test_concurrent_writers_of_one_dataset(tiny_copy, tmp_path):
    out = tmp_path / "tables"
    expected = ingest_dataset(get_card(DATASET), tiny_copy, tmp_path / "alone")
    ctx = multiprocessing.get_context("spawn")   # fresh interpreters, as separate `gsco` processes would be
    barrier, results = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [ctx.Process(target=_write, args=(str(tiny_copy), str(out), barrier, results)) for _ in range(WRITERS)]
    for p in procs:
        p.start()
    ends = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    assert ends == [("ok", "written")] * WRITERS, [m for kind, m in ends if kind == "error"]
    manifest = read_manifest(out, DATASET)
    assert {s: (e["rows"], e["digest"]) for s, e in manifest["splits"].items()} == {
        s: (e["rows"], e["digest"]) for s, e in expected.splits.items()}
    for split in manifest["splits"]:
        read_samples(out, DATASET, split, verify_digest=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([DATASET, f".{DATASET}.lock"])   # no temp folder left


def test_recovery_leaves_a_live_writers_temp_folder_alone(tiny_tables, tmp_path):
    out = tmp_path / "tables"
    out.mkdir()
    dead = out / f".{DATASET}.tmp-deadbeef"     # left by a writer that was killed: nobody holds its lock
    (dead / "train").mkdir(parents=True)
    df = read_samples(tiny_tables, DATASET, "train")
    first = DatasetWriter(out, DATASET, meta={"writer": 1})
    first.__enter__()
    assert first.tmp.is_dir() and not dead.exists()
    first.add("train", df.head(10))
    with DatasetWriter(out, DATASET, meta={"writer": 2}) as second:   # its recovery runs while the first writes
        assert first.tmp.is_dir() and second.tmp != first.tmp
        second.add("train", df.head(20))
    first.add("train", df.slice(10, 5))           # the first writer's folder is still there to write into
    first.__exit__(None, None, None)
    m = read_manifest(out, DATASET)
    assert m["meta"] == {"writer": 1} and m["splits"]["train"]["rows"] == 15
    got = read_samples(out, DATASET, "train", verify_digest=True)
    assert got["sample_id"].to_list() == df.head(15)["sample_id"].to_list()
    assert not [p for p in out.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert pl.read_parquet(next((out / DATASET / "train").glob("*.parquet"))).height == 15
