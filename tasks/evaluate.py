"""GSCo evaluation (SPEC §7, §8): run every arm on a benchmark test split, then score predictions with bootstrap CIs.

    preds = diagnosis_predictions(test, generalist, settings, specialist_preds, rad_refs)   # runs models
    metrics = metrics_from_predictions(preds, cards)                                          # pure: no model

Arms on diagnosis sets: MedDr alone, MedDr+MoED (the specialists' predicted label names), MedDr+RAD (labels of the
top-k retrieved training cases), GSCo (both) with the Fig. A4 prompt; Voting over the specialists; every specialist
alone. VQA and report sets are answered by MedDr alone. Predictions are kept per sample, so every number can be
recomputed from the predictions table without running a model.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from data_contracts.cards import DataCard
from data_contracts.predictions import PREDICTIONS_SCHEMA
from tasks import metrics as M
from tasks import prompts
from tasks.parsing import parse_answer
from tasks.voting import vote

GENERALIST_ARMS: dict[str, tuple[bool, bool]] = {  # arm -> (uses MoED, uses RAD)
    "MedDr": (False, False), "MedDr+MoED": (True, False), "MedDr+RAD": (False, True), "GSCo": (True, True)}
VQA_HEADLINE = "F1"
REPORT_HEADLINE = "ROUGE-L"


def moed_reference(specialist_preds: Mapping[str, Mapping[str, Sequence[str]]], sample_id: str) -> list[str]:
    """MoED reference answers for one sample: each specialist's predicted label names, in architecture order."""
    out: list[str] = []
    for arch in specialist_preds:
        out.extend(specialist_preds[arch][sample_id])
    return out


def arm_prompt(arm: str, modality: str, label_set: Sequence[str], multilabel: bool, moed: Sequence[str] | None,
               rad: Sequence[str] | None, paraphrase: int = 0) -> str:
    """The diagnosis prompt of one ablation arm (the missing sentence dropped)."""
    use_moed, use_rad = GENERALIST_ARMS[arm]
    return prompts.diagnosis_prompt(modality, label_set, multilabel, rad=list(rad) if use_rad else None,
                                    moed=list(moed) if use_moed else None, paraphrase=paraphrase)


def _generate(generalist, images: list[bytes], texts: list[str], settings, batch_size: int) -> list[str]:
    out: list[str] = []
    for i in range(0, len(texts), batch_size):
        out.extend(generalist.generate(images[i:i + batch_size], texts[i:i + batch_size], settings))
    return out


def _rows(dataset: str, method: str, kind: str, ids, truth, pred, answers, failed, prompts_, answer_types=None):
    n = len(ids)
    return [{"dataset": dataset, "method": method, "sample_id": ids[i], "task_kind": kind, "truth": list(truth[i]),
             "prediction": list(pred[i]), "answer_text": answers[i] if answers else None,
             "parse_failed": bool(failed[i]), "answer_type": answer_types[i] if answer_types else None,
             "prompt": prompts_[i] if prompts_ else None} for i in range(n)]


def diagnosis_predictions(test: pl.DataFrame, card: DataCard, generalist, settings,
                          specialist_preds: Mapping[str, Mapping[str, Sequence[str]]],
                          rad_refs: Mapping[str, Sequence[str]] | None, arms: Sequence[str] = tuple(GENERALIST_ARMS),
                          batch_size: int = 16, paraphrase: int = 0) -> pl.DataFrame:
    """Per-sample predictions of every generalist arm, Voting and each specialist on a diagnosis test split."""
    multilabel = card.task_type == "multilabel"
    ids = test["sample_id"].to_list()
    truth = test["labels"].to_list()
    images = test["image"].to_list()
    rows: list[dict] = []
    for arm in arms:
        use_moed, use_rad = GENERALIST_ARMS[arm]
        if use_moed and not specialist_preds:
            raise ValueError(f"{card.name}: arm {arm} needs specialist predictions (MoED), none were given")
        if use_rad and rad_refs is None:
            raise ValueError(f"{card.name}: arm {arm} needs retrieved neighbours (RAD), none were given")
        texts = [arm_prompt(arm, card.modality, card.labels, multilabel,
                            moed_reference(specialist_preds, s) if use_moed else None,
                            rad_refs[s] if use_rad else None, paraphrase) for s in ids]
        answers = _generate(generalist, images, texts, settings, batch_size)
        parsed = [parse_answer(a, card.labels, multilabel) for a in answers]
        rows += _rows(card.name, arm, "diagnosis", ids, truth, [p.labels for p in parsed], answers,
                      [p.failed for p in parsed], texts)
    if specialist_preds:
        voted = [vote([specialist_preds[a][s] for a in specialist_preds], multilabel, card.labels) for s in ids]
        rows += _rows(card.name, "Voting", "diagnosis", ids, truth, voted, None, [False] * len(ids), None)
        for arch, preds in specialist_preds.items():
            rows += _rows(card.name, f"specialist:{arch}", "diagnosis", ids, truth, [preds[s] for s in ids], None,
                          [False] * len(ids), None)
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA))


