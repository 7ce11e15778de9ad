"""Class-per-folder trees: `<dir>/<split folder>/<class folder>/<image>` (DermNet, Kvasir, OCT-C8, WCE, ...)."""
from __future__ import annotations

from collections.abc import Iterator

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
        for class_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            for img in sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS):
                rel = ctx.rel(img)
                try:
                    label = map_label(ctx, class_dir.name, rel, field="class folder")
                    key = img.relative_to(ctx.dataset_dir).as_posix()
                    s = random_split(raw.split, key) if raw.split.source == "random" else split
                    s = carve_val(raw.split, s, key)
                    yield make_row(ctx, sample_id=key, split=s, image=encode_file(img, rel, field="image"),
                                   source_path=rel, labels=[label])
                except RowError as e:
                    yield Reject(rel, None, e.field, str(e))
