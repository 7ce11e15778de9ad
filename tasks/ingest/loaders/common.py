"""Shared pieces of the raw-format loaders: safe paths, image encoding, split assignment, row building, warnings.

    with collect_warnings() as found:          # what loaders warn about while the block runs (also logged)
        rows = list(iter_dataset(card, data_root))
"""
from __future__ import annotations

import contextvars
import hashlib
import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data_contracts.cards import DataCard, SplitSpec
from data_contracts.errors import DataError
from data_contracts.samples import IMAGE_FORMATS, image_info

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
_GLOB_CHARS = set("*?[")
log = logging.getLogger("gsco.ingest")
# loaders are generators run by iter_dataset's caller, so a context variable reaches them without a new argument
_COLLECTOR: contextvars.ContextVar[tuple[list[str], bool] | None] = contextvars.ContextVar("gsco_ingest_warnings",
                                                                                          default=None)


@contextmanager
def collect_warnings(log_them: bool = True) -> Iterator[list[str]]:
    """The warnings `warn` gives while the block runs, in order and without repeats (logged unless log_them=False,
    for callers that show them themselves)."""
    found: list[str] = []
    token = _COLLECTOR.set((found, log_them))
    try:
        yield found
    finally:
        _COLLECTOR.reset(token)


def warn(message: str) -> None:
    """Warn about a dataset's raw copy (usable, but not what the paper used): logged, and collected when collecting."""
    active = _COLLECTOR.get()
    if active is None or active[1]:
        log.warning(message)
    if active is not None and message not in active[0]:
        active[0].append(message)


class RowError(DataError):
    """One raw row is bad; under policy `quarantine` it goes to the rejects table instead of failing the dataset."""


@dataclass(frozen=True)
class Reject:
    source_path: str
    row: str | None
    field: str | None
    reason: str


@dataclass(frozen=True)
class LoadContext:
    """What every loader gets: the card, the data root, and the dataset's raw folder under it."""
    card: DataCard
    data_root: Path
    dataset_dir: Path

    def rel(self, p: Path) -> str:
        """`p` relative to the data root, as stored in `source_path`."""
        return Path(p).resolve().relative_to(self.data_root.resolve()).as_posix()


def safe_path(ctx: LoadContext, base: Path, rel: str, where: str, row=None, field=None) -> Path:
    """`base/rel` resolved, refusing anything (.., absolute paths, symlinks) that leads outside the data root."""
    if rel is None or str(rel).strip() == "":
        raise RowError(where, "a non-empty relative path", row=row, field=field)
    p = (base / str(rel)).resolve()
    root = ctx.data_root.resolve()
    if not p.is_relative_to(root):
        raise RowError(where, f"a path inside the data root {root}, got {rel!r} which escapes it", row=row,
                       field=field)
    return p


def encode_file(path: Path, where: str, row=None, field=None) -> tuple[bytes, str, int, int]:
    """The image file's bytes (PNG/JPEG kept as they are, other formats re-encoded as PNG) with format and size."""
    if not path.is_file():
        raise RowError(where, f"an existing image file, {path} is missing", row=row, field=field)
    try:
        return _kept_or_png(path.read_bytes())
    except Exception as e:
        raise RowError(where, f"a decodable image file, {path} is not ({type(e).__name__}: {e})", row=row,
                       field=field) from None


def encode_bytes(data: bytes, where: str, row=None, field=None) -> tuple[bytes, str, int, int]:
    """Encoded image bytes from a table cell (PNG/JPEG kept as they are, other formats re-encoded as PNG)."""
    try:
        return _kept_or_png(data)
    except Exception as e:
        raise RowError(where, f"image bytes that decode ({type(e).__name__}: {e})", row=row, field=field) from None


def _kept_or_png(data: bytes) -> tuple[bytes, str, int, int]:
    """(bytes, format, width, height): PNG/JPEG as they are, any other decodable format re-encoded as PNG."""
    with Image.open(io.BytesIO(data)) as im:
        fmt = im.format
        im.load()
        if fmt not in IMAGE_FORMATS:
            return encode_array(np.asarray(im.convert("RGB" if im.mode not in ("L", "I;16") else "L")))
    fmt, w, h = image_info(data)
    return data, fmt, w, h


