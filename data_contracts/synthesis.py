"""The `synthesis` table: generated DGB reports and DES descriptions, with the prompt, generalist and settings.

    from data_contracts.synthesis import SYNTHESIS_SCHEMA, validate_synthesis
"""
from __future__ import annotations

import polars as pl
import pyarrow as pa
from pandera.polars import DataFrameModel, Field

from data_contracts.errors import ContractError

SYNTHESIS_KINDS = ("dgb", "des")

SYNTHESIS_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),         # "<kind>:<source sample id>"
    pa.field("source_sample_id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("modality", pa.string(), nullable=False),
    pa.field("image", pa.binary(), nullable=False),
    pa.field("image_format", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("raw_output", pa.string(), nullable=False),        # what the generalist returned
    pa.field("output", pa.string(), nullable=False),            # after the post-filter (DES)
    pa.field("removals", pa.int32(), nullable=False),           # identifying spans removed
    pa.field("removed_kinds", pa.list_(pa.string()), nullable=False),
    pa.field("generalist", pa.string(), nullable=False),        # generalist id incl. weights digest
    pa.field("settings", pa.string(), nullable=False),          # generation settings, JSON
], metadata={"gsco.contract": "synthesis", "gsco.schema_version": "1"})


class SynthesisModel(DataFrameModel):
    sample_id: str = Field(unique=True, str_length={"min_value": 1})
    source_sample_id: str = Field(str_length={"min_value": 1})
    dataset: str = Field()
    split: str = Field(isin=["train", "val", "test"])
    kind: str = Field(isin=list(SYNTHESIS_KINDS))
    modality: str = Field()
    image_format: str = Field(isin=["PNG", "JPEG"])
    prompt: str = Field(str_length={"min_value": 1})
    raw_output: str = Field()
    output: str = Field()
    removals: pl.Int32 = Field(ge=0)
    removed_kinds: pl.List(pl.Utf8) = Field()
    generalist: str = Field(str_length={"min_value": 1})
    settings: str = Field(str_length={"min_value": 2})

    class Config:
        strict = "filter"


def validate_synthesis(df: pl.DataFrame, where: str) -> None:
    """Raise ContractError naming the table and the failed checks; None when valid."""
    import pandera.errors as pe

    missing = [c for c in SYNTHESIS_SCHEMA.names if c not in df.columns]
    if missing:
        raise ContractError(f"{where}: synthesis table lacks column(s) {missing}")
    try:
        SynthesisModel.validate(df.drop("image"), lazy=True)
    except pe.SchemaErrors as e:
        fc = e.failure_cases
        rows = fc.head(10).to_dicts() if hasattr(fc, "to_dicts") else []
        raise ContractError(f"{where}: synthesis contract violation(s): {rows}") from None
