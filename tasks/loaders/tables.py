"""Table-driven formats: CSV + image dir (diagnosis), report tables (IU-Xray), case studies (OpenI JSONL)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from data_contracts.errors import DataError
from tasks.loaders.common import LoadContext, Reject, RowError, carve_val, encode_file, make_row, map_label, \
    nonempty, random_split, require_columns, safe_path

TRUE = {"1", "1.0", "true", "yes", "y", "t"}


def read_table(ctx: LoadContext, rel: str) -> tuple[Path, list[dict]]:
    """Rows of a CSV / JSON list / JSONL file as dicts of strings; errors name the file."""
    path = safe_path(ctx, ctx.dataset_dir, rel, ctx.rel(ctx.dataset_dir), field="table")
    if not path.is_file():
        raise DataError(ctx.rel(ctx.dataset_dir) + f"/{rel}", "a table file")
    try:
        if path.suffix == ".csv":
            rows = pl.read_csv(path, infer_schema=False).to_dicts()
        elif path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            rows = json.loads(path.read_text())
    except Exception as e:
        raise DataError(ctx.rel(path), f"a readable table ({type(e).__name__}: {e})") from None
    if not isinstance(rows, list):
        raise DataError(ctx.rel(path), "a list of records")
    return path, rows


def _filtered(rows: list[dict], filters: dict[str, str]) -> list[tuple[int, dict]]:
    return [(i, r) for i, r in enumerate(rows) if all(str(r.get(k)) == v for k, v in filters.items())]


def _split_of(ctx: LoadContext, rec: dict, key: str, rel: str, i: int) -> str:
    spec = ctx.card.raw.split
    if spec.source == "random":
        s = random_split(spec, key)
    elif spec.source == "column":
        v = str(rec.get(spec.column))
        s = spec.values.get(v, v)
        if s not in ("train", "val", "test"):
            raise RowError(rel, f"a split value in {sorted(spec.values) or ['train', 'val', 'test']}, got {v!r}",
                           row=i, field=spec.column)
    else:
        raise DataError(rel, f"split.source random or column for this format, got {spec.source}")
    return carve_val(spec, s, key)


def _image(ctx: LoadContext, rec: dict, rel: str, i: int) -> tuple[tuple, str]:
    raw = ctx.card.raw
    name = rec.get(raw.image_column)
    if not nonempty(name):
        raise RowError(rel, "an image file name", row=i, field=raw.image_column)
    name = str(name)
    if raw.image_suffix and not Path(name).suffix:
        name += raw.image_suffix
    base = ctx.dataset_dir / (raw.image_dir or ".")
    p = safe_path(ctx, base, name, rel, row=i, field=raw.image_column)
    return encode_file(p, rel, row=i, field=raw.image_column), ctx.rel(p)


def load_csv_images(ctx: LoadContext) -> Iterator[dict | Reject]:
    """Diagnosis rows from a CSV (label column, separator multi-label, or one-hot columns) plus an image folder."""
    raw, card = ctx.card.raw, ctx.card
    path, rows = read_table(ctx, raw.table)
    rel = ctx.rel(path)
    needed = [raw.id_column, raw.image_column, raw.label_column, *raw.onehot_columns, *raw.filters]
    if raw.split.source == "column":
        needed.append(raw.split.column)
    require_columns(path, rows[0].keys() if rows else [], needed)
    for i, rec in _filtered(rows, raw.filters):
        try:
            sid = str(rec.get(raw.id_column) or i)
            if raw.onehot_columns:
                labels = [name for col, name in raw.onehot_columns.items()
                          if str(rec.get(col, "")).strip().lower() in TRUE]
            else:
                v = rec.get(raw.label_column)
                if not nonempty(v):
                    labels = []
                elif raw.label_separator:
                    labels = [map_label(ctx, x.strip(), rel, row=i, field=raw.label_column)
                              for x in str(v).split(raw.label_separator) if x.strip()]
                else:
                    labels = [map_label(ctx, str(v).strip(), rel, row=i, field=raw.label_column)]
            labels = sorted(set(labels), key=card.labels.index)
            if not labels:
                if card.task_type == "multilabel" and raw.empty_means:
                    labels = [raw.empty_means]
                else:
                    raise RowError(rel, "a label", row=i, field=raw.label_column or "one-hot columns")
            split = _split_of(ctx, rec, sid, rel, i)
            image, src = _image(ctx, rec, rel, i)
            yield make_row(ctx, sample_id=sid, split=split, image=image, source_path=f"{rel}#row={i}",
                           labels=labels)
        except RowError as e:
            yield Reject(rel, str(i), e.field, str(e))


def _text(rec: dict, columns: list[str]) -> str:
    parts = []
    for c in columns:
        v = rec.get(c)
        if nonempty(v):
            parts.append(f"{c.capitalize()}: {str(v).strip()}" if len(columns) > 1 else str(v).strip())
    return "\n".join(parts)


def load_report_table(ctx: LoadContext) -> Iterator[dict | Reject]:
    """Report rows (IU-Xray style): a report CSV joined to a projections CSV that names the image file."""
    raw = ctx.card.raw
    path, rows = read_table(ctx, raw.table)
    rel = ctx.rel(path)
    require_columns(path, rows[0].keys() if rows else [], [raw.id_column, *raw.text_columns])
    images: dict[str, dict] = {}
    if raw.join_table:
        jpath, jrows = read_table(ctx, raw.join_table)
        require_columns(jpath, jrows[0].keys() if jrows else [], [raw.join_on, raw.image_column, *raw.join_filters])
        for _, j in _filtered(jrows, raw.join_filters):
            images.setdefault(str(j[raw.join_on]), j)
    for i, rec in _filtered(rows, raw.filters):
        try:
            sid = str(rec.get(raw.id_column))
            text = _text(rec, raw.text_columns)
            if not text:
                raise RowError(rel, f"report text in {raw.text_columns}", row=i, field=raw.text_columns[0])
            img_rec = images.get(sid) if raw.join_table else rec
            if img_rec is None:
                raise RowError(rel, f"a matching row in {raw.join_table} with {raw.join_filters}", row=i,
                               field=raw.join_on)
            image, _ = _image(ctx, img_rec, rel, i)
            yield make_row(ctx, sample_id=sid, split=_split_of(ctx, rec, sid, rel, i), image=image,
                           source_path=f"{rel}#row={i}", text=text)
        except RowError as e:
            yield Reject(rel, str(i), e.field, str(e))


def load_case_studies(ctx: LoadContext) -> Iterator[dict | Reject]:
    """OpenI-style case studies: one record per image with title and caption text."""
    raw = ctx.card.raw
    path, rows = read_table(ctx, raw.table)
    rel = ctx.rel(path)
    require_columns(path, rows[0].keys() if rows else [], [raw.id_column, raw.image_column, *raw.text_columns])
    for i, rec in _filtered(rows, raw.filters):
        try:
            sid = str(rec.get(raw.id_column))
            text = _text(rec, raw.text_columns)
            if not text:
                raise RowError(rel, f"case text in {raw.text_columns}", row=i, field=raw.text_columns[0])
            image, _ = _image(ctx, rec, rel, i)
            yield make_row(ctx, sample_id=sid, split=_split_of(ctx, rec, sid, rel, i), image=image,
                           source_path=f"{rel}#row={i}", text=text)
        except RowError as e:
            yield Reject(rel, str(i), e.field, str(e))
