"""The canonical `samples` table: one row per image, question or report, for every dataset and split.

    from data_contracts.samples import SAMPLES_SCHEMA, validate_samples

The pyarrow schema fixes the physical layout; the pandera (polars backend) model checks meaning. Readers and writers go
through `data_contracts.io`, which calls `validate_samples` on every table it writes or reads.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
from pandera.polars import DataFrameModel, Field, PolarsData, dataframe_check
from PIL import Image

from data_contracts.layout import SPLITS

SCHEMA_VERSION = 1
TASK_KINDS = ("diagnosis", "vqa", "report", "description")
TASK_TYPES = ("binary", "multiclass", "multilabel", "open", "closed", "multiple-choice")
IMAGE_FORMATS = ("PNG", "JPEG")

SAMPLES_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("task_kind", pa.string(), nullable=False),
    pa.field("task_type", pa.string(), nullable=False),
    pa.field("modality", pa.string(), nullable=False),
    pa.field("image", pa.binary(), nullable=False),
    pa.field("image_format", pa.string(), nullable=False),
    pa.field("image_width", pa.int32(), nullable=False),
    pa.field("image_height", pa.int32(), nullable=False),
    pa.field("labels", pa.list_(pa.string()), nullable=False),
    pa.field("label_set", pa.list_(pa.string()), nullable=False),
    pa.field("question", pa.string(), nullable=True),
    pa.field("answer", pa.string(), nullable=True),
    pa.field("answer_type", pa.string(), nullable=True),
    pa.field("text", pa.string(), nullable=True),
    pa.field("source_path", pa.string(), nullable=False),
], metadata={"gsco.contract": "samples", "gsco.schema_version": str(SCHEMA_VERSION)})

COLUMNS = tuple(SAMPLES_SCHEMA.names)


def image_info(data: bytes) -> tuple[str, int, int]:
    """Return (format, width, height) of encoded image bytes after a full decode; raises ValueError if undecodable."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.load()  # a truncated file fails here, not at open
            w, h = im.size
    except Exception as e:
        raise ValueError(f"image does not decode ({type(e).__name__}: {e})") from None
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format {fmt!r}, expected one of {IMAGE_FORMATS}")
    return fmt, w, h


def _images_decode(df: pl.DataFrame) -> pl.Series:
    out = []
    for data, fmt, w, h in zip(df["image"], df["image_format"], df["image_width"], df["image_height"]):
        try:
            out.append(image_info(data) == (fmt, w, h))
        except ValueError:
            out.append(False)
    return pl.Series(out, dtype=pl.Boolean)


class SamplesModel(DataFrameModel):
    """What a samples row means; every check is element-wise so failure cases point at rows."""

    sample_id: str = Field(unique=True, str_length={"min_value": 1})
    dataset: str = Field(str_length={"min_value": 1})
    split: str = Field(isin=list(SPLITS))
    task_kind: str = Field(isin=list(TASK_KINDS))
    task_type: str = Field(isin=list(TASK_TYPES))
    modality: str = Field(str_length={"min_value": 1})
    image_decodes: bool = Field(isin=[True])  # stands in for `image`: pandera cannot report binary failure cases
    image_format: str = Field(isin=list(IMAGE_FORMATS))
    image_width: pl.Int32 = Field(gt=0)
    image_height: pl.Int32 = Field(gt=0)
    labels: pl.List(pl.Utf8) = Field()
    label_set: pl.List(pl.Utf8) = Field()
    question: str = Field(nullable=True)
    answer: str = Field(nullable=True)
    answer_type: str = Field(nullable=True)
    text: str = Field(nullable=True)
    source_path: str = Field(str_length={"min_value": 1})

    class Config:
        strict = True
        coerce = False

    @dataframe_check(element_wise=False, error="labels must be non-empty and within label_set (diagnosis rows)")
    def labels_in_label_set(cls, data: PolarsData) -> pl.LazyFrame:
        diag = pl.col("task_kind") == "diagnosis"
        within = pl.col("labels").list.set_difference(pl.col("label_set")).list.len() == 0
        nonempty = pl.col("labels").list.len() > 0
        single = pl.col("task_type").is_in(["binary", "multiclass"]).not_() | (pl.col("labels").list.len() == 1)
        return data.lazyframe.select(((~diag) | (within & nonempty & single)).alias("ok"))

    @dataframe_check(error="vqa rows need a non-empty question and answer")
    def vqa_has_qa(cls, data: PolarsData) -> pl.LazyFrame:
        vqa = pl.col("task_kind") == "vqa"
        ok = (pl.col("question").str.strip_chars().str.len_chars().fill_null(0) > 0) & (
            pl.col("answer").str.strip_chars().str.len_chars().fill_null(0) > 0)
        return data.lazyframe.select(((~vqa) | ok).alias("ok"))

    @dataframe_check(error="report/description rows need non-empty text")
    def text_present(cls, data: PolarsData) -> pl.LazyFrame:
        needs = pl.col("task_kind").is_in(["report", "description"])
        ok = pl.col("text").str.strip_chars().str.len_chars().fill_null(0) > 0
        return data.lazyframe.select(((~needs) | ok).alias("ok"))



