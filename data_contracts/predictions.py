"""The `predictions` table: one row per (dataset, method, test sample), enough to recompute every metric offline.

    from data_contracts.predictions import PREDICTIONS_SCHEMA, validate_predictions
"""
from __future__ import annotations

import pyarrow as pa
import polars as pl

from data_contracts.errors import ContractError

PREDICTIONS_SCHEMA = pa.schema([
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("method", pa.string(), nullable=False),          # MedDr, MedDr+MoED, MedDr+RAD, GSCo, Voting, specialist:<a>
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("task_kind", pa.string(), nullable=False),       # diagnosis | vqa | report
    pa.field("truth", pa.list_(pa.string()), nullable=False),  # diagnosis: label names; vqa/report: [reference text]
    pa.field("prediction", pa.list_(pa.string()), nullable=False),  # diagnosis: parsed label names (empty = failed)
    pa.field("answer_text", pa.string(), nullable=True),      # the generalist's raw answer (None for specialists)
    pa.field("parse_failed", pa.bool_(), nullable=False),
    pa.field("answer_type", pa.string(), nullable=True),      # vqa: open / closed
    pa.field("prompt", pa.string(), nullable=True),
    pa.field("group", pa.string(), nullable=True),            # a subgroup scored apart (OmniMedVQA: modality)
], metadata={"gsco.contract": "predictions", "gsco.schema_version": "2"})


def validate_predictions(df: pl.DataFrame, where: str) -> None:
    """Raise ContractError naming the table when columns are missing or (dataset, method, sample_id) repeats."""
    missing = [c for c in PREDICTIONS_SCHEMA.names if c not in df.columns]
    if missing:
        raise ContractError(f"{where}: predictions table lacks column(s) {missing}")
    dup = df.group_by("dataset", "method", "sample_id").len().filter(pl.col("len") > 1)
    if dup.height:
        r = dup.row(0, named=True)
        raise ContractError(f"{where}: duplicate prediction for dataset {r['dataset']!r}, method {r['method']!r}, "
                            f"sample {r['sample_id']!r}")
    bad = df.filter(~pl.col("task_kind").is_in(["diagnosis", "vqa", "report"]))
    if bad.height:
        raise ContractError(f"{where}: task_kind must be diagnosis/vqa/report, got {bad['task_kind'][0]!r}")
