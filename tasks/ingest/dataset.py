"""Ingest one dataset: load its raw files through the card's loader, validate, write canonical tables (cached).

    from tasks.ingest.dataset import ingest_dataset
    result = ingest_dataset(get_card("ham10000"), data_root, tables_root, policy="fail")

Cache key (tasks/cache.py) = the raw files' content digest, the card, the policy, the image size limit
(data.max_image_pixels) and the code of the format's loader and the samples contract. A dataset whose manifest
already carries the key is not read or rewritten ("cached"); a changed raw file, card or loader recomputes that
dataset only. The raw files include the split files a card names
(split.files), so a split file that appears (R2Gen's IU-Xray annotation.json) re-ingests the dataset.

What the loaders warn about (a 28-px MedMNIST file read where the paper uses 224 px; a random split where the
standard split file is missing) is logged and kept in `IngestResult.warnings` and in `_dataset.json` under
meta.warnings, also when the result is served from cache.

Bad records are handled row by row (tasks/ingest/loaders): under policy "fail" the first one fails the dataset with
its one-line reason (file, row, field, what was expected); under "quarantine" every good row is written and each bad
one goes to rejects.parquet with that reason. A sample id met twice keeps its first copy (see iter_dataset).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from data_contracts.cards import DataCard
from data_contracts.errors import ContractError
from data_contracts.files import file_sha256, write_json_atomic
from data_contracts.io import DatasetWriter, read_manifest
from data_contracts.samples import SAMPLES_SCHEMA, find_problems
from tasks.cache import stage_key
from tasks.ingest import loaders
from tasks.ingest.loaders import Reject
from tasks.ingest.loaders.common import collect_warnings, warn
from tasks.ingest.settings import DEFAULT_MAX_IMAGE_PIXELS

Policy = Literal["fail", "quarantine"]
CHUNK_ROWS = 1000
# the loader modules each raw format runs (besides the loaders package itself and its `common`)
_L = "tasks.ingest.loaders."
_T = [_L + "tables", _L + "records", _L + "split_files", _L + "dicom"]   # what tables.py imports
FORMAT_MODULES = {"medmnist_npz": [_L + "medmnist"], "image_folder": [_L + "image_folder"],
                  "csv_images": _T, "report_table": _T, "case_studies": _T,
                  "slake_json": [*_T, _L + "vqa"], "vqa_rad_json": [*_T, _L + "vqa"], "vqa_med_txt": [*_T, _L + "vqa"],
                  "medfmc_txt": [*_T, _L + "medfmc"], "hf_parquet": [*_T, _L + "hf_parquet"],
                  "omnimedvqa_json": [*_T, _L + "vqa"]}


@dataclass
class IngestResult:
    dataset: str
    status: Literal["written", "cached"]
    cache_key: str
    raw_digest: str
    splits: dict[str, dict] = field(default_factory=dict)   # split -> {rows, digest, path}
    rejects: int = 0
    source: str = ""
    warnings: list[str] = field(default_factory=list)   # loader warnings (also in _dataset.json meta.warnings)

    def to_dict(self) -> dict:
        return asdict(self)


class FileHashMemo:
    """sha256 of files, remembered by (size, mtime_ns) in a JSON file so unchanged raw files are not re-read."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self.data: dict[str, list] = {}
        if self.path and self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                self.data = {}
        self.dirty = False

    def sha256(self, p: Path) -> str:
        st = p.stat()
        key = str(p.resolve())
        hit = self.data.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = file_sha256(p)
        self.data[key] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.path and self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, self.data)
            self.dirty = False


def raw_files(card: DataCard, data_root: Path) -> list[Path]:
    """The files that make up the dataset's raw copy: raw.files globs (folders recursively), else the whole folder."""
    d = loaders.dataset_dir(card, data_root)
    found: set[Path] = set()
    for pattern in card.raw.files or ["**/*"]:
        for p in d.glob(pattern):
            if p.is_dir():
                found.update(q for q in p.rglob("*") if q.is_file())
            elif p.is_file():
                found.add(p)
    if card.raw.files:   # split files decide the rows' splits, and the card may not list them (optional ones)
        for pattern in card.raw.split.files.values():
            found.update(p for p in d.glob(pattern) if p.is_file())
    return sorted(found)


def raw_digest(card: DataCard, data_root: Path, memo: FileHashMemo | None = None) -> str:
    """Content digest of the dataset's raw files (relative paths + file hashes)."""
    memo = memo or FileHashMemo(None)
    d = loaders.dataset_dir(card, data_root)
    h = hashlib.sha256()
    for p in raw_files(card, data_root):
        h.update(p.relative_to(d).as_posix().encode() + b"\0" + memo.sha256(p).encode() + b"\n")
    return h.hexdigest()


