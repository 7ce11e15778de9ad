"""The `instructions` table: one (image, instruction, answer) row of the MedDr fine-tuning corpus (SPEC §2, §4).

    from data_contracts.instructions import INSTRUCTIONS_SCHEMA, validate_instructions
    OMP_NUM_THREADS=1 pytest -q tests/test_finetune.py

Written by tasks/generalist/corpus.py as Parquet shards, read by tasks/generalist/finetune/data.py. The pyarrow
schema fixes the physical layout (column order is the corpus writer's); the pandera (polars backend) model checks
meaning.
"""
from __future__ import annotations

import polars as pl
import pyarrow as pa
from pandera.polars import DataFrameModel, Field

from data_contracts.errors import ContractError

SPLITS = ("train", "val")  # benchmark test splits never enter the corpus
# collaboration: GSCo-format diagnosis instructions (a corpus option, tasks/generalist/collaboration.py)
TASK_KINDS = ("diagnosis", "vqa", "report", "dgb", "des", "collaboration")

INSTRUCTIONS_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("image", pa.binary(), nullable=False),             # PNG or JPEG bytes
    pa.field("instruction", pa.string(), nullable=False),       # Fig. A3 template, without chat markup
    pa.field("answer", pa.string(), nullable=False),
    pa.field("source_dataset", pa.string(), nullable=False),
    pa.field("task_kind", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
], metadata={"gsco.contract": "instructions", "gsco.schema_version": "1"})

COLUMNS = tuple(INSTRUCTIONS_SCHEMA.names)
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


class InstructionsModel(DataFrameModel):
    """What an instruction row means; `image_ok` stands in for `image` (pandera cannot report binary failures)."""

    sample_id: str = Field(unique=True, str_length={"min_value": 1})
    image_ok: bool = Field(isin=[True])
    instruction: str = Field(str_matches=r"\S")
    answer: str = Field(str_matches=r"\S")
    source_dataset: str = Field(str_length={"min_value": 1})
    task_kind: str = Field(isin=list(TASK_KINDS))
    split: str = Field(isin=list(SPLITS))

    class Config:
        strict = True
        coerce = False


def _validation_view(df: pl.DataFrame, check_images: bool) -> pl.DataFrame:
    """The frame pandera checks: `image` replaced by whether it starts like a PNG or JPEG file (cheap, no decode)."""
    if check_images:
        ok = pl.any_horizontal([pl.col("image").bin.starts_with(m) for m in _IMAGE_MAGIC]).fill_null(False)
    else:
        ok = pl.lit(True)
    return df.select(pl.col("sample_id"), ok.alias("image_ok"), *[pl.col(c) for c in COLUMNS[2:]])


def validate_instructions(df: pl.DataFrame, where: str = "<table>", check_images: bool = True) -> None:
    """Raise ContractError naming `where`, the row's sample id, the field and what was expected; None when valid.

    `check_images=False` checks the text columns only (the image column may then be absent): readers that decode
    every image anyway skip reading them twice.
    """
    import pandera.errors as pe

    missing = [c for c in COLUMNS if c not in df.columns and (check_images or c != "image")]
    if missing:
        raise ContractError(f"{where}: instructions table lacks column(s) {missing}")
    try:
        InstructionsModel.validate(_validation_view(df, check_images), lazy=True)
    except pe.SchemaErrors as err:
        fc = err.failure_cases
        fc = fc if isinstance(fc, pl.DataFrame) else pl.from_pandas(fc)
        problems = []
        for rec in fc.iter_rows(named=True):
            idx, field = rec.get("index"), rec.get("column") or "<row>"
            field = "image" if field == "image_ok" else field
            expected = "PNG or JPEG bytes" if field == "image" else str(rec.get("check"))
            sid = df["sample_id"][int(idx)] if idx is not None and 0 <= int(idx) < df.height else None
            problems.append(f"row {idx} (sample {sid}): field '{field}': expected {expected}, "
                            f"got {rec.get('failure_case')!r}")
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ContractError(f"{where}: {len(problems)} instructions contract violation(s):\n  {shown}{more}",
                            problems=problems) from None
