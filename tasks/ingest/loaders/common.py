"""Shared pieces of the raw-format loaders: safe paths, image encoding and size limit, split assignment, row building,
records that cannot be read (row by row), text that is not UTF-8, warnings.

    with collect_warnings() as found:          # what loaders warn about while the block runs (also logged)
        rows = list(iter_dataset(card, data_root))
"""
from __future__ import annotations

import contextvars
import hashlib
import io
import logging
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data_contracts.cards import DataCard, SplitSpec
from data_contracts.errors import DataError
from data_contracts.samples import IMAGE_FORMATS, image_info
from tasks.ingest.settings import DEFAULT_MAX_IMAGE_PIXELS

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
    if active is None:
        log.warning(message)
        return
    if message in active[0]:   # once per collection: a loader may read its files more than once
        return
    active[0].append(message)
    if active[1]:
        log.warning(message)


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
    """What every loader gets: the card, the data root, the dataset's raw folder under it, the image size limit."""
    card: DataCard
    data_root: Path
    dataset_dir: Path
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS   # the profile's data.max_image_pixels

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


def check_pixels(width: int, height: int, max_pixels: int | None, where: str, row=None, field=None) -> None:
    """A RowError when a width x height image is larger than `max_pixels` (the profile's data.max_image_pixels)."""
    if max_pixels is not None and width * height > max_pixels:
        raise RowError(where, f"an image of at most {max_pixels:,} pixels (data.max_image_pixels), got "
                              f"{width}x{height} = {width * height:,}", row=row, field=field)


def encode_file(path: Path, where: str, row=None, field=None, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
                ) -> tuple[bytes, str, int, int]:
    """The image file's bytes (PNG/JPEG kept as they are, other formats re-encoded as PNG) with format and size; an
    image larger than `max_pixels` is refused from its header, before it is decoded."""
    if not path.is_file():
        raise RowError(where, f"an existing image file, {path} is missing", row=row, field=field)
    try:
        return _kept_or_png(path.read_bytes(), max_pixels, where, row, field)
    except RowError:
        raise
    except Exception as e:
        raise RowError(where, f"a decodable image file, {path} is not ({type(e).__name__}: {e})", row=row,
                       field=field) from None


def encode_bytes(data: bytes, where: str, row=None, field=None, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
                 ) -> tuple[bytes, str, int, int]:
    """Encoded image bytes from a table cell (PNG/JPEG kept as they are, other formats re-encoded as PNG)."""
    try:
        return _kept_or_png(data, max_pixels, where, row, field)
    except RowError:
        raise
    except Exception as e:
        raise RowError(where, f"image bytes that decode ({type(e).__name__}: {e})", row=row, field=field) from None


def _kept_or_png(data: bytes, max_pixels: int | None, where: str, row, field) -> tuple[bytes, str, int, int]:
    """(bytes, format, width, height): PNG/JPEG as they are, any other decodable format re-encoded as PNG."""
    try:
        with warnings.catch_warnings():   # PIL warns above 89 M pixels; the size is checked against our own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))   # reads the header only
    except Image.DecompressionBombError as e:   # PIL refuses outright above 179 M pixels
        raise RowError(where, f"an image of at most {max_pixels or Image.MAX_IMAGE_PIXELS:,} pixels "
                              f"(data.max_image_pixels), got a larger one ({e})", row=row, field=field) from None
    with im:
        check_pixels(*im.size, max_pixels, where, row=row, field=field)
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


def exact_int(v) -> int | None:
    """`v` as an int when it is exactly a whole number (3, 3.0, True); None for 0.7, 1.9, NaN, inf, text, ...

    Labels are compared exactly: a fractional value is a bad row, never rounded into a valid label."""
    if isinstance(v, (bool, np.bool_, int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return int(v) if math.isfinite(v) and float(v).is_integer() else None
    return None


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


# --- records that cannot be read, text that is not UTF-8 ------------------------------------------------------------

class BadRecord(dict):
    """A raw record that cannot be used as read; `expected` says what was expected instead, `field` where.

    A table reader keeps it in its place, so the row numbers of the records after it stay right, and `check_record`
    turns it into that row's error. An entry that is no record at all (a JSONL line that does not parse, a string in
    a JSON list) is an empty BadRecord with readable=False: it is reported whatever the card's filters say. A record
    holding text that is not UTF-8 keeps its values (readable=True), so the filters still apply to it.
    """

    def __init__(self, values: dict, expected: str, field: str | None = None, readable: bool = True):
        super().__init__(values)
        self.expected, self.field, self.readable = expected, field, readable


def check_record(rec, where: str, row) -> dict:
    """`rec` when it is a usable record; a RowError naming the row (and field) and what was expected otherwise."""
    if isinstance(rec, BadRecord):
        raise RowError(where, rec.expected, row=row, field=rec.field)
    if not isinstance(rec, dict):
        raise RowError(where, f"a JSON object, got {type(rec).__name__}", row=row)
    return rec


def columns_of(records: list) -> list[str]:
    """The column names of a table's records: those of its first readable record (none when it has none)."""
    for r in records:
        if isinstance(r, dict) and not (isinstance(r, BadRecord) and not r.readable):
            return list(r.keys())
    return []


_NOT_UTF8 = re.compile("[\udc80-\udcff]")   # what surrogateescape decodes each non-UTF-8 byte to


def decode_utf8(data: bytes) -> tuple[str, list[tuple[int, int]]]:
    """(the text, [(byte offset, byte)] of each byte that is not UTF-8): such bytes stay in the text as U+DC80..U+DCFF
    (surrogateescape), so the rest of the file still reads and the records holding them can be told apart."""
    text = data.decode("utf-8", "surrogateescape")
    bad, pos, offset = [], 0, 0
    for m in _NOT_UTF8.finditer(text):
        offset += len(text[pos:m.start()].encode("utf-8", "surrogateescape"))
        bad.append((offset, ord(m.group()) - 0xDC00))
        offset, pos = offset + 1, m.end()
    return text, bad


class NotUtf8:
    """The non-UTF-8 bytes of one file, handed out in file order as the pieces of text holding them are read."""

    def __init__(self, bad: list[tuple[int, int]]):
        self.bad, self.k = bad, 0

    def __bool__(self) -> bool:
        return bool(self.bad)

    @staticmethod
    def count(text: str) -> int:
        """How many non-UTF-8 bytes `text` holds."""
        return len(_NOT_UTF8.findall(text))

    @staticmethod
    def sub(replacement: str, text: str) -> str:
        """`text` with each non-UTF-8 byte replaced."""
        return _NOT_UTF8.sub(replacement, text)

    def take(self, n: int) -> str | None:
        """What was expected of the next piece of text, which holds `n` of the bytes (None when n == 0)."""
        if n == 0:
            return None
        first = self.bad[self.k] if self.k < len(self.bad) else None
        self.k += n
        return not_utf8(*first) if first else "UTF-8 text"

    def first(self) -> str:
        return not_utf8(*self.bad[0])


def not_utf8(offset: int, byte: int) -> str:
    return f"UTF-8 text, got byte 0x{byte:02x} at byte offset {offset}"


def text_lines(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """(line index, line, problem) of every line of a text file; `problem` (what was expected) names the first byte of
    the line that is not UTF-8, None for a good line, so each bad line is one bad row."""
    text, bad = decode_utf8(Path(path).read_bytes())
    flaws = NotUtf8(bad)
    for i, line in enumerate(text.splitlines()):
        yield i, line, flaws.take(NotUtf8.count(line))
