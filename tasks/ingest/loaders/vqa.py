"""VQA formats: SLAKE JSON (one file per split), VQA-RAD JSON (one file, split field), VQA-Med pipe text, OmniMedVQA.

    OMP_NUM_THREADS=1 pytest -q tests/test_loaders_formats.py -k omnimedvqa
"""
from __future__ import annotations

from collections.abc import Iterator

from data_contracts.errors import DataError
from tasks.ingest.loaders.common import LoadContext, Reject, RowError, check_record, columns_of, require_columns, \
    safe_path, split_sources, text_lines
from tasks.ingest.loaders.records import filtered, read_table
from tasks.ingest.loaders.tables import YES_NO, _answer_type, _split_of, _vqa_row

__all__ = ["YES_NO", "_answer_type", "_vqa_row", "load_json", "load_omnimedvqa", "load_pipe_text"]


def load_json(ctx: LoadContext) -> Iterator[dict | Reject]:
    """SLAKE (split.source=file) and VQA-RAD (split.source=column/random) question-answer records."""
    raw = ctx.card.raw
    if raw.split.source == "file":
        sources = split_sources(ctx)
    else:
        sources = [(None, raw.table)]
    for split, f in sources:
        path, rows = read_table(ctx, f)
        rel = ctx.rel(path)
        require_columns(path, columns_of(rows),
                        [raw.question_column, raw.answer_column, raw.image_column, *raw.filters])
        for i, rec in filtered(rows, raw.filters):
            try:
                check_record(rec, rel, i)
                s = split or _split_of(ctx, rec, str(rec.get(raw.id_column, i)), rel, i)
                yield _vqa_row(ctx, rec, i, rel, s)
            except RowError as e:
                yield Reject(rel, str(i), e.field, str(e))


def load_omnimedvqa(ctx: LoadContext) -> Iterator[dict | Reject]:
    """OmniMedVQA multiple-choice questions from every QA_information JSON list the split.files patterns match.

    The options (raw.option_columns, empty ones dropped) become the row's label_set in letter order and the answer
    is the text of the correct option; a question's records may lack the keys of options it does not have.
    """
    raw = ctx.card.raw
    if raw.split.source != "file":
        raise DataError(ctx.rel(ctx.dataset_dir), f"split.source=file for OmniMedVQA, got {raw.split.source}",
                        field="split.source")
    for split, f in split_sources(ctx):
        path, rows = read_table(ctx, f)
        rel = ctx.rel(path)
        # records differ in which option keys they carry, so the columns present are those of any record
        keys = {k for r in rows if isinstance(r, dict) for k in r}
        require_columns(path, keys, [raw.id_column, raw.question_column, raw.answer_column, raw.image_column,
                                     *raw.filters])
        for i, rec in enumerate(rows):
            try:
                check_record(rec, rel, i)
                if not all(str(rec.get(k)) == v for k, v in raw.filters.items()):
                    continue
                yield _vqa_row(ctx, rec, i, rel, split)
            except RowError as e:
                yield Reject(rel, str(i), e.field, str(e))


def load_pipe_text(ctx: LoadContext) -> Iterator[dict | Reject]:
    """VQA-Med: `|`-separated lines with the card's field names; '#' separates accepted alternative answers."""
    raw = ctx.card.raw
    if raw.split.source != "file":
        raise DataError(ctx.rel(ctx.dataset_dir), "split.source=file for VQA-Med text files")
    fields = raw.fields or ["image_id", "question", "answer"]
    for split, f in split_sources(ctx):
        path = safe_path(ctx, ctx.dataset_dir, f, ctx.rel(ctx.dataset_dir), field="split.files")
        if not path.is_file():
            raise DataError(ctx.rel(ctx.dataset_dir) + f"/{f}", "a VQA-Med text file")
        rel = ctx.rel(path)
        require_columns(path, fields, [raw.id_column, raw.question_column, raw.answer_column])
        for i, line, problem in text_lines(path):
            if not line.strip():
                continue
            try:
                if problem:
                    raise RowError(rel, problem, row=i)
                parts = line.split("|")
                if len(parts) != len(fields):
                    raise RowError(rel, f"{len(fields)} '|'-separated fields {fields}, got {len(parts)}", row=i)
                rec = dict(zip(fields, (p.strip() for p in parts)))
                yield _vqa_row(ctx, rec, i, rel, split)
            except RowError as e:
                yield Reject(rel, str(i), e.field, str(e))
