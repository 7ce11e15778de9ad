"""Scoring a benchmark's predictions table: every metric of every (dataset, method) with its 95% bootstrap CI and the
paired P-value against the best method (SPEC §8), as the `metrics` table (data_contracts/metrics.py).

    metrics = metrics_from_predictions(predictions, cards, n_boot=1000, seed=0)     # pure: no model runs
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from data_contracts.cards import DataCard
from data_contracts.io import digest_of_hashes, row_hashes
from data_contracts.metrics import METRICS_SCHEMA
from data_contracts.predictions import PREDICTIONS_SCHEMA
from tasks.evaluation.bootstrap import DIAGNOSIS_METRICS, MEAN, N_BOOT, Estimate, compare_to_best, estimate
from tasks.evaluation.metrics import (HEADLINE, clean_str, diagnosis_scores, label_indicator, report_scores,
                                      vqa_scores)

VQA_HEADLINE = "F1"


REPORT_HEADLINE = "ROUGE-L"


def _metric_row(card: DataCard, method: str, metric: str, est: Estimate, n: int, headline: str,
                parse_failure_rate: float | None = None) -> dict:
    return {"dataset": card.name, "domain": card.domain or "", "task_type": card.task_type, "method": method,
            "metric": metric, "value": est.point, "ci_low": est.lo, "ci_high": est.hi, "n": n,
            "parse_failure_rate": parse_failure_rate, "p_value_vs_best": None, "headline": headline,
            "note": est.note}


def _diagnosis_metrics(df: pl.DataFrame, card: DataCard, n_boot: int, seed: int) -> list[dict]:
    multilabel = card.task_type == "multilabel"
    headline = HEADLINE[card.task_type]
    out, arms = [], {}
    for method in df["method"].unique(maintain_order=True).to_list():
        d = df.filter(pl.col("method") == method).sort("sample_id")
        failed = d["parse_failed"].to_list()
        scores = diagnosis_scores(d["truth"].to_list(), d["prediction"].to_list(), card.labels, multilabel,
                                    failed=failed, n=n_boot, seed=seed)
        pfr = scores.pop("parse_failure_rate").point
        for metric, est in scores.items():
            out.append(_metric_row(card, method, metric, est, d.height, headline, pfr))
        arms[method] = (label_indicator(d["truth"].to_list(), card.labels, multilabel),
                        label_indicator(d["prediction"].to_list(), card.labels, multilabel))
    if len(arms) > 1:
        best, pvals = compare_to_best(DIAGNOSIS_METRICS[headline], arms, n=n_boot, seed=seed)
        for r in out:
            if r["metric"] == headline:
                r["p_value_vs_best"] = None if r["method"] == best else pvals.get(r["method"])
    return out


def _vqa_metrics(df: pl.DataFrame, card: DataCard, n_boot: int, seed: int) -> list[dict]:
    out = []
    for method in df["method"].unique(maintain_order=True).to_list():
        d = df.filter(pl.col("method") == method)
        preds = [p[0] for p in d["prediction"].to_list()]
        truth = [t[0] for t in d["truth"].to_list()]
        if card.task_type == "multiple-choice":
            est = estimate(MEAN, np.array([clean_str(p) == clean_str(t) for p, t in zip(preds, truth)],
                                              dtype=float), n=n_boot, seed=seed)
            out.append(_metric_row(card, method, "accuracy", est, d.height, "accuracy"))
            continue
        for metric, est in vqa_scores(preds, truth, n=n_boot, seed=seed).items():
            out.append(_metric_row(card, method, metric, est, d.height, VQA_HEADLINE))
    return out


def _report_metrics(df: pl.DataFrame, card: DataCard, n_boot: int, seed: int) -> list[dict]:
    out = []
    for method in df["method"].unique(maintain_order=True).to_list():
        d = df.filter(pl.col("method") == method)
        scores = report_scores([p[0] for p in d["prediction"].to_list()], [t[0] for t in d["truth"].to_list()],
                                 n=n_boot, seed=seed)
        for metric, est in scores.items():
            out.append(_metric_row(card, method, metric, est, d.height, REPORT_HEADLINE))
    return out


def metrics_from_predictions(preds: pl.DataFrame, cards: Mapping[str, DataCard], n_boot: int = N_BOOT,
                             seed: int = 0) -> pl.DataFrame:
    """Every metric with its 95% bootstrap CI (and paired P-values vs the best arm) from a predictions table."""
    rows: list[dict] = []
    for dataset in preds["dataset"].unique(maintain_order=True).to_list():
        d = preds.filter(pl.col("dataset") == dataset)
        card = cards[dataset]
        kind = d["task_kind"][0]
        fn = {"diagnosis": _diagnosis_metrics, "vqa": _vqa_metrics, "report": _report_metrics}[kind]
        rows += fn(d, card, n_boot, seed)
    return pl.DataFrame(rows, schema=METRICS_SCHEMA)


def predictions_digest(paths: Sequence[str]) -> str:
    """Content digest of the per-sample predictions of a benchmark (all datasets)."""
    hashes = []
    for p in paths:
        df = pl.read_parquet(p)
        hashes += row_hashes(df, PREDICTIONS_SCHEMA.names)
    return digest_of_hashes(hashes, "predictions")
