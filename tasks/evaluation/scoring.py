"""Scoring a benchmark's predictions table: every metric of every (dataset, method) with its 95% bootstrap CI and the
paired P-value of the best method against each other one on the headline metric (SPEC §8), as the `metrics` table
(data_contracts/metrics.py).

    metrics = metrics_from_predictions(predictions, cards, n_boot=1000, seed=0)     # pure: no model runs
    OMP_NUM_THREADS=1 pytest -q tests/test_scoring.py

Headline metric per task: diagnosis accuracy (binary) or macro-F1 (tasks/evaluation/metrics.py HEADLINE); open VQA
the per-sample token F1; multiple choice (OmniMedVQA) accuracy, overall and per question modality (`accuracy[<group>]`
rows, Fig. 3(b)), each with its own parse-failure rate; reports ROUGE-L. P-values come from a paired bootstrap
(tasks/evaluation/bootstrap.py `compare_to_best`) on the samples every method of the dataset answered, and need at
least one resample (`n_boot=0` leaves them null).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import polars as pl

from data_contracts.cards import DataCard
from data_contracts.io import digest_of_hashes, row_hashes
from data_contracts.metrics import METRICS_SCHEMA, group_metric
from data_contracts.predictions import PREDICTIONS_SCHEMA
from tasks.evaluation.bootstrap import (MEAN, N_BOOT, Estimate, compare_to_best, diagnosis_metrics, estimate)
from tasks.evaluation.metrics import (HEADLINE, VQA_METRICS, diagnosis_scores, label_indicator, report_per_sample,
                                      vqa_per_sample)

VQA_HEADLINE = "F1"
REPORT_HEADLINE = "ROUGE-L"
CHOICE_HEADLINE = "accuracy"
# a method's per-sample arrays for the paired test: (sample ids, arrays in sample-id order)
Arms = dict[str, tuple[list[str], tuple[np.ndarray, ...]]]


def _metric_row(card: DataCard, method: str, metric: str, est: Estimate, n: int, headline: str,
                parse_failure_rate: float | None = None) -> dict:
    return {"dataset": card.name, "domain": card.domain or "", "task_type": card.task_type, "method": method,
            "metric": metric, "value": est.point, "ci_low": est.lo, "ci_high": est.hi, "n": n,
            "parse_failure_rate": parse_failure_rate, "p_value_vs_best": None, "headline": headline,
            "note": est.note}


def _by_method(df: pl.DataFrame) -> Iterator[tuple[str, pl.DataFrame]]:
    """Each method's rows in sample-id order (the bootstrap's resamples then do not depend on row order)."""
    for method in df["method"].unique(maintain_order=True).to_list():
        yield method, df.filter(pl.col("method") == method).sort("sample_id")


# ---------------------------------------------------------------------------------------------------- paired test
def _aligned(arms: Arms) -> dict[str, tuple[np.ndarray, ...]]:
    """Each method's arrays restricted to the samples every method scored, in sample-id order."""
    common = sorted(set.intersection(*(set(ids) for ids, _ in arms.values())))
    out = {}
    for method, (ids, arrays) in arms.items():
        pos = {s: i for i, s in enumerate(ids)}
        idx = np.array([pos[s] for s in common], dtype=np.int64)
        out[method] = tuple(np.asarray(a)[idx] for a in arrays)
    return out if common else {}


def paired_pvalues(metric_fn: Callable, arms: Arms, n_boot: int = N_BOOT,
                   seed: int = 0) -> tuple[str | None, dict[str, float | None]]:
    """(best method, {other method: paired bootstrap P-value against the best}) on the samples all methods share.

    (None, {}) when there is nothing to compare: fewer than two methods with a defined value, no shared samples, or
    no resamples (`n_boot` 0).
    """
    if n_boot < 1 or len(arms) < 2:
        return None, {}
    aligned = _aligned(arms)
    defined = {m: a for m, a in aligned.items() if not math.isnan(float(metric_fn(*a)))}
    if len(defined) < 2:
        return None, {}
    best, pvals = compare_to_best(metric_fn, defined, n=n_boot, seed=seed)
    return best, {m: None if math.isnan(p) else p for m, p in pvals.items()}


