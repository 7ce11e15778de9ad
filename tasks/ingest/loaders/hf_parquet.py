"""Hugging Face `datasets` parquet shards with the image inside a column (Path-VQA): VQA rows.

    OMP_NUM_THREADS=1 pytest -q tests/test_loaders_formats.py -k hf_parquet

split.files maps each split to a shard name or glob ("data/train-*.parquet"); shards are read in name order, a batch
at a time. The image cell is the `datasets` Image struct {bytes, path} (bytes win; a bare path is read relative to
raw.image_dir or the dataset folder) or plain binary. Rows without an id column get "<shard>:<row>" as id.
"""
from __future__ import annotations

from collections.abc import Iterator

import pyarrow.parquet as pq

from data_contracts.errors import DataError
from tasks.ingest.loaders.common import LoadContext, Reject, RowError, carve_val, encode_bytes, nonempty, \
    require_columns, safe_path, split_sources
from tasks.ingest.loaders.dicom import encode_image
from tasks.ingest.loaders.tables import _vqa_row

BATCH_ROWS = 64


def _image(ctx: LoadContext, cell, rel: str, i: int) -> tuple:
    """Encoded image of one image cell (struct with bytes / path, or raw bytes)."""
    col = ctx.card.raw.image_column
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
        if data:
            return encode_bytes(data, rel, row=i, field=col, max_pixels=ctx.max_image_pixels)
        if nonempty(path):
            base = ctx.dataset_dir / (ctx.card.raw.image_dir or ".")
            p = safe_path(ctx, base, str(path), rel, row=i, field=col)
            return encode_image(p, rel, row=i, field=col, max_pixels=ctx.max_image_pixels)
    elif isinstance(cell, (bytes, bytearray)) and cell:
        return encode_bytes(bytes(cell), rel, row=i, field=col, max_pixels=ctx.max_image_pixels)
    raise RowError(rel, "an image cell with bytes or a path", row=i, field=col)


def load(ctx: LoadContext) -> Iterator[dict | Reject]:
    """VQA rows of every shard of every split (split.source=file); val is carved from train when val_fraction is set."""
    raw, card = ctx.card.raw, ctx.card
    if raw.split.source != "file":
        raise DataError(ctx.rel(ctx.dataset_dir), f"split.source=file for parquet shards, got {raw.split.source}",
                        field="split.source")
    if card.task_kind != "vqa":
        raise DataError(card.name, f"a VQA card for raw.format hf_parquet, got task_kind {card.task_kind}",
                        field="raw.format")
    needed = [raw.id_column, raw.image_column, raw.question_column, raw.answer_column, raw.answer_type_column,
              *raw.option_columns.values(), *raw.text_columns, *raw.filters]
    needed = [c for c in dict.fromkeys(needed) if c]
    for split, f in split_sources(ctx):
        path = safe_path(ctx, ctx.dataset_dir, f, ctx.rel(ctx.dataset_dir), field="split.files")
        if not path.is_file():
            raise DataError(ctx.rel(ctx.dataset_dir) + f"/{f}", "a parquet shard")
        rel = ctx.rel(path)
        try:
            shard = pq.ParquetFile(path)
        except Exception as e:
            raise DataError(rel, f"a readable parquet file ({type(e).__name__}: {e})") from None
        require_columns(path, shard.schema_arrow.names, needed)
        i = 0
        for batch in _batches(shard, needed, rel):
            for rec in batch.to_pylist():
                try:
                    if all(str(rec.get(k)) == v for k, v in raw.filters.items()):
                        yield _row(ctx, rec, rel, i, split, path.stem)
                except RowError as e:
                    yield Reject(rel, str(i), e.field, str(e))
                i += 1


def _batches(shard: pq.ParquetFile, columns: list[str], rel: str):
    """The shard's record batches; a shard that breaks part-way (truncated, corrupt page) is a DataError naming it."""
    batches = shard.iter_batches(batch_size=BATCH_ROWS, columns=columns)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as e:
            raise DataError(rel, f"a readable parquet file ({type(e).__name__}: {e})") from None
        yield batch


def _row(ctx: LoadContext, rec: dict, rel: str, i: int, split: str, shard: str) -> dict:
    raw = ctx.card.raw
    has_id = raw.id_column and nonempty(rec.get(raw.id_column))
    sid = f"{split}:{rec[raw.id_column]}" if has_id else f"{split}:{shard}:{i}"
    image = _image(ctx, rec.get(raw.image_column), rel, i)
    return _vqa_row(ctx, rec, i, rel, carve_val(raw.split, split, sid), image=image, sample_id=sid)
