"""The one writer and the one reader of canonical tables.

    with DatasetWriter(tables_root, "ham10000", meta={"cache_key": key}) as w:
        w.write_split("train", chunks)        # validated, sharded, digested
    df = read_samples(tables_root, "ham10000", "train")

On-disk layout of one dataset (the unit that is replaced atomically):

    <tables_root>/<dataset>/_dataset.json            manifest: splits -> rows, digest, shards; rejects; meta
    <tables_root>/<dataset>/<split>/part-00000.parquet
    <tables_root>/<dataset>/rejects.parquet          quarantined rows with reasons (policy "quarantine")

A table's digest is a content hash: sha256 over the sorted per-row hashes, so it is equal for equal content whatever
the row order, shard size, machine or Parquet writer version, and changes when any value changes.

Several writers of one dataset (two runs, two `gsco ingest`) may work at once: each builds its own temporary folder
`.<dataset>.tmp-<id>` and holds a lock (flock) on a file in it for as long as it lives; the short steps that touch
what others may see (clearing leftovers, creating a temporary folder, the swap) run under the dataset's lock file
`<tables_root>/.<dataset>.lock`. Recovery removes only temporary folders whose writer is gone (their lock is free), so
no writer deletes another's work, and the last writer to finish swaps its whole dataset in.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from data_contracts.errors import ContractError
from data_contracts.files import FolderLock, file_sha256, folder_lock_holder, swap_in, temporary_sibling, \
    write_json_atomic
from data_contracts.samples import COLUMNS, SAMPLES_SCHEMA, SCHEMA_VERSION, SPLITS, validate_samples

MANIFEST = "_dataset.json"
REJECTS_SCHEMA = pa.schema([
    pa.field("dataset", pa.string()), pa.field("source_path", pa.string()), pa.field("row", pa.string()),
    pa.field("field", pa.string()), pa.field("reason", pa.string()),
])
TARGET_SHARD_BYTES = 256 * 1024 * 1024
WRITER_LOCK = ".writer.lock"   # inside a temporary folder: held by its writer for as long as the writer lives


def _enc(v) -> bytes:
    """Canonical, length-prefixed bytes of one cell (None, str, bytes, int, float, list)."""
    if v is None:
        return b"N"
    if isinstance(v, bytes):
        return b"B" + struct.pack("<Q", len(v)) + v
    if isinstance(v, str):
        b = v.encode("utf-8")
        return b"S" + struct.pack("<Q", len(b)) + b
    if isinstance(v, bool):
        return b"T" if v else b"F"
    if isinstance(v, int):
        return b"I" + struct.pack("<q", v)
    if isinstance(v, float):
        return b"D" + struct.pack("<d", v)
    if isinstance(v, (list, tuple)):
        return b"L" + struct.pack("<Q", len(v)) + b"".join(_enc(x) for x in v)
    raise TypeError(f"cannot hash a {type(v).__name__}")


def row_hashes(df: pl.DataFrame, columns: Iterable[str] = COLUMNS) -> list[bytes]:
    """sha256 of every row's canonical encoding over `columns`, in row order."""
    cols = list(columns)
    out = []
    for row in df.select(cols).iter_rows():
        h = hashlib.sha256()
        for v in row:
            h.update(_enc(v))
        out.append(h.digest())
    return out


def digest_of_hashes(hashes: Iterable[bytes], kind: str = "samples") -> str:
    """The table digest from its row hashes: order-independent, prefixed with contract and schema version."""
    h = hashlib.sha256(f"gsco:{kind}:v{SCHEMA_VERSION}".encode())
    for rh in sorted(hashes):
        h.update(rh)
    return h.hexdigest()[:32]  # 128 bits: fits MLflow's 36-character dataset digest column


def table_digest(df: pl.DataFrame) -> str:
    """Content digest of a samples table (see module docstring)."""
    return digest_of_hashes(row_hashes(df))


