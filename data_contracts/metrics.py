"""The `metrics` table: one row per (dataset, method, metric) of a benchmark, with its 95% bootstrap CI.

    from data_contracts.metrics import METRICS_SCHEMA, group_metric, split_group_metric

Written by the evaluation stage (evaluation/metrics.parquet), read by the report (tasks/evaluation/report*.py) and
logged to MLflow. `value`, `ci_low` and `ci_high` are null (never 0) when a metric is undefined or not computed; `note`
says why. `headline` names the dataset's headline metric (SPEC §8); `p_value_vs_best` is the paired bootstrap test of
the best method against this one on the headline metric.

A metric scored on a subgroup of the test set (OmniMedVQA: one modality, Fig. 3(b)) is named `<metric>[<group>]`
(`group_metric`); its `n` and `parse_failure_rate` are the subgroup's. Every other row of a (dataset, method) carries
the same parse-failure rate: the method's over the whole test set.
"""
from __future__ import annotations

import polars as pl

METRICS_SCHEMA = {"dataset": pl.Utf8, "domain": pl.Utf8, "task_type": pl.Utf8, "method": pl.Utf8, "metric": pl.Utf8,
                  "value": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "n": pl.Int64,
                  "parse_failure_rate": pl.Float64, "p_value_vs_best": pl.Float64, "headline": pl.Utf8,
                  "note": pl.Utf8}
KEY_COLUMNS = ("dataset", "domain", "task_type", "method", "metric", "headline")
FLOAT_COLUMNS = ("value", "ci_low", "ci_high", "parse_failure_rate", "p_value_vs_best")
REQUIRED_COLUMNS = (*KEY_COLUMNS, "value", "ci_low", "ci_high", "n", "parse_failure_rate", "p_value_vs_best")


def group_metric(metric: str, group: str) -> str:
    """The name of `metric` scored on one subgroup: 'accuracy[CT]'."""
    if not isinstance(group, str) or not group.strip() or "[" in group or "]" in group:
        raise ValueError(f"group: expected a non-empty name without brackets, got {group!r}")
    return f"{metric}[{group}]"


def split_group_metric(name: str) -> tuple[str, str | None]:
    """('accuracy', 'CT') from 'accuracy[CT]'; (name, None) for a metric over the whole test set."""
    if name.endswith("]") and "[" in name:
        base, group = name[:-1].split("[", 1)
        return base, group
    return name, None
