"""Table-driven formats: CSV / JSON + images (diagnosis or VQA), report tables (IU-Xray), case studies (OpenI JSONL).

    OMP_NUM_THREADS=1 pytest -q tests/test_loaders_formats.py tests/test_bad_input.py

csv_images reads one table with a split column / seeded split, one table per split (split.source=file), or one table
plus split lists of ids or row numbers (split.file_content); rows sharing an id can be merged (raw.group_by_id).

Bad records are bad rows, each on its own (tasks/ingest/loaders/records.py reads them), as are a one-hot cell that is
not a 0/1 flag and a split list naming a row a second time (the first listing is kept, the later one rejected).
"""
from __future__ import annotations

import ast
import dataclasses
import string
from collections.abc import Iterator
from pathlib import Path

from data_contracts.errors import DataError
from tasks.ingest.loaders.common import BadRecord, LoadContext, Reject, RowError, carve_val, check_record, columns_of, \
    make_row, map_label, nonempty, random_split, require_columns, safe_path, split_sources, text_lines, warn
from tasks.ingest.loaders.dicom import encode_image
from tasks.ingest.loaders.records import filtered, read_table
from tasks.ingest.loaders.split_files import fallback_note, json_id_splits, split_file_present

TRUE = {"1", "1.0", "true", "yes", "y", "t"}
# a one-hot cell that is not positive: 0, CheXpert's -1 (uncertain, counted negative by its card) or blank
FALSE = {"0", "0.0", "-1", "-1.0", "false", "no", "n", "f", "", "nan", "none"}
YES_NO = {"yes", "no"}


def _raw_split(ctx: LoadContext, rec: dict, key: str, rel: str, i: int) -> str:
    """The row's split from the split column or the seeded random split (before any val carve-out)."""
    spec = ctx.card.raw.split
    if spec.source == "random":
        return random_split(spec, key)
    if spec.source == "column":
        v = str(rec.get(spec.column))
        s = spec.values.get(v, v)
        if s not in ("train", "val", "test"):
            raise RowError(rel, f"a split value in {sorted(spec.values) or ['train', 'val', 'test']}, got {v!r}",
                           row=i, field=spec.column)
        return s
    raise DataError(rel, f"split.source random or column for this format, got {spec.source}")


def _split_of(ctx: LoadContext, rec: dict, key: str, rel: str, i: int) -> str:
    return carve_val(ctx.card.raw.split, _raw_split(ctx, rec, key, rel, i), key)


# --- images -------------------------------------------------------------------------------------------------------

def _template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def _literal_list(v, rel: str, i: int, field: str) -> list:
    """A cell holding a Python list literal such as "['Mass', 'Asymmetry']", as a list of stripped strings."""
    try:
        value = ast.literal_eval(str(v).strip())
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, (list, tuple)):
        raise RowError(rel, f"a Python list literal such as \"['a', 'b']\", got {v!r}", row=i, field=field)
    return [str(x).strip() for x in value]


def _template_value(v, rel: str, i: int, field: str) -> str:
    """A template field's text; a list-literal cell (PMC-CaseReport img_ref) stands for its first element."""
    s = str(v).strip()
    if s.startswith("[") and s.endswith("]"):
        items = [x for x in _literal_list(s, rel, i, field) if x]
        if not items:
            raise RowError(rel, f"a non-empty list for the image path, got {v!r}", row=i, field=field)
        return items[0]
    return s


def _image_base(ctx: LoadContext, split: str | None, rel: str) -> Path:
    """The folder image names are relative to: the split's folder (raw.split_folders), else raw.image_dir."""
    raw = ctx.card.raw
    if raw.split_folders:
        if split not in raw.split_folders:
            raise DataError(rel, f"a folder for split {split!r} in raw.split_folders {raw.split_folders}",
                            field="split_folders")
        return ctx.dataset_dir / raw.split_folders[split]
    return ctx.dataset_dir / (raw.image_dir or ".")


def image_file(ctx: LoadContext, name: str, rel: str, i: int, field: str | None, split: str | None = None
               ) -> tuple[tuple, str]:
    """The encoded image `name` (image_suffix added when it has no extension) and its path under the data root."""
    raw = ctx.card.raw
    if raw.image_suffix and not Path(name).suffix:
        name += raw.image_suffix
    p = safe_path(ctx, _image_base(ctx, split, rel), name, rel, row=i, field=field)
    return encode_image(p, rel, row=i, field=field, max_pixels=ctx.max_image_pixels), ctx.rel(p)