def encode_array(arr: np.ndarray) -> tuple[bytes, str, int, int]:
    """PNG bytes of a uint8 (H,W) or (H,W,3) array, deterministic for equal arrays."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got {arr.dtype}")
    im = Image.fromarray(arr)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue(), "PNG", im.size[0], im.size[1]


def _unit(seed: int, key: str) -> float:
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64


def random_split(spec: SplitSpec, key: str) -> str:
    """A seeded split for `key` from spec.fractions (stable across runs and machines)."""
    u, acc = _unit(spec.seed, key), 0.0
    names = [s for s in ("train", "val", "test") if s in spec.fractions]
    for s in names:
        acc += spec.fractions[s]
        if u < acc:
            return s
    return names[-1]


def carve_val(spec: SplitSpec, split: str, key: str) -> str:
    """Move a seeded `val_fraction` of train rows to val when the raw data has no val split."""
    if split == "train" and spec.val_fraction > 0 and _unit(spec.seed + 1, key) < spec.val_fraction:
        return "val"
    return split


def map_label(ctx: LoadContext, raw: str, where: str, row=None, field=None) -> str:
    """The label-set name of a raw label value (through the card's label_map)."""
    card = ctx.card
    name = card.raw.label_map.get(str(raw), str(raw))
    if name not in card.labels:
        raise RowError(where, f"a label in the label set of {card.name} ({len(card.labels)} names), got {raw!r}",
                       row=row, field=field)
    return name


def make_row(ctx: LoadContext, *, sample_id: str, split: str, image: tuple[bytes, str, int, int], source_path: str,
             labels: list[str] | None = None, question: str | None = None, answer: str | None = None,
             answer_type: str | None = None, text: str | None = None, task_type: str | None = None,
             label_set: list[str] | None = None, modality: str | None = None) -> dict:
    """One samples row with the card's dataset-level fields filled in (label_set: the row's own options, modality:
    the row's own modality, if any)."""
    card = ctx.card
    data, fmt, w, h = image
    return {
        "sample_id": f"{card.name}:{sample_id}", "dataset": card.name, "split": split,
        "task_kind": card.task_kind, "task_type": task_type or card.task_type, "modality": modality or card.modality,
        "image": data, "image_format": fmt, "image_width": w, "image_height": h,
        "labels": labels or [], "label_set": list(card.labels if label_set is None else label_set),
        "question": question, "answer": answer,
        "answer_type": answer_type, "text": text, "source_path": source_path,
    }


def split_sources(ctx: LoadContext) -> list[tuple[str, str]]:
    """(split, file relative to the dataset dir) for each split.files entry; glob patterns expand to their matches.

    A plain name is returned as written, so the loader's own "missing file" error names it; a pattern with no match
    is a DataError naming the pattern.
    """
    out = []
    base = ctx.dataset_dir
    for split, pattern in ctx.card.raw.split.files.items():
        if not _GLOB_CHARS & set(pattern):
            out.append((split, pattern))
            continue
        where = ctx.rel(base) + f"/{pattern}"
        if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
            raise DataError(where, "a glob pattern relative to the dataset folder", field="split.files")
        matches = sorted(p for p in base.glob(pattern) if p.is_file())
        if not matches:
            raise DataError(where, f"at least one file matching the split.files pattern of split {split!r}",
                            field="split.files")
        for m in matches:
            rel = m.relative_to(base).as_posix()
            safe_path(ctx, base, rel, where, field="split.files")   # a symlinked match may still lead outside
            out.append((split, rel))
    return out


def require_columns(path: Path, available, needed) -> None:
    """Raise DataError naming the file and the first missing column."""
    have = set(available)
    for c in needed:
        if c and c not in have:
            raise DataError(str(path), f"column {c!r} (columns present: {sorted(have)})", field=c)


def nonempty(v) -> bool:
    return v is not None and str(v).strip() != "" and str(v).strip().lower() != "nan"
