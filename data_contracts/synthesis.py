"""The `synthesis` table: generated DGB reports and DES descriptions, with the prompt, generator and settings.

    from data_contracts.synthesis import SYNTHESIS_SCHEMA, validate_synthesis
"""
from __future__ import annotations

import pandera.polars as pa
import polars as pl
import pyarrow as pa_arrow

from data_contracts.errors import ContractError

SYNTHESIS_KINDS = ("dgb", "des")

SYNTHESIS_SCHEMA = pa_arrow.schema([
    pa_arrow.field("sample_id", pa_arrow.string(), nullable=False),         # "<kind>:<source sample id>"
    pa_arrow.field("source_sample_id", pa_arrow.string(), nullable=False),
    pa_arrow.field("dataset", pa_arrow.string(), nullable=False),
    pa_arrow.field("split", pa_arrow.string(), nullable=False),
    pa_arrow.field("kind", pa_arrow.string(), nullable=False),
    pa_arrow.field("modality", pa_arrow.string(), nullable=False),
    pa_arrow.field("image", pa_arrow.binary(), nullable=False),
    pa_arrow.field("image_format", pa_arrow.string(), nullable=False),
    pa_arrow.field("prompt", pa_arrow.string(), nullable=False),
    pa_arrow.field("raw_output", pa_arrow.string(), nullable=False),        # what the generator returned
    pa_arrow.field("output", pa_arrow.string(), nullable=False),            # after the post-filter (DES)
    pa_arrow.field("removals", pa_arrow.int32(), nullable=False),           # identifying spans removed
    pa_arrow.field("removed_kinds", pa_arrow.list_(pa_arrow.string()), nullable=False),
    pa_arrow.field("generator", pa_arrow.string(), nullable=False),         # generator id incl. weights digest
    pa_arrow.field("settings", pa_arrow.string(), nullable=False),          # generation settings, JSON
], metadata={"gsco.contract": "synthesis", "gsco.schema_version": "1"})


class SynthesisModel(pa.DataFrameModel):
    sample_id: str = pa.Field(unique=True, str_length={"min_value": 1})
    source_sample_id: str = pa.Field(str_length={"min_value": 1})
    dataset: str = pa.Field()
    split: str = pa.Field(isin=["train", "val", "test"])
    kind: str = pa.Field(isin=list(SYNTHESIS_KINDS))
    modality: str = pa.Field()
    image_format: str = pa.Field(isin=["PNG", "JPEG"])
    prompt: str = pa.Field(str_length={"min_value": 1})
    raw_output: str = pa.Field()
    output: str = pa.Field()
    removals: pl.Int32 = pa.Field(ge=0)
    removed_kinds: pl.List(pl.Utf8) = pa.Field()
    generator: str = pa.Field(str_length={"min_value": 1})
    settings: str = pa.Field(str_length={"min_value": 2})

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
