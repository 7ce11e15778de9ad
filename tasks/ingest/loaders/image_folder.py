"""Class-per-folder trees: `<dir>/<split folder>/<class folder>/<image>` (DermNet, Kvasir, OCT-C8, WCE, ...).

A class folder (or a folder inside one) that is a symbolic link is refused, by name: a link may lead outside the data
root, and one inside it would file another class's images under this class's label. An image file that is a link is
read only when it stays inside the data root.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from data_contracts.errors import DataError
from data_contracts.layout import SPLITS
from tasks.ingest.loaders.common import IMAGE_EXTENSIONS, LoadContext, Reject, RowError, carve_val, encode_file, \
    make_row, map_label, random_split


def split_folders(ctx: LoadContext) -> list[tuple[str, str]]:
    """(folder, split) pairs; the cards key raw.split_folders by split ("train: RetinalOCT_Dataset/train")."""
    folders = ctx.card.raw.split_folders
    if not folders:
        return [(".", "train")]
    # a mapping keyed by folder name with split values ("Training_set: train") reads the other way round
    pairs = [(v, k) if k in SPLITS else (k, v) for k, v in folders.items()]
    for folder, split in pairs:
        if split not in SPLITS:
            raise DataError(ctx.card.name, f"raw.split_folders mapping a split {list(SPLITS)} to a folder, got "
                                           f"{folder!r}: {split!r}", field="raw.split_folders")
    return pairs


def load(ctx: LoadContext) -> Iterator[dict | Reject]:
    """Rows for every image under the split folders; the class folder name maps to the label set."""
    raw = ctx.card.raw
    for folder, split in split_folders(ctx):
        base = ctx.dataset_dir / folder
        if not base.is_dir():
            raise DataError(ctx.rel(ctx.dataset_dir) + f"/{folder}", "a folder of class sub-folders", field="split")
        if not base.resolve().is_relative_to(ctx.data_root.resolve()):   # a linked split folder: all its rows
            raise DataError(ctx.rel(ctx.dataset_dir) + f"/{folder}", f"a folder inside the data root, not a link to "
                                                                      f"{base.resolve()}", field="split")
        for class_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            for img in _images(ctx, class_dir):
                if isinstance(img, Reject):
                    yield img
                    continue
                rel = ctx.rel(img)
                try:
                    label = map_label(ctx, class_dir.name, rel, field="class folder")
                    key = img.relative_to(ctx.dataset_dir).as_posix()
                    s = random_split(raw.split, key) if raw.split.source == "random" else split
                    s = carve_val(raw.split, s, key)
                    image = encode_file(img, rel, field="image", max_pixels=ctx.max_image_pixels)
                    yield make_row(ctx, sample_id=key, split=s, image=image, source_path=rel, labels=[label])
                except RowError as e:
                    yield Reject(rel, None, e.field, str(e))


def _images(ctx: LoadContext, class_dir: Path) -> Iterator[Path | Reject]:
    """The image files under one class folder in name order, and a reject for each symbolic link that is refused."""
    def refused(p: Path, field: str, expected: str) -> Reject:
        rel = p.relative_to(ctx.data_root).as_posix()   # the link's own path: resolving it may leave the root
        return Reject(rel, None, field, str(RowError(rel, f"{expected}, not a symbolic link to {os.readlink(p)} (a "
                                                          "link may lead outside the data root)", field=field)))

    if class_dir.is_symlink():
        yield refused(class_dir, "class folder", "a real folder")
        return
    found: list[Path | Reject] = []
    for folder, dirs, files in os.walk(class_dir):   # links to folders are not followed, only reported
        here = Path(folder)
        found += [refused(here / d, "class folder", "a real folder") for d in dirs if (here / d).is_symlink()]
        for f in files:
            p = here / f
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if p.is_symlink() and not p.resolve().is_relative_to(ctx.data_root.resolve()):
                found.append(refused(p, "image", "an image file inside the data root"))
            else:
                found.append(p)
    yield from sorted(found, key=lambda x: Path(x.source_path).parts if isinstance(x, Reject) else
                      x.relative_to(ctx.data_root).parts)