def _set_pvalues(rows: list[dict], metric: str, best: str | None, pvals: Mapping[str, float | None]) -> None:
    for r in rows:
        if r["metric"] == metric and r["method"] != best:
            r["p_value_vs_best"] = pvals.get(r["method"])


# ----------------------------------------------------------------------------------------------------------- tasks
def _diagnosis_metrics(df: pl.DataFrame, card: DataCard, n_boot: int, seed: int, scorers: Mapping) -> list[dict]:
    multilabel = card.task_type == "multilabel"
    headline = HEADLINE[card.task_type]
    out, arms = [], {}
    for method, d in _by_method(df):
        truth, pred = d["truth"].to_list(), d["prediction"].to_list()
        scores = diagnosis_scores(truth, pred, card.labels, multilabel, failed=d["parse_failed"].to_list(),
                                  n=n_boot, seed=seed)
        pfr = scores.pop("parse_failure_rate").point
        for metric, est in scores.items():
            out.append(_metric_row(card, method, metric, est, d.height, headline, pfr))
        arms[method] = (d["sample_id"].to_list(), (label_indicator(truth, card.labels, multilabel),
                                                   label_indicator(pred, card.labels, multilabel)))
    metric_fn = diagnosis_metrics(card.task_type == "multilabel")[headline]   # the one F1 convention (torchmetrics)
    _set_pvalues(out, headline, *paired_pvalues(metric_fn, arms, n_boot, seed))
    return out


def _choice(text: str) -> str:
    return text.strip().upper()


def _choice_metrics(df: pl.DataFrame, card: DataCard, n_boot: int, seed: int) -> list[dict]:
    """Multiple choice: accuracy of the parsed option letter, overall and per group (the question's modality)."""
    out, arms = [], {}
    for method, d in _by_method(df):
        correct = []
        for sid, t, p in zip(d["sample_id"].to_list(), d["truth"].to_list(), d["prediction"].to_list()):
            if len(t) != 1:
                raise ValueError(f"{card.name}/{method} sample {sid!r}: truth must be [correct option letter], "
                                 f"got {list(t)}")
            correct.append(len(p) > 0 and _choice(p[0]) == _choice(t[0]))
        correct_a = np.asarray(correct, dtype=float)
        failed = np.asarray(d["parse_failed"].to_list(), dtype=float)
        out.append(_metric_row(card, method, CHOICE_HEADLINE, estimate(MEAN, correct_a, n=n_boot, seed=seed),
                               d.height, CHOICE_HEADLINE, float(failed.mean())))
        groups = np.array([g if g is not None else "" for g in d["group"].to_list()], dtype=object)
        for g in sorted({g for g in groups if g}):
            mask = groups == g
            est = estimate(MEAN, correct_a[mask], n=n_boot, seed=seed)
            out.append(_metric_row(card, method, group_metric(CHOICE_HEADLINE, g), est, int(mask.sum()),
                                   CHOICE_HEADLINE, float(failed[mask].mean())))
        arms[method] = (d["sample_id"].to_list(), (correct_a,))
    _set_pvalues(out, CHOICE_HEADLINE, *paired_pvalues(MEAN, arms, n_boot, seed))
    return out


def _vqa_metrics(df: pl.DataFrame, card: DataCard, n_boot: int, seed: int, scorers: Mapping) -> list[dict]:
    if card.task_type == "multiple-choice":
        return _choice_metrics(df, card, n_boot, seed)
    head_fn, head_keys = VQA_METRICS[VQA_HEADLINE]
    out, arms = [], {}
    for method, d in _by_method(df):
        preds = [p[0] if len(p) else "" for p in d["prediction"].to_list()]
        # several reference strings are accepted alternatives (VQA-Med's '#')
        truth = [t[0] if len(t) == 1 else list(t) for t in d["truth"].to_list()]
        per = vqa_per_sample(preds, truth)
        for metric, (fn, keys) in VQA_METRICS.items():
            est = estimate(fn, *(per[k] for k in keys), n=n_boot, seed=seed)
            out.append(_metric_row(card, method, metric, est, d.height, VQA_HEADLINE))
        arms[method] = (d["sample_id"].to_list(), tuple(per[k] for k in head_keys))
    _set_pvalues(out, VQA_HEADLINE, *paired_pvalues(head_fn, arms, n_boot, seed))
    return out