def _image(ctx: LoadContext, rec: dict, rel: str, i: int, split: str | None = None) -> tuple[tuple, str]:
    raw = ctx.card.raw
    if raw.image_template:
        values = {}
        for f in _template_fields(raw.image_template):
            if not nonempty(rec.get(f)):
                raise RowError(rel, f"a value for {{{f}}} in raw.image_template {raw.image_template!r}", row=i,
                               field=f)
            values[f] = _template_value(rec[f], rel, i, f)
        fld = raw.image_column or "image_template"
        p = safe_path(ctx, ctx.dataset_dir, raw.image_template.format_map(values), rel, row=i, field=fld)
        return encode_image(p, rel, row=i, field=fld, max_pixels=ctx.max_image_pixels), ctx.rel(p)
    name = rec.get(raw.image_column)
    if not nonempty(name):
        raise RowError(rel, "an image file name", row=i, field=raw.image_column)
    return image_file(ctx, str(name).strip(), rel, i, raw.image_column, split)


# --- labels -------------------------------------------------------------------------------------------------------

def _row_labels(ctx: LoadContext, rec: dict, rel: str, i: int) -> list[str]:
    """Label-set names of one row (possibly none): one-hot columns, or the label column plus extra label columns."""
    raw = ctx.card.raw
    if raw.onehot_columns:
        return [name for col, name in raw.onehot_columns.items() if _flag(rec.get(col), rel, i, col)]
    v = rec.get(raw.label_column)
    if not nonempty(v):
        labels = []
    elif raw.label_list_literal:
        labels = [map_label(ctx, x, rel, row=i, field=raw.label_column)
                  for x in _literal_list(v, rel, i, raw.label_column) if x]
    elif raw.label_separator:
        labels = [map_label(ctx, x.strip(), rel, row=i, field=raw.label_column)
                  for x in str(v).split(raw.label_separator) if x.strip()]
    else:
        labels = [map_label(ctx, str(v).strip(), rel, row=i, field=raw.label_column)]
    for col in raw.extra_label_columns:
        if nonempty(rec.get(col)):
            labels.append(map_label(ctx, str(rec[col]).strip(), rel, row=i, field=col))
    return labels


def _flag(v, rel: str, i: int, col: str) -> bool:
    """Whether a one-hot cell is positive; a cell that is neither a positive nor a negative flag is a bad row (0.7 is
    not rounded, a typo is not read as negative)."""
    t = "" if v is None else str(v).strip().lower()
    if t in TRUE:
        return True
    if t in FALSE:
        return False
    raise RowError(rel, f"a 0/1 flag (1, 0, -1 or blank), got {v!r}", row=i, field=col)


def finish_labels(ctx: LoadContext, labels: list[str], rel: str, i: int, field: str | None) -> list[str]:
    """Labels deduplicated in label-set order; empty -> raw.empty_means; single-label sets need exactly one."""
    card = ctx.card
    labels = sorted(set(labels), key=card.labels.index)
    if not labels:
        if not card.raw.empty_means:
            raise RowError(rel, "a label", row=i, field=field)
        labels = [card.raw.empty_means]
    if card.task_type in ("binary", "multiclass") and len(labels) != 1:
        raise RowError(rel, f"exactly one label for a {card.task_type} set, got {labels}", row=i, field=field)
    return labels


# --- VQA rows -----------------------------------------------------------------------------------------------------

def _answer_type(raw_type, answer: str) -> str:
    """'closed' or 'open': from the dataset's answer type when given, else closed iff the answer is yes/no."""
    if nonempty(raw_type):
        t = str(raw_type).strip().lower()
        if t in ("closed", "open"):
            return t
    return "closed" if answer.strip().lower() in YES_NO else "open"


def _options(ctx: LoadContext, rec: dict, rel: str, i: int) -> tuple[list[str], list[str]]:
    """(option texts, their letters) in letter order; a "A:" prefix repeating the option's own letter is dropped."""
    raw = ctx.card.raw
    texts, letters, gap = [], [], None
    for letter, col in raw.option_columns.items():
        v = rec.get(col)
        if not nonempty(v):
            gap = gap or col
            continue
        if gap:   # a gap would shift the later options' letters
            raise RowError(rel, f"options filled in letter order, {gap!r} is empty but {col!r} is not", row=i,
                           field=gap)
        t = str(v).strip()
        if t[:len(letter) + 1].upper() == f"{letter.upper()}:":
            t = t[len(letter) + 1:].strip()
        texts.append(t)
        letters.append(letter)
    return texts, letters