def vqa_predictions(test: pl.DataFrame, card: DataCard, generalist, settings, batch_size: int = 16) -> pl.DataFrame:
    """MedDr's answers to a VQA test split (VQA template of Fig. A3)."""
    ids = test["sample_id"].to_list()
    texts = [prompts.vqa_prompt(q) for q in test["question"].to_list()]
    answers = _generate(generalist, test["image"].to_list(), texts, settings, batch_size)
    rows = _rows(card.name, "MedDr", "vqa", ids, [[a] for a in test["answer"].to_list()], [[a] for a in answers],
                 answers, [False] * len(ids), texts, test["answer_type"].to_list())
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA))


def report_predictions(test: pl.DataFrame, card: DataCard, generalist, settings,
                       batch_size: int = 16) -> pl.DataFrame:
    """MedDr's generated reports for a report test split (MRG template of Fig. A3)."""
    ids = test["sample_id"].to_list()
    texts = [prompts.mrg_prompt()] * len(ids)
    answers = _generate(generalist, test["image"].to_list(), texts, settings, batch_size)
    rows = _rows(card.name, "MedDr", "report", ids, [[t] for t in test["text"].to_list()], [[a] for a in answers],
                 answers, [False] * len(ids), texts)
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA))


# ----------------------------------------------------------------------------------------------------- metrics
def _metric_row(card: DataCard, method: str, metric: str, est: M.Estimate, n: int, headline: str,
                parse_failure_rate: float | None = None) -> dict:
    return {"dataset": card.name, "domain": card.domain or "", "task_type": card.task_type, "method": method,
            "metric": metric, "value": est.point, "ci_low": est.lo, "ci_high": est.hi, "n": n,
            "parse_failure_rate": parse_failure_rate, "p_value_vs_best": None, "headline": headline,
            "note": est.note}


def _diagnosis_metrics(df: pl.DataFrame, card: DataCard, n_boot: int, seed: int) -> list[dict]:
    multilabel = card.task_type == "multilabel"
    headline = M.HEADLINE[card.task_type]
    out, arms = [], {}
    for method in df["method"].unique(maintain_order=True).to_list():
        d = df.filter(pl.col("method") == method).sort("sample_id")
        failed = d["parse_failed"].to_list()
        scores = M.diagnosis_scores(d["truth"].to_list(), d["prediction"].to_list(), card.labels, multilabel,
                                    failed=failed, n=n_boot, seed=seed)
        pfr = scores.pop("parse_failure_rate").point
        for metric, est in scores.items():
            out.append(_metric_row(card, method, metric, est, d.height, headline, pfr))
        arms[method] = (M.label_indicator(d["truth"].to_list(), card.labels, multilabel),
                        M.label_indicator(d["prediction"].to_list(), card.labels, multilabel))
    if len(arms) > 1:
        best, pvals = M.compare_to_best(M.DIAGNOSIS_METRICS[headline], arms, n=n_boot, seed=seed)
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
            est = M.estimate(M.MEAN, np.array([M.clean_str(p) == M.clean_str(t) for p, t in zip(preds, truth)],
                                              dtype=float), n=n_boot, seed=seed)
            out.append(_metric_row(card, method, "accuracy", est, d.height, "accuracy"))
            continue
        for metric, est in M.vqa_scores(preds, truth, n=n_boot, seed=seed).items():
            out.append(_metric_row(card, method, metric, est, d.height, VQA_HEADLINE))
    return out


def _report_metrics(df: pl.DataFrame, card: DataCard, n_boot: int, seed: int) -> list[dict]:
    out = []
    for method in df["method"].unique(maintain_order=True).to_list():
        d = df.filter(pl.col("method") == method)
        scores = M.report_scores([p[0] for p in d["prediction"].to_list()], [t[0] for t in d["truth"].to_list()],
                                 n=n_boot, seed=seed)
        for metric, est in scores.items():
            out.append(_metric_row(card, method, metric, est, d.height, REPORT_HEADLINE))
    return out


