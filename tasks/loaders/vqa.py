"""VQA formats: SLAKE JSON (one file per split), VQA-RAD JSON (one file, split field), VQA-Med pipe text."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from data_contracts.errors import DataError
from tasks.loaders.common import LoadContext, Reject, RowError, encode_file, make_row, nonempty, require_columns, \
    safe_path
from tasks.loaders.tables import _filtered, _image, _split_of, read_table

YES_NO = {"yes", "no"}


def _answer_type(raw_type, answer: str) -> str:
    """'closed' or 'open': from the dataset's answer type when given, else closed iff the answer is yes/no."""
    if nonempty(raw_type):
        t = str(raw_type).strip().lower()
        if t in ("closed", "open"):
            return t
    return "closed" if answer.strip().lower() in YES_NO else "open"


def _vqa_row(ctx: LoadContext, rec: dict, i: int, rel: str, split: str) -> dict:
    raw, card = ctx.card.raw, ctx.card
    q, a = rec.get(raw.question_column), rec.get(raw.answer_column)
    if not nonempty(q):
        raise RowError(rel, "a non-empty question", row=i, field=raw.question_column)
    if not nonempty(a):
        raise RowError(rel, "a non-empty answer", row=i, field=raw.answer_column)
    a = str(a).strip()
    if card.task_type == "multiple-choice":
        atype, ttype = "multiple-choice", "multiple-choice"
    else:
        atype = _answer_type(rec.get(raw.answer_type_column) if raw.answer_type_column else None, a)
        ttype = atype
    image, _ = _image(ctx, rec, rel, i)
    sid = f"{split}:{rec.get(raw.id_column, i)}"
    return make_row(ctx, sample_id=sid, split=split, image=image, source_path=f"{rel}#row={i}",
                    question=str(q).strip(), answer=a, answer_type=atype, task_type=ttype)


def load_json(ctx: LoadContext) -> Iterator[dict | Reject]:
    """SLAKE (split.source=file) and VQA-RAD (split.source=column/random) question-answer records."""
    raw = ctx.card.raw
    if raw.split.source == "file":
        sources = [(split, f) for split, f in raw.split.files.items()]
    else:
        sources = [(None, raw.table)]
    for split, f in sources:
        path, rows = read_table(ctx, f)
        rel = ctx.rel(path)
        require_columns(path, rows[0].keys() if rows else [],
                        [raw.question_column, raw.answer_column, raw.image_column, *raw.filters])
        for i, rec in _filtered(rows, raw.filters):
            try:
                s = split or _split_of(ctx, rec, str(rec.get(raw.id_column, i)), rel, i)
                yield _vqa_row(ctx, rec, i, rel, s)
            except RowError as e:
                yield Reject(rel, str(i), e.field, str(e))


def load_pipe_text(ctx: LoadContext) -> Iterator[dict | Reject]:
    """VQA-Med: `|`-separated lines with the card's field names; '#' separates accepted alternative answers."""
    raw = ctx.card.raw
    if raw.split.source != "file":
        raise DataError(ctx.rel(ctx.dataset_dir), "split.source=file for VQA-Med text files")
    fields = raw.fields or ["image_id", "question", "answer"]
    for split, f in raw.split.files.items():
        path = safe_path(ctx, ctx.dataset_dir, f, ctx.rel(ctx.dataset_dir), field="split.files")
        if not path.is_file():
            raise DataError(ctx.rel(ctx.dataset_dir) + f"/{f}", "a VQA-Med text file")
        rel = ctx.rel(path)
        require_columns(path, fields, [raw.id_column, raw.question_column, raw.answer_column])
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                parts = line.split("|")
                if len(parts) != len(fields):
                    raise RowError(rel, f"{len(fields)} '|'-separated fields {fields}, got {len(parts)}", row=i)
                rec = dict(zip(fields, (p.strip() for p in parts)))
                yield _vqa_row(ctx, rec, i, rel, split)
            except RowError as e:
                yield Reject(rel, str(i), e.field, str(e))