def _vqa_row(ctx: LoadContext, rec: dict, i: int, rel: str, split: str, image: tuple | None = None,
             sample_id: str | None = None, image_split: str | None = None) -> dict:
    """One VQA samples row; options (raw.option_columns) go to the row's label_set, context (text_columns) to text."""
    raw, card = ctx.card.raw, ctx.card
    q, a = rec.get(raw.question_column), rec.get(raw.answer_column)
    if not nonempty(q):
        raise RowError(rel, "a non-empty question", row=i, field=raw.question_column)
    if not nonempty(a):
        raise RowError(rel, "a non-empty answer", row=i, field=raw.answer_column)
    a = str(a).strip()
    options = None
    if raw.option_columns:
        options, letters = _options(ctx, rec, rel, i)
        if card.task_type == "multiple-choice":
            if len(options) < 2:
                raise RowError(rel, f"at least 2 non-empty options in {list(raw.option_columns.values())}", row=i,
                               field=next(iter(raw.option_columns.values())))
            if a not in options:
                letter = a.rstrip(".):").strip().upper()
                upper = [x.upper() for x in letters]
                if letter not in upper:
                    raise RowError(rel, f"an answer equal to one of the options {options} or their letters "
                                        f"{letters}, got {a!r}", row=i, field=raw.answer_column)
                a = options[upper.index(letter)]
    if card.task_type == "multiple-choice":
        atype, ttype = "multiple-choice", "multiple-choice"
    else:
        atype = _answer_type(rec.get(raw.answer_type_column) if raw.answer_type_column else None, a)
        ttype = atype
    if image is None:
        image, _ = _image(ctx, rec, rel, i, split=image_split)
    sid = sample_id or f"{split}:{rec.get(raw.id_column, i)}"
    return make_row(ctx, sample_id=sid, split=split, image=image, source_path=f"{rel}#row={i}",
                    question=str(q).strip(), answer=a, answer_type=atype, task_type=ttype,
                    text=_text(rec, raw.text_columns) or None, label_set=options, modality=_modality(rec, raw, rel, i))


def _modality(rec: dict, raw, rel: str, i: int) -> str | None:
    """The row's own modality (raw.modality_column) or None (the card's)."""
    if not raw.modality_column:
        return None
    value = rec.get(raw.modality_column)
    if not nonempty(value):
        raise RowError(rel, "a non-empty modality", row=i, field=raw.modality_column)
    return str(value).strip()


# --- csv_images ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Source:
    """One table csv_images reads, and how its rows get their split."""
    path: Path
    rows: list[dict]
    split: str | None = None                   # the whole table's split (split.source=file, file_content=rows)
    row_splits: dict[int, str] | None = None   # row index -> split (file_content=ids / row_indexes); others skipped
    rejects: list[Reject] = dataclasses.field(default_factory=list)


def _read_list(ctx: LoadContext, rel: str) -> tuple[Path, list[tuple[int, str, str | None]]]:
    """(row number, value, problem) of a split list: split.list_column of a CSV, else one value per non-blank line;
    `problem` says what was expected of an entry that cannot be read, None for a good one."""
    spec = ctx.card.raw.split
    if spec.list_column:
        path, rows = read_table(ctx, rel)
        require_columns(path, columns_of(rows), [spec.list_column])
        return path, [(n, str(r.get(spec.list_column) or "").strip(), r.expected if isinstance(r, BadRecord) else None)
                      for n, r in enumerate(rows)]
    path = safe_path(ctx, ctx.dataset_dir, rel, ctx.rel(ctx.dataset_dir), field="split.files")
    if not path.is_file():
        raise DataError(ctx.rel(ctx.dataset_dir) + f"/{rel}", "a split list file")
    return path, [(n, line.strip(), problem) for n, line, problem in text_lines(path) if line.strip()]