METRICS_SCHEMA = {"dataset": pl.Utf8, "domain": pl.Utf8, "task_type": pl.Utf8, "method": pl.Utf8, "metric": pl.Utf8,
                  "value": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "n": pl.Int64,
                  "parse_failure_rate": pl.Float64, "p_value_vs_best": pl.Float64, "headline": pl.Utf8,
                  "note": pl.Utf8}


def metrics_from_predictions(preds: pl.DataFrame, cards: Mapping[str, DataCard], n_boot: int = M.N_BOOT,
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


# ------------------------------------------------------------------------------------------------- the stage
def _key(*parts: str) -> str:
    import hashlib
    import inspect
    import sys

    code = inspect.getsource(sys.modules[__name__]) + inspect.getsource(prompts)
    return hashlib.sha256("\n".join([*parts, code]).encode()).hexdigest()


def evaluate_dataset(dataset: str, tables_root, out_dir, generator, settings: dict,
                     specialist_dirs: Mapping[str, str], retriever: str | None) -> dict:
    """Predictions of every arm on one benchmark dataset's test split (cached on all inputs); returns paths + status."""
    import json
    from pathlib import Path

    from data_contracts.cards import get_card
    from data_contracts.io import read_manifest, read_samples, write_json_atomic
    from tasks.generalist import GenerationSettings
    from tasks.rad_index import rad_references

    card = get_card(dataset)
    test_digest = read_manifest(Path(tables_root), dataset)["splits"]["test"]["digest"]
    fps = {a: json.loads((Path(d) / "done.json").read_text())["fingerprint"] for a, d in specialist_dirs.items()}
    key = _key(dataset, test_digest, generator.id, json.dumps(fps, sort_keys=True), str(retriever),
               json.dumps(settings, sort_keys=True))
    out = Path(out_dir) / "evaluation" / "predictions"
    path, marker = out / f"{dataset}.parquet", out / f"{dataset}.key.json"
    if path.exists() and marker.exists() and json.loads(marker.read_text())["key"] == key:
        return {"dataset": dataset, "status": "cached", "path": str(path), "key": key}
    test = read_samples(Path(tables_root), dataset, "test", validate=False)
    gen = GenerationSettings.from_dict(settings.get("generation", {}))
    bs = int(settings.get("batch_size", 16))
    if card.task_kind == "diagnosis":
        spec_preds = {a: _specialist_predictions(Path(d), card) for a, d in specialist_dirs.items()}
        rad = rad_references(dataset, retriever, Path(out_dir), int(settings.get("rad_k", 10))) if retriever else None
        arms = [a for a in settings.get("arms", list(GENERALIST_ARMS))
                if (not GENERALIST_ARMS[a][0] or spec_preds) and (not GENERALIST_ARMS[a][1] or rad is not None)]
        df = diagnosis_predictions(test, card, generator, gen, spec_preds, rad, arms, bs,
                                   int(settings.get("paraphrase", 0)))
    elif card.task_kind == "vqa":
        df = vqa_predictions(test, card, generator, gen, bs)
    elif card.task_kind == "report":
        df = report_predictions(test, card, generator, gen, bs)
    else:
        raise ValueError(f"{dataset}: no evaluation for task kind {card.task_kind!r}")
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    df.write_parquet(tmp)
    tmp.replace(path)
    write_json_atomic(marker, {"key": key})
    return {"dataset": dataset, "status": "written", "path": str(path), "key": key}


def _specialist_predictions(job_dir, card: DataCard) -> dict[str, list[str]]:
    """sample id -> predicted label names of a finished specialist job (empty multilabel -> "No finding")."""
    import json

    out = {}
    for line in (job_dir / "test_predictions.jsonl").read_text().splitlines():
        r = json.loads(line)
        labels = list(r["predicted"])
        if not labels and "No finding" in card.labels:
            labels = ["No finding"]
        out[r["sample_id"]] = labels
    return out


def predictions_digest(paths: Sequence[str]) -> str:
    """Content digest of the per-sample predictions of a benchmark (all datasets)."""
    from data_contracts.io import digest_of_hashes, row_hashes

    hashes = []
    for p in paths:
        df = pl.read_parquet(p)
        hashes += row_hashes(df, PREDICTIONS_SCHEMA.names)
    return digest_of_hashes(hashes, "predictions")
