"""MedMNIST `{flag}.npz` / `{flag}_{size}.npz`: keys {train,val,test}_{images,labels}, images (N,s,s[,3]) uint8.

    path = find_npz(ctx)       # {flag}_224.npz (MedMNIST+) first, then _128, _64, then the 28-px raw.npz_file

The paper trains and tests at 224 px; reading a smaller file works (images are upsampled later) but is warned about.
Labels are read exactly: a class index must be a whole number in the card's label_map and a multi-label flag exactly 0
or 1 (0.7, 1.9, NaN are bad rows, never rounded into a label).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data_contracts.errors import DataError
from tasks.ingest.loaders.common import LoadContext, Reject, RowError, encode_array, exact_int, make_row, warn

SPLIT_KEYS = {"train": "train", "val": "val", "test": "test"}
PAPER_PX = 224
PLAIN_PX = 28                 # the side of the images in MedMNIST's unsuffixed `{flag}.npz`
LARGER_SIZES = (224, 128, 64)


def npz_candidates(ctx: LoadContext) -> list[tuple[str, int]]:
    """(file name, image side its name promises), in the order they are preferred: largest first."""
    raw = ctx.card.raw
    names = [(f"{raw.flag}_{s}.npz", s) for s in LARGER_SIZES] if raw.flag else []
    plain = raw.npz_file or (f"{raw.flag}.npz" if raw.flag else None)
    if plain and plain not in {n for n, _ in names}:
        names.append((plain, PLAIN_PX))
    return names


def paper_file(ctx: LoadContext) -> str:
    """The file the paper's 224-px images come in."""
    raw = ctx.card.raw
    return f"{raw.flag}_{PAPER_PX}.npz" if raw.flag else f"the {PAPER_PX}-px MedMNIST+ file of {raw.npz_file}"


def find_npz(ctx: LoadContext) -> Path:
    """The npz file the loader reads: the largest size present (224 px, the paper's, before 128, 64 and 28)."""
    for name, _ in npz_candidates(ctx):
        if (ctx.dataset_dir / name).is_file():
            return ctx.dataset_dir / name
    names = ", ".join(n for n, _ in npz_candidates(ctx))
    raise DataError(str(ctx.dataset_dir), f"one of the MedMNIST files {names}")


def size_warning(ctx: LoadContext, name: str, side: int) -> str | None:
    """The warning for reading `name` with `side`-px images, None at the paper's size."""
    if side >= PAPER_PX:
        return None
    return (f"{ctx.card.name}: read {name} ({side} px); the paper trains and tests at {PAPER_PX} px: place "
            f"{paper_file(ctx)} (MedMNIST+) in {ctx.dataset_dir}")


def describe(ctx: LoadContext) -> str:
    """One line for `gsco datasets validate`: which file ingest reads and how it compares with the paper's."""
    present = [(n, s) for n, s in npz_candidates(ctx) if (ctx.dataset_dir / n).is_file()]
    if not present:
        return (f"MedMNIST file: none of {', '.join(n for n, _ in npz_candidates(ctx))} in {ctx.dataset_dir}; the "
                f"paper trains and tests at {PAPER_PX} px ({paper_file(ctx)}, MedMNIST+)")
    name, side = present[0]   # the side its name promises; the loader warns again if the images are smaller
    message = size_warning(ctx, name, side)
    if message is None:
        return f"MedMNIST file: read {name} ({side} px, MedMNIST+), the size the paper trains and tests at"
    return "MedMNIST file: " + message.split(": ", 1)[1]


def load(ctx: LoadContext) -> Iterator[dict | Reject]:
    """Rows of every split in the npz; shapes and keys are checked before any row is produced."""
    card, path = ctx.card, find_npz(ctx)
    rel = ctx.rel(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(rel, f"a readable npz archive ({type(e).__name__}: {e})") from None
    multilabel = card.task_type == "multilabel"
    n_label_cols = len(card.raw.label_map) if multilabel else 1
    arrays = {}
    for split in SPLIT_KEYS:
        for kind in ("images", "labels"):
            key = f"{split}_{kind}"
            if key not in npz.files:
                raise DataError(rel, f"key {key!r} (keys present: {sorted(npz.files)})", field=key)
            arrays[key] = npz[key]
        imgs, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if imgs.dtype != np.uint8 or not (imgs.ndim == 3 or (imgs.ndim == 4 and imgs.shape[-1] == 3)):
            raise DataError(rel, f"uint8 images of shape (N,s,s) or (N,s,s,3), got {imgs.dtype} {imgs.shape}",
                            field=f"{split}_images")
        if labels.ndim == 1:
            labels = labels[:, None]
        if labels.ndim != 2 or labels.shape != (imgs.shape[0], n_label_cols):
            raise DataError(rel, f"labels of shape ({imgs.shape[0]}, {n_label_cols}), got {labels.shape}",
                            field=f"{split}_labels")
        arrays[f"{split}_labels"] = labels
        side_h, side_w = imgs.shape[1], imgs.shape[2]
        if side_h * side_w > ctx.max_image_pixels:   # one size for the whole file: a file-level error
            raise DataError(rel, f"images of at most {ctx.max_image_pixels:,} pixels (data.max_image_pixels), got "
                                 f"{side_w}x{side_h}", field=f"{split}_images")
    message = size_warning(ctx, path.name, int(arrays["test_images"].shape[1]))
    if message:
        warn(message)
    for split in SPLIT_KEYS:
        imgs, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        for i in range(imgs.shape[0]):
            src = f"{rel}#{split}_images[{i}]"
            try:
                names = _labels(ctx, labels[i], rel, i, f"{split}_labels") if multilabel else \
                    [_label(ctx, labels[i, 0], rel, i, f"{split}_labels")]
                yield make_row(ctx, sample_id=f"{split}:{i}", split=split, image=encode_array(imgs[i]),
                               source_path=src, labels=names)
            except RowError as e:
                yield Reject(src, str(i), e.field, str(e))


def _label(ctx: LoadContext, value, rel: str, i: int, field: str) -> str:
    """The label name of one class index, which must be exactly a whole number in the card's label_map."""
    index, names = exact_int(value), ctx.card.raw.label_map
    if index is None or str(index) not in names:
        raise RowError(rel, f"a label index in {sorted(names)}, got {_shown(value)}", row=i, field=field)
    return names[str(index)]


def _labels(ctx: LoadContext, flags, rel: str, i: int, field: str) -> list[str]:
    """The label names of one row of 0/1 flags (each exactly 0 or 1); none set means raw.empty_means."""
    raw = ctx.card.raw
    for j, f in enumerate(flags):
        if exact_int(f) not in (0, 1):
            raise RowError(rel, f"0/1 flags, got {_shown(f)} in column {j}", row=i, field=field)
    names = [raw.label_map[str(j)] for j in np.flatnonzero(flags)]
    if not names:
        if not raw.empty_means:
            raise RowError(rel, "at least one positive label", row=i, field=field)
        names = [raw.empty_means]
    return names


def _shown(value) -> str:
    """A label value as written in the file: 3, 0.7 (also as float32), nan, 'a'."""
    return repr(str(value)) if isinstance(value, (str, np.str_)) else str(value)