def _listed_rows(ctx: LoadContext, path: Path, rows: list[dict]) -> tuple[dict[int, str], list[Reject]]:
    """Row index -> split from the split lists (ids of id_column, or 0-based row numbers of the table)."""
    raw, spec = ctx.card.raw, ctx.card.raw.split
    rel = ctx.rel(path)
    by_id: dict[str, list[int]] = {}
    if spec.file_content == "ids":
        if not raw.id_column:
            raise DataError(rel, "raw.id_column naming the column the split lists' ids refer to", field="id_column")
        require_columns(path, columns_of(rows), [raw.id_column])
        for n, r in enumerate(rows):
            by_id.setdefault(str(r.get(raw.id_column) or "").strip(), []).append(n)
    list_field = spec.list_column or ("id" if spec.file_content == "ids" else "row index")
    row_splits: dict[int, str] = {}
    rejects: list[Reject] = []
    for split, f in split_sources(ctx):
        lpath, values = _read_list(ctx, f)
        lrel = ctx.rel(lpath)
        for n, v, problem in values:
            try:
                if problem:
                    raise RowError(lrel, problem, row=n, field=list_field)
                if spec.file_content == "ids":
                    idx = by_id.get(v)
                    if not idx:
                        raise RowError(lrel, f"an id present in column {raw.id_column!r} of {rel}, got {v!r}", row=n,
                                       field=list_field)
                else:
                    try:
                        idx = [int(v)]
                    except ValueError:
                        raise RowError(lrel, f"a 0-based row number of {rel}, got {v!r}", row=n,
                                       field=list_field) from None
                    if not 0 <= idx[0] < len(rows):
                        raise RowError(lrel, f"a 0-based row number of {rel} (0..{len(rows) - 1}), got {v!r}", row=n,
                                       field=list_field)
            except RowError as e:
                rejects.append(Reject(lrel, str(n), e.field, str(e)))
                continue
            for k in idx:
                if row_splits.get(k, split) != split:   # the first listing is kept, this one is the bad row
                    error = RowError(lrel, f"each row of {rel} in one split only, got {v!r} again (its listing for "
                                           f"{row_splits[k]!r} is kept)", row=n, field=list_field)
                    rejects.append(Reject(lrel, str(n), list_field, str(error)))
                    break
                row_splits[k] = split
    return row_splits, rejects


def _sources(ctx: LoadContext) -> Iterator[_Source]:
    raw, spec = ctx.card.raw, ctx.card.raw.split
    if spec.source == "file" and spec.file_content == "rows":
        for split, f in split_sources(ctx):
            path, rows = read_table(ctx, f)
            yield _Source(path, rows, split=split)
        return
    path, rows = read_table(ctx, raw.table)
    if spec.source == "file":
        row_splits, rejects = _listed_rows(ctx, path, rows)
        yield _Source(path, rows, row_splits=row_splits, rejects=rejects)
    else:
        yield _Source(path, rows)


def _needed_columns(ctx: LoadContext) -> list[str]:
    raw, card = ctx.card.raw, ctx.card
    needed = [raw.id_column, *raw.filters]
    needed += _template_fields(raw.image_template) if raw.image_template else [raw.image_column]
    if card.task_kind == "vqa":
        needed += [raw.question_column, raw.answer_column, raw.answer_type_column, *raw.option_columns.values(),
                   *raw.text_columns]
    else:
        needed += [raw.label_column, *raw.extra_label_columns, *raw.onehot_columns]
    if raw.split.source == "column":
        needed.append(raw.split.column)
    return needed


def load_csv_images(ctx: LoadContext) -> Iterator[dict | Reject]:
    """Diagnosis rows (label column, separator / list-literal multi-label, or one-hot columns) or VQA rows (question,
    answer, options) from CSV / JSON tables plus image files; see the module docstring for the split layouts."""
    raw, card = ctx.card.raw, ctx.card
    per_file = raw.split.source == "file" and raw.split.file_content == "rows"
    for src in _sources(ctx):
        rel = ctx.rel(src.path)
        require_columns(src.path, columns_of(src.rows), _needed_columns(ctx))
        yield from src.rejects
        units: dict[object, list[tuple[int, dict, str | None]]] = {}
        for i, rec in filtered(src.rows, raw.filters):
            split = src.split
            if src.row_splits is not None:
                split = src.row_splits.get(i)
                if split is None:   # listed in no split file: not part of the dataset's splits
                    continue
            key = str(rec.get(raw.id_column) or "").strip() if raw.group_by_id else i
            key = key or i   # an id-less row stays alone (and is rejected below)
            units.setdefault(key, []).append((i, rec, split))
        for unit in units.values():
            i, rec, split = unit[0]
            try:
                for j, r, _ in unit:   # a record that cannot be read spoils the sample it belongs to
                    check_record(r, rel, j)
                if raw.group_by_id and not nonempty(rec.get(raw.id_column)):
                    raise RowError(rel, "an id to group rows on", row=i, field=raw.id_column)
                sid = str(rec.get(raw.id_column) or i)
                if per_file:   # ids (or row numbers) may repeat across the split files
                    sid = f"{split}:{sid}"
                if card.task_kind == "vqa":
                    s = split or _raw_split(ctx, rec, sid, rel, i)
                    yield _vqa_row(ctx, rec, i, rel, carve_val(raw.split, s, sid), sample_id=sid, image_split=s)
                    continue
                labels = []
                for j, r, _ in unit:
                    labels += _row_labels(ctx, r, rel, j)
                labels = finish_labels(ctx, labels, rel, i, raw.label_column or "one-hot columns")
                s = split or _raw_split(ctx, rec, sid, rel, i)
                for j, r, sj in unit[1:]:
                    if (sj or _raw_split(ctx, r, sid, rel, j)) != s:
                        raise RowError(rel, f"the split {s!r} of the other rows with {raw.id_column} {sid!r}", row=j,
                                       field=raw.split.column or "split")
                image, _ = _image(ctx, rec, rel, i, split=s)
                yield make_row(ctx, sample_id=sid, split=carve_val(raw.split, s, sid), image=image,
                               source_path=f"{rel}#row={i}", labels=labels)
            except RowError as e:
                yield Reject(rel, str(e.row if e.row is not None else i), e.field, str(e))