def _report_metrics(df: pl.DataFrame, card: DataCard, n_boot: int, seed: int, scorers: Mapping) -> list[dict]:
    parts = list(_by_method(df))
    # one scoring call for every method's reports: each score depends on its own pair only, and the scorers (METEOR,
    # RadGraph, CheXbert) pay a start-up cost per call
    hyps = [p[0] if len(p) else "" for _, d in parts for p in d["prediction"].to_list()]
    refs = [t[0] for _, d in parts for t in d["truth"].to_list()]
    scores = report_per_sample(hyps, refs, radgraph=scorers.get("radgraph"), chexbert=scorers.get("chexbert"),
                               radgraph_note=scorers.get("radgraph_note"), chexbert_note=scorers.get("chexbert_note"))
    out, arms, start = [], {}, 0
    for method, d in parts:
        mine = slice(start, start + d.height)
        start += d.height
        for metric, values in scores.per_sample.items():
            est = estimate(MEAN, values[mine], n=n_boot, seed=seed, note=scores.notes.get(metric))
            out.append(_metric_row(card, method, metric, est, d.height, REPORT_HEADLINE))
        for metric, why in scores.not_computed.items():
            out.append(_metric_row(card, method, metric, Estimate(None, note=why), d.height, REPORT_HEADLINE))
        arms[method] = (d["sample_id"].to_list(), (scores.per_sample[REPORT_HEADLINE][mine],))
    _set_pvalues(out, REPORT_HEADLINE, *paired_pvalues(MEAN, arms, n_boot, seed))
    return out


def metrics_from_predictions(preds: pl.DataFrame, cards: Mapping[str, DataCard], n_boot: int = N_BOOT,
                             seed: int = 0, *, report_scorers: Mapping[str, Callable] | None = None,
                             report_notes: Mapping[str, str | None] | None = None) -> pl.DataFrame:
    """Every metric with its 95% bootstrap CI (and paired P-values vs the best method) from a predictions table.

    `report_scorers`: {"radgraph": fn, "chexbert": fn} built from local weights (hyps, refs -> per-sample scores);
    a scorer not given leaves its metric not computed (value null, with the reason in `note`: `report_notes`
    {"radgraph": why, "chexbert": why} when the caller knows it).
    """
    if "group" not in preds.columns:   # a schema-1 table has no subgroups
        preds = preds.with_columns(pl.lit(None, dtype=pl.String).alias("group"))
    scorers = {**dict(report_scorers or {}), **{f"{k}_note": v for k, v in (report_notes or {}).items()}}
    rows: list[dict] = []
    for dataset in preds["dataset"].unique(maintain_order=True).to_list():
        d = preds.filter(pl.col("dataset") == dataset)
        if dataset not in cards:
            raise KeyError(f"predictions: dataset {dataset!r} has no data card among {sorted(cards)}")
        kinds = d["task_kind"].unique().to_list()
        if len(kinds) != 1:
            raise ValueError(f"predictions: dataset {dataset!r} mixes task kinds {sorted(kinds)}; expected one")
        fn = {"diagnosis": _diagnosis_metrics, "vqa": _vqa_metrics, "report": _report_metrics}[kinds[0]]
        rows += fn(d, cards[dataset], n_boot, seed, scorers)
    return pl.DataFrame(rows, schema=METRICS_SCHEMA)


def predictions_digest(paths: Sequence[str]) -> str:
    """Content digest of the per-sample predictions of a benchmark (all datasets)."""
    hashes = []
    for p in paths:
        df = pl.read_parquet(p)
        hashes += row_hashes(df, PREDICTIONS_SCHEMA.names)
    return digest_of_hashes(hashes, "predictions")