def to_arrow(df: pl.DataFrame) -> pa.Table:
    """The frame as an Arrow table with exactly SAMPLES_SCHEMA (column order and types)."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ContractError(f"samples frame lacks column(s) {missing}")
    return df.select(COLUMNS).to_arrow().cast(SAMPLES_SCHEMA)


class DatasetWriter:
    """Writes all splits of one dataset into a temporary folder of its own; swaps it into place only on success.

    A failure anywhere (exception inside the `with`) removes the temporary folder, so the tables of the previous run,
    of this dataset and of every other dataset, stay exactly as they were. Other writers of the same dataset may work
    at the same time (see the module docstring): none touches another's temporary folder.
    """

    def __init__(self, tables_root: Path, dataset: str, meta: dict | None = None,
                 target_shard_bytes: int = TARGET_SHARD_BYTES):
        self.root = Path(tables_root)
        self.dataset = dataset
        self.final = self.root / dataset
        self.tmp = temporary_sibling(self.final)
        self.meta = dict(meta or {})
        self.target = target_shard_bytes
        self._state: dict[str, dict] = {}
        self.splits: dict[str, dict] = {}
        self.rejects: dict | None = None
        self._ids: set[str] = set()
        self._lock: FolderLock | None = None

    def __enter__(self) -> "DatasetWriter":
        self.root.mkdir(parents=True, exist_ok=True)
        with dataset_lock(self.root, self.dataset):   # a recovery never sees this folder before its lock is held
            _recover(self.root, self.dataset)
            self.tmp.mkdir()
            self._lock = FolderLock(self.tmp / WRITER_LOCK, "ingest writer").__enter__()
        return self

    def add(self, split: str, df: pl.DataFrame) -> None:
        """Validate one chunk of rows of `split` and append it to that split's current shard."""
        if split not in SPLITS:
            raise ContractError(f"{self.dataset}: split {split!r} is not one of {SPLITS}")
        st = self._state.setdefault(split, {"hashes": [], "shards": [], "writer": None, "bytes": 0, "rows": 0})
        if df.height == 0:
            return
        where = f"{self.dataset}/{split}"
        validate_samples(df, where=where)
        wrong = df.filter(pl.col("split") != split)
        if wrong.height:
            raise ContractError(f"{where}: row {wrong['source_path'][0]} has split {wrong['split'][0]!r}")
        dup = [s for s in df["sample_id"] if s in self._ids]
        if dup:
            raise ContractError(f"{where}: duplicate sample id(s) across chunks or splits: {dup[:5]}")
        self._ids.update(df["sample_id"])
        st["hashes"].extend(row_hashes(df))
        table = to_arrow(df)
        if st["writer"] is None:
            (self.tmp / split).mkdir(exist_ok=True)
            st["shards"].append({"file": f"part-{len(st['shards']):05d}.parquet"})
            st["writer"] = pq.ParquetWriter(self.tmp / split / st["shards"][-1]["file"], SAMPLES_SCHEMA,
                                            compression="zstd")
        st["writer"].write_table(table)
        st["bytes"] += table.nbytes
        st["rows"] += table.num_rows
        if st["bytes"] >= self.target:
            self._close_shard(split)

    def _close_shard(self, split: str) -> None:
        st = self._state[split]
        if st["writer"] is not None:
            st["writer"].close()
            p = self.tmp / split / st["shards"][-1]["file"]
            st["shards"][-1].update(rows=st["rows"], bytes=p.stat().st_size, sha256=file_sha256(p))
        st["writer"], st["bytes"], st["rows"] = None, 0, 0

    def write_split(self, split: str, chunks: Iterable[pl.DataFrame] | pl.DataFrame) -> None:
        """Validate and write a whole split from frames (chunks of rows)."""
        for df in [chunks] if isinstance(chunks, pl.DataFrame) else chunks:
            self.add(split, df)

    def write_rejects(self, rejects: list[dict]) -> None:
        """Write quarantined rows (dataset, source_path, row, field, reason)."""
        if not rejects:
            return
        t = pa.Table.from_pylist([{k: (None if r.get(k) is None else str(r.get(k))) for k in REJECTS_SCHEMA.names}
                                  for r in rejects], schema=REJECTS_SCHEMA)
        pq.write_table(t, self.tmp / "rejects.parquet")
        self.rejects = {"rows": t.num_rows, "file": "rejects.parquet"}

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._finish(exc_type)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        finally:
            if self._lock is not None:
                self._lock.__exit__(None, None, None)
                self._lock = None

    def _finish(self, exc_type) -> None:
        for split in list(self._state):
            try:
                self._close_shard(split)
            except Exception:
                if exc_type is None:
                    raise
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        for split, st in sorted(self._state.items()):
            self.splits[split] = {"rows": len(st["hashes"]), "digest": digest_of_hashes(st["hashes"]),
                                  "shards": st["shards"]}
        manifest = {"dataset": self.dataset, "contract": "samples", "schema_version": SCHEMA_VERSION,
                    "splits": self.splits, "rejects": self.rejects, "meta": self.meta}
        write_json_atomic(self.tmp / MANIFEST, manifest)
        with dataset_lock(self.root, self.dataset):   # one swap at a time; a recovery never runs half-way through one
            _recover(self.root, self.dataset)
            (self.tmp / WRITER_LOCK).unlink()   # the folder becomes the dataset: no lock file in it
            swap_in(self.tmp, self.final)