def _validation_view(df: pl.DataFrame) -> pl.DataFrame:
    """The frame pandera checks: `image` replaced by whether it decodes to the stated format and size."""
    return df.with_columns(image_decodes=_images_decode(df)).drop("image").select(
        [c if c != "image" else "image_decodes" for c in COLUMNS])


@dataclass(frozen=True)
class RowProblem:
    """One failed check on one row: where (source path, row index, field) and what was expected."""
    row: int | None
    sample_id: str | None
    source_path: str | None
    field: str
    expected: str

    def __str__(self) -> str:
        where = self.source_path or "<table>"
        row = f" row {self.row}" if self.row is not None else ""
        sid = f" (sample {self.sample_id})" if self.sample_id else ""
        return f"{where}{row}{sid}: field '{self.field}': expected {self.expected}"


def find_problems(df: pl.DataFrame) -> list[RowProblem]:
    """Every check failure of `df` against SamplesModel, mapped to rows; empty when the table is valid."""
    import pandera.errors as pe

    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        return [RowProblem(None, None, None, c, "column present in the samples table") for c in missing]
    try:
        SamplesModel.validate(_validation_view(df), lazy=True)
        return []
    except pe.SchemaErrors as err:
        problems = []
        fc = err.failure_cases
        fc = fc if isinstance(fc, pl.DataFrame) else pl.from_pandas(fc)
        for rec in fc.iter_rows(named=True):
            idx = rec.get("index")
            field = rec.get("column") or rec.get("check") or "<table>"
            expected = str(rec.get("check"))
            if field == "image_decodes":
                field, expected = "image", "bytes that decode to image_format at image_width x image_height"
            if field == "SamplesModel" or field is None:
                field = _check_field(expected)
            if idx is not None and 0 <= int(idx) < df.height:
                row = df.row(int(idx), named=True)
                problems.append(RowProblem(int(idx), row["sample_id"], row["source_path"], field, expected))
            else:
                problems.append(RowProblem(None, None, None, field, f"{expected} (got {rec.get('failure_case')!r})"))
        return problems


def _check_field(check: str) -> str:
    for name in ("labels", "question", "text", "image"):
        if name in check:
            return name
    return "<row>"


def validate_samples(df: pl.DataFrame, where: str = "<table>") -> None:
    """Raise ContractError listing (up to 20) problems of `df`; returns None when it is a valid samples table."""
    from data_contracts.errors import ContractError

    problems = find_problems(df)
    if problems:
        shown = "\n  ".join(str(p) for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ContractError(f"{where}: {len(problems)} samples contract violation(s):\n  {shown}{more}",
                            problems=problems)