# --- report tables and case studies -------------------------------------------------------------------------------

def _text(rec: dict, columns: list[str]) -> str:
    parts = []
    for c in columns:
        v = rec.get(c)
        if nonempty(v):
            parts.append(f"{c.capitalize()}: {str(v).strip()}" if len(columns) > 1 else str(v).strip())
    return "\n".join(parts)


def load_report_table(ctx: LoadContext) -> Iterator[dict | Reject]:
    """Report rows (IU-Xray style): a report CSV joined to a projections CSV that names the image file; the split
    comes from a JSON split file (R2Gen annotation.json), else the split.fallback / random / column split."""
    raw = ctx.card.raw
    path, rows = read_table(ctx, raw.table)
    rel = ctx.rel(path)
    require_columns(path, columns_of(rows), [raw.id_column, *raw.text_columns])
    listed: dict[str, str] | None = None   # id -> split from the split file
    fallback = raw.split.source == "file" and raw.split.fallback == "random" and not split_file_present(ctx)
    if fallback:
        warn(fallback_note(ctx))
    elif raw.split.source == "file":
        listed, rejects = json_id_splits(ctx, {str(r.get(raw.id_column)) for _, r in filtered(rows, raw.filters)})
        yield from rejects
    images: dict[str, dict] = {}
    if raw.join_table:
        jpath, jrows = read_table(ctx, raw.join_table)
        require_columns(jpath, columns_of(jrows), [raw.join_on, raw.image_column, *raw.join_filters])
        jrel = ctx.rel(jpath)
        for n, j in filtered(jrows, raw.join_filters):
            try:
                check_record(j, jrel, n)
            except RowError as e:
                yield Reject(jrel, str(n), e.field, str(e))
                continue
            images.setdefault(str(j.get(raw.join_on)), j)
    for i, rec in filtered(rows, raw.filters):
        sid = str(rec.get(raw.id_column))
        unreadable = isinstance(rec, BadRecord) and not rec.readable   # its id is unknown: always reported
        if listed is not None and sid not in listed and not unreadable:   # not in the split file: not in the splits
            continue
        try:
            check_record(rec, rel, i)
            text = _text(rec, raw.text_columns)
            if not text:
                raise RowError(rel, f"report text in {raw.text_columns}", row=i, field=raw.text_columns[0])
            img_rec = images.get(sid) if raw.join_table else rec
            if img_rec is None:
                raise RowError(rel, f"a matching row in {raw.join_table} with {raw.join_filters}", row=i,
                               field=raw.join_on)
            image, _ = _image(ctx, img_rec, rel, i)
            if listed is not None:
                split = carve_val(raw.split, listed[sid], sid)
            elif fallback:
                split = carve_val(raw.split, random_split(raw.split, sid), sid)
            else:
                split = _split_of(ctx, rec, sid, rel, i)
            yield make_row(ctx, sample_id=sid, split=split, image=image, source_path=f"{rel}#row={i}", text=text)
        except RowError as e:
            yield Reject(rel, str(i), e.field, str(e))


def load_case_studies(ctx: LoadContext) -> Iterator[dict | Reject]:
    """OpenI-style case studies: one record per image with title and caption text."""
    raw = ctx.card.raw
    path, rows = read_table(ctx, raw.table)
    rel = ctx.rel(path)
    require_columns(path, columns_of(rows), [raw.id_column, raw.image_column, *raw.text_columns])
    for i, rec in filtered(rows, raw.filters):
        try:
            check_record(rec, rel, i)
            sid = str(rec.get(raw.id_column))
            text = _text(rec, raw.text_columns)
            if not text:
                raise RowError(rel, f"case text in {raw.text_columns}", row=i, field=raw.text_columns[0])
            image, _ = _image(ctx, rec, rel, i)
            yield make_row(ctx, sample_id=sid, split=_split_of(ctx, rec, sid, rel, i), image=image,
                           source_path=f"{rel}#row={i}", text=text)
        except RowError as e:
            yield Reject(rel, str(i), e.field, str(e))