@contextlib.contextmanager
def dataset_lock(tables_root: Path, dataset: str) -> Iterator[None]:
    """Hold `<tables_root>/.<dataset>.lock` (flock, waiting for it) for the short steps other writers must not
    interleave with; a killed holder frees it at once. The file is never deleted (see files.FolderLock)."""
    with open(Path(tables_root) / f".{dataset}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def recover(tables_root: Path, dataset: str) -> None:
    """Finish or undo a swap that a killed writer left half-done; drop temporary folders of `dataset` whose writer is
    gone (a live writer's folder, whose lock is held, is left alone)."""
    root = Path(tables_root)
    root.mkdir(parents=True, exist_ok=True)
    with dataset_lock(root, dataset):
        _recover(root, dataset)


def _recover(root: Path, dataset: str) -> None:
    """recover(), for a caller that holds the dataset's lock (old folders exist only inside a swap, which holds it)."""
    final = root / dataset
    olds = sorted(root.glob(f".{dataset}.old-*"), key=lambda p: p.stat().st_mtime_ns)
    if not final.exists() and olds:
        olds[-1].replace(final)  # killed between the two renames of swap_in: the old tables come back
        olds = olds[:-1]
    for p in olds:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(f".{dataset}.tmp-*"):
        if folder_lock_holder(p / WRITER_LOCK) is None:   # its writer is gone (or never took its lock)
            shutil.rmtree(p, ignore_errors=True)


def read_manifest(tables_root: Path, dataset: str) -> dict | None:
    """The dataset's manifest, or None when it has never been written."""
    p = Path(tables_root) / dataset / MANIFEST
    if not p.exists():
        return None
    return json.loads(p.read_text())


def split_digests(tables_root: Path, dataset: str) -> dict[str, str]:
    """{split: content digest} of a dataset's tables; a clear error when the dataset was never ingested."""
    m = read_manifest(tables_root, dataset)
    if m is None:
        raise FileNotFoundError(f"{Path(tables_root) / dataset}: no canonical tables for {dataset}; run ingest first")
    return {s: e["digest"] for s, e in m["splits"].items()}


def split_paths(tables_root: Path, dataset: str, split: str) -> list[Path]:
    """The Parquet shards of one split, in order (for lazy scans)."""
    m = read_manifest(tables_root, dataset)
    if m is None or split not in m["splits"]:
        raise FileNotFoundError(f"{Path(tables_root) / dataset}: no table for split {split!r}")
    return [Path(tables_root) / dataset / split / s["file"] for s in m["splits"][split]["shards"]]


def read_samples(tables_root: Path, dataset: str, split: str, validate: bool = True,
                 verify_digest: bool = False) -> pl.DataFrame:
    """Read one split of one dataset as a polars frame; validated against the contract (and the digest, if asked)."""
    paths = split_paths(tables_root, dataset, split)
    if paths:
        table = pa.concat_tables([pq.read_table(p, schema=SAMPLES_SCHEMA) for p in paths])
    else:
        table = SAMPLES_SCHEMA.empty_table()
    df = pl.from_arrow(table)
    where = f"{Path(tables_root) / dataset / split}"
    if validate:
        validate_samples(df, where=where)
    if verify_digest:
        expected = read_manifest(tables_root, dataset)["splits"][split]["digest"]
        got = table_digest(df)
        if got != expected:
            raise ContractError(f"{where}: content digest {got[:12]} does not match manifest {expected[:12]}")
    return df


def read_rejects(tables_root: Path, dataset: str) -> pl.DataFrame:
    """Quarantined rows of a dataset (empty frame when there are none)."""
    p = Path(tables_root) / dataset / "rejects.parquet"
    if not p.exists():
        return pl.from_arrow(REJECTS_SCHEMA.empty_table())
    return pl.read_parquet(p)
