"""Loaders for the raw formats users download (SPEC §3); each yields canonical rows or rejects for one data card.

    from tasks.ingest.loaders import iter_dataset
    for item in iter_dataset(card, data_root): ...       # a canonical row (dict) or a Reject

Which loader reads a dataset is the card's `raw.format`; how columns and folders map is the rest of `raw`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from data_contracts.cards import DataCard
from data_contracts.errors import DataError
from tasks.ingest.loaders import dicom, hf_parquet, image_folder, medfmc, medmnist, tables, vqa  # noqa: F401
from tasks.ingest.loaders.common import LoadContext, Reject, RowError
from tasks.ingest.settings import DEFAULT_MAX_IMAGE_PIXELS

LOADERS: dict[str, Callable[[LoadContext], Iterator[dict | Reject]]] = {
    "medmnist_npz": medmnist.load,
    "image_folder": image_folder.load,
    "csv_images": tables.load_csv_images,
    "report_table": tables.load_report_table,
    "case_studies": tables.load_case_studies,
    "slake_json": vqa.load_json,
    "vqa_rad_json": vqa.load_json,
    "vqa_med_txt": vqa.load_pipe_text,
    "medfmc_txt": medfmc.load,
    "hf_parquet": hf_parquet.load,
    "omnimedvqa_json": vqa.load_omnimedvqa,
}

__all__ = ["LOADERS", "LoadContext", "Reject", "RowError", "dataset_dir", "iter_dataset", "is_present"]


def dataset_dir(card: DataCard, data_root: Path) -> Path:
    """The dataset's raw folder under the data root."""
    return Path(data_root) / card.raw.dir


def is_present(card: DataCard, data_root: Path) -> bool:
    """Whether the files the card needs exist under the data root (all of raw.files, as globs)."""
    d = dataset_dir(card, data_root)
    if not d.is_dir():
        return False
    return all(any(d.glob(pattern)) for pattern in card.raw.files) if card.raw.files else True


def iter_dataset(card: DataCard, data_root: Path, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
                 ) -> Iterator[dict | Reject]:
    """Every row (dict) or reject of one dataset, in a stable order.

    A sample id met a second time (the same image listed twice, in one split or in two) is a reject naming the first
    copy, which is kept: the first in the loader's order (split files / tables in the card's order, rows in file
    order), so the row a user sees first in the file is the one in the tables.
    """
    root = Path(data_root).resolve()
    ctx = LoadContext(card=card, data_root=root, dataset_dir=dataset_dir(card, root),
                      max_image_pixels=max_image_pixels)
    if not ctx.dataset_dir.is_dir():
        raise DataError(str(ctx.dataset_dir), f"the raw folder of {card.name} ({card.raw.format})")
    if card.raw.format not in LOADERS:
        raise DataError(card.name, f"a raw format with a loader, got {card.raw.format}", field="raw.format")
    first: dict[str, str] = {}   # sample id -> source_path of the copy kept
    for item in LOADERS[card.raw.format](ctx):
        if isinstance(item, dict):
            if item["sample_id"] in first:
                item = _duplicate(card, item, first[item["sample_id"]])
            else:
                first[item["sample_id"]] = item["source_path"]
        yield item


def _duplicate(card: DataCard, row: dict, kept: str) -> Reject:
    """The reject of a row whose sample id an earlier row (`kept`, its source path) already has."""
    path, _, where = row["source_path"].partition("#")
    at = where.removeprefix("row=") or None
    field = card.raw.id_column or "sample_id"
    error = RowError(path, f"a sample id seen only once, got duplicate sample id {row['sample_id']!r} (the first "
                           f"copy, {kept}, is kept)", row=at, field=field)
    return Reject(path, at, field, str(error))