def ingest_key(card: DataCard, raw: str, policy: Policy, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> str:
    """The ingest cache key of a dataset: raw digest, card, policy, image size limit, and the code that turns its
    format into tables."""
    code = ["tasks.ingest.dataset", "tasks.ingest.loaders.__init__", "tasks.ingest.loaders.common",
            "data_contracts.samples", "data_contracts.io", *FORMAT_MODULES[card.raw.format]]
    return stage_key("ingest", {"raw": raw}, {"card": card.model_dump(mode="json"), "policy": policy,
                                              "max_image_pixels": max_image_pixels}, code)


def _reject_dict(card: DataCard, r: Reject) -> dict:
    return {"dataset": card.name, "source_path": r.source_path, "row": r.row, "field": r.field, "reason": r.reason}


def ingest_dataset(card: DataCard, data_root: Path, tables_root: Path, policy: Policy = "fail",
                   memo: FileHashMemo | None = None, force: bool = False,
                   max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> IngestResult:
    """Load, validate and write one dataset's canonical tables; served from cache when nothing changed.

    Several processes may ingest one dataset into one tables root at once: each writes its own temporary folder and
    the last to finish swaps its whole dataset in (data_contracts/io.py DatasetWriter)."""
    if policy not in ("fail", "quarantine"):
        raise ValueError(f"{card.name}: policy must be 'fail' or 'quarantine', got {policy!r}")
    data_root, tables_root = Path(data_root), Path(tables_root)
    rd = raw_digest(card, data_root, memo)
    key = ingest_key(card, rd, policy, max_image_pixels)
    source = str(loaders.dataset_dir(card, data_root).resolve())
    manifest = read_manifest(tables_root, card.name)
    if not force and manifest and manifest.get("meta", {}).get("cache_key") == key:
        for message in manifest["meta"].get("warnings", []):
            warn(message)   # a cached dataset still reads as what it is
        return _result(card, "cached", key, rd, manifest, tables_root, source)

    rejects: list[dict] = []
    buffers: dict[str, list[dict]] = {}
    meta = {"cache_key": key, "raw_digest": rd, "source": source, "policy": policy}
    with DatasetWriter(tables_root, card.name, meta=meta) as w, collect_warnings() as warnings:
        def flush(split: str) -> None:
            rows = buffers.pop(split, [])
            if not rows:
                return
            df = pl.from_arrow(_to_table(rows))
            if policy == "quarantine":
                problems = find_problems(df)
                bad = {p.row for p in problems if p.row is not None}
                if any(p.row is None for p in problems):
                    raise ContractError(f"{card.name}/{split}: " + "; ".join(str(p) for p in problems[:5]))
                for p in problems:
                    rejects.append({"dataset": card.name, "source_path": p.source_path, "row": p.sample_id,
                                    "field": p.field, "reason": str(p)})
                if bad:
                    df = df.with_row_index("_i").filter(~pl.col("_i").is_in(sorted(bad))).drop("_i")
            w.add(split, df)

        for item in loaders.iter_dataset(card, data_root, max_image_pixels):
            if isinstance(item, Reject):
                if policy == "fail":
                    raise ContractError(item.reason)
                rejects.append(_reject_dict(card, item))
                continue
            buffers.setdefault(item["split"], []).append(item)
            if len(buffers[item["split"]]) >= CHUNK_ROWS:
                flush(item["split"])
        for split in list(buffers):
            flush(split)
        if not w._state:
            raise ContractError(f"{card.name}: no valid rows under {source}")
        w.meta["rejects"] = len(rejects)
        w.meta["warnings"] = list(warnings)
        w.write_rejects(rejects)
    if memo:
        memo.save()
    return _result(card, "written", key, rd, read_manifest(tables_root, card.name), tables_root, source,
                   rejects=len(rejects))


def _to_table(rows: list[dict]):
    import pyarrow as pa
    return pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA)


def _result(card, status, key, rd, manifest, tables_root, source, rejects=None) -> IngestResult:
    splits = {s: {"rows": e["rows"], "digest": e["digest"], "path": str(Path(tables_root) / card.name / s)}
              for s, e in manifest["splits"].items()}
    n_rej = rejects if rejects is not None else int(manifest.get("meta", {}).get("rejects", 0))
    warnings = list(manifest.get("meta", {}).get("warnings", []))
    return IngestResult(card.name, status, key, rd, splits, n_rej, source, warnings)

