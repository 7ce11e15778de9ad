"""The `instructions` table: one (image ref, instruction, answer) row of the MedDr fine-tuning corpus (SPEC §2, §4).

    from data_contracts.instructions import INSTRUCTIONS_SCHEMA, image_digest, validate_instructions
    OMP_NUM_THREADS=1 pytest -q tests/test_finetune.py tests/test_corpus.py

Written by tasks/generalist/corpus.py as Parquet shards, read by tasks/generalist/finetune/data.py. A row does not
hold its image: it refers to one, as sample `image_sample_id` of the samples table `<tables>/<source_dataset>/<split>`
(data_contracts/io.py), whose encoded bytes have the content digest `image_digest` (`image_digest()` below). Readers
resolve the reference from the samples tables and check the digest of the bytes they find, so a table re-ingested
with other images since the corpus was built fails, naming the row, instead of training on the wrong image. The pyarrow
schema fixes the physical layout (column order is the corpus writer's); the pandera (polars backend) model checks
meaning.
"""
from __future__ import annotations

import hashlib

import polars as pl
import pyarrow as pa
from pandera.polars import DataFrameModel, Field

from data_contracts.errors import ContractError

SPLITS = ("train", "val")  # benchmark test splits never enter the corpus
# collaboration: GSCo-format diagnosis instructions (a corpus option, tasks/generalist/collaboration.py)
TASK_KINDS = ("diagnosis", "vqa", "report", "dgb", "des", "collaboration")
SCHEMA_VERSION = 2   # 1: the image bytes inline (`image`); 2: a reference to the samples tables

INSTRUCTIONS_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("image_sample_id", pa.string(), nullable=False),   # the image: this sample of <source_dataset>/<split>
    pa.field("image_digest", pa.string(), nullable=False),      # image_digest() of that sample's encoded bytes
    pa.field("instruction", pa.string(), nullable=False),       # Fig. A3 template, without chat markup
    pa.field("answer", pa.string(), nullable=False),
    pa.field("source_dataset", pa.string(), nullable=False),
    pa.field("task_kind", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
], metadata={"gsco.contract": "instructions", "gsco.schema_version": str(SCHEMA_VERSION)})

COLUMNS = tuple(INSTRUCTIONS_SCHEMA.names)
REFERENCE = ("source_dataset", "split", "image_sample_id")   # where a row's image is, in the samples tables
DIGEST_PATTERN = r"^[0-9a-f]{32}$"


def image_digest(data: bytes | memoryview) -> str:
    """The content digest of encoded image bytes: sha256, first 128 bits in hex (the corpus's content key)."""
    return hashlib.sha256(data).hexdigest()[:32]


class InstructionsModel(DataFrameModel):
    """What an instruction row means."""

    sample_id: str = Field(unique=True, str_length={"min_value": 1})
    image_sample_id: str = Field(str_length={"min_value": 1})
    image_digest: str = Field(str_matches=DIGEST_PATTERN)
    instruction: str = Field(str_matches=r"\S")
    answer: str = Field(str_matches=r"\S")
    source_dataset: str = Field(str_length={"min_value": 1})
    task_kind: str = Field(isin=list(TASK_KINDS))
    split: str = Field(isin=list(SPLITS))

    class Config:
        strict = True
        coerce = False


def validate_instructions(df: pl.DataFrame, where: str = "<table>") -> None:
    """Raise ContractError naming `where`, the row's sample id, the field and what was expected; None when valid."""
    import pandera.errors as pe

    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ContractError(f"{where}: instructions table lacks column(s) {missing}")
    try:
        InstructionsModel.validate(df.select(COLUMNS), lazy=True)
    except pe.SchemaErrors as err:
        fc = err.failure_cases
        fc = fc if isinstance(fc, pl.DataFrame) else pl.from_pandas(fc)
        problems = []
        for rec in fc.iter_rows(named=True):
            idx, field = rec.get("index"), rec.get("column") or "<row>"
            expected = "a 32-digit lowercase hex content digest" if field == "image_digest" else str(rec.get("check"))
            sid = df["sample_id"][int(idx)] if idx is not None and 0 <= int(idx) < df.height else None
            problems.append(f"row {idx} (sample {sid}): field '{field}': expected {expected}, "
                            f"got {rec.get('failure_case')!r}")
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ContractError(f"{where}: {len(problems)} instructions contract violation(s):\n  {shown}{more}",
                            problems=problems) from None
