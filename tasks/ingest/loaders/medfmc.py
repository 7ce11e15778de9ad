"""MedFM (MedFMC) annotation lists: one line per image, "<image file name> <labels>", one list per split.

    OMP_NUM_THREADS=1 pytest -q tests/test_loaders_formats.py -k medfmc

Labels are either one class index mapped through raw.label_map (ColonPath: "<name> 1"), or 0/1 flags in the order of
raw.onehot_columns' 0-based position keys, separated by raw.label_separator: ',' after the name (ChestDR:
"<name>.png 0,1,0,...") or whitespace (Endo: "<name> 0 1 0 0"). File names may contain spaces, so labels are taken
from the end of the line.
"""
from __future__ import annotations

from collections.abc import Iterator

from data_contracts.errors import DataError
from tasks.ingest.loaders.common import LoadContext, Reject, RowError, carve_val, make_row, map_label, safe_path, \
    split_sources, text_lines
from tasks.ingest.loaders.tables import finish_labels, image_file

FLAGS = ("0", "1")


def _flag_labels(ctx: LoadContext) -> list[str]:
    """Label names by flag position, from onehot_columns keyed "0", "1", ... (checked to be exactly 0..n-1)."""
    cols = ctx.card.raw.onehot_columns
    try:
        positions = sorted(int(k) for k in cols)
    except ValueError:
        positions = []
    if positions != list(range(len(cols))):
        raise DataError(ctx.card.name, f"raw.onehot_columns keyed by the flag positions 0..{len(cols) - 1}, got "
                                       f"{list(cols)}", field="raw.onehot_columns")
    return [cols[str(k)] for k in positions]


def _parse(ctx: LoadContext, line: str, flag_labels: list[str], rel: str, i: int) -> tuple[str, list[str]]:
    """(image file name, label names before empty / single-label handling) of one annotation line."""
    raw = ctx.card.raw
    if not flag_labels:
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise RowError(rel, "an image file name and a class index separated by whitespace", row=i, field="label")
        return parts[0].strip(), [map_label(ctx, parts[1], rel, row=i, field="label")]
    n, sep = len(flag_labels), raw.label_separator
    if sep is None or not sep.strip():
        parts = line.rsplit(None, n)
        name, flags = parts[0].strip(), parts[1:]
        what = f"an image file name followed by {n} whitespace-separated 0/1 flags"
    else:
        parts = line.rsplit(None, 1)
        name, flags = parts[0].strip(), [f.strip() for f in parts[1].split(sep)] if len(parts) == 2 else []
        what = f"an image file name, whitespace, then {n} {sep!r}-separated 0/1 flags"
    if len(flags) != n or not name:
        raise RowError(rel, f"{what}, got {len(flags)} flag(s) in {line.strip()!r}", row=i, field="labels")
    bad = [f for f in flags if f not in FLAGS]
    if bad:
        raise RowError(rel, f"{what}, got flag {bad[0]!r}", row=i, field="labels")
    return name, [label for label, f in zip(flag_labels, flags) if f == "1"]


def load(ctx: LoadContext) -> Iterator[dict | Reject]:
    """Rows of every split list (split.source=file); val is carved from train when split.val_fraction is set."""
    raw = ctx.card.raw
    if raw.split.source != "file":
        raise DataError(ctx.rel(ctx.dataset_dir), f"split.source=file for MedFM annotation lists, got "
                                                  f"{raw.split.source}", field="split.source")
    flag_labels = _flag_labels(ctx) if raw.onehot_columns else []
    for split, f in split_sources(ctx):
        path = safe_path(ctx, ctx.dataset_dir, f, ctx.rel(ctx.dataset_dir), field="split.files")
        if not path.is_file():
            raise DataError(ctx.rel(ctx.dataset_dir) + f"/{f}", "a MedFM annotation list")
        rel = ctx.rel(path)
        for i, line, problem in text_lines(path):
            if not line.strip():
                continue
            try:
                if problem:
                    raise RowError(rel, problem, row=i)
                name, labels = _parse(ctx, line, flag_labels, rel, i)
                labels = finish_labels(ctx, labels, rel, i, "labels")
                sid = f"{split}:{name}"
                image, _ = image_file(ctx, name, rel, i, "image", split)
                yield make_row(ctx, sample_id=sid, split=carve_val(raw.split, split, sid), image=image,
                               source_path=f"{rel}#row={i}", labels=labels)
            except RowError as e:
                yield Reject(rel, str(i), e.field, str(e))
