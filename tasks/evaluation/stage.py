"""The evaluation stage: per benchmark dataset the arms' predictions (cached on every input), then metrics with CIs
and the report (cached on the predictions' digest), and the MLflow run recording what was read and written.

    entry = predict_dataset("ham10000", layout, generalist, profile.evaluation, jobs, retriever_job)
    result = score_and_report([entry, ...], layout, profile.evaluation)
    run_id = record_evaluation(result, lineage_inputs, tracking)
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from data_contracts.cards import get_card
from data_contracts.files import atomic_write, write_json_atomic
from data_contracts.io import read_samples, split_digests
from data_contracts.layout import RunLayout
from data_contracts.predictions import validate_predictions
from tasks.cache import recorded_key, stage_key
from tasks.evaluation.arms import (diagnosis_predictions, report_predictions, specialist_predictions,
                                   vqa_predictions)
from tasks.evaluation.report import render_report
from tasks.evaluation.scoring import metrics_from_predictions, predictions_digest
from tasks.evaluation.settings import GENERALIST_ARMS, EvaluationSettings

PREDICTION_CODE = ("tasks.evaluation.arms", "tasks.evaluation.parsing", "tasks.evaluation.voting",
                   "tasks.evaluation.settings", "tasks.prompts", "tasks.rad.stage", "data_contracts.predictions")
REPORT_CODE = ("tasks.evaluation.scoring", "tasks.evaluation.bootstrap", "tasks.evaluation.metrics",
               "tasks.evaluation.report", "tasks.evaluation.report_tables", "tasks.evaluation.report_plots",
               "data_contracts.metrics")
METHOD_NOTE = ("MoED = specialists' predicted labels; RAD = labels of the top-k training cases retrieved by the "
               "retriever specialist's embeddings (cosine, LanceDB).")


def predictions_key(dataset: str, test_digest: str, generalist_id: str, jobs: dict[str, dict],
                    retriever_job: dict | None, settings: EvaluationSettings) -> str:
    """Cache key of one dataset's predictions: its test table, the generalist, the specialists and retriever, what the
    profile asks of the arms (not the report's bootstrap or title) and the arms' code."""
    inputs = {"dataset": dataset, "test": test_digest, "generalist": generalist_id,
              "specialists": {a: j["fingerprint"] for a, j in sorted(jobs.items())},
              "retriever": retriever_job["fingerprint"] if retriever_job else None}
    asked = settings.model_dump(include={"arms", "rad_k", "paraphrase", "batch_size", "generation"})
    return stage_key("evaluation-predictions", inputs, asked, PREDICTION_CODE)


def _predictions(dataset: str, layout: RunLayout, generalist, settings: EvaluationSettings, jobs: dict[str, dict],
                 retriever_job: dict | None) -> pl.DataFrame:
    """Run every arm that has what it needs on the dataset's test split."""
    from tasks.rad.stage import rad_references

    card = get_card(dataset)
    test = read_samples(layout.tables, dataset, "test", validate=False)
    gen, bs = settings.generation, settings.batch_size
    if card.task_kind == "diagnosis":
        spec_preds = {a: specialist_predictions(Path(j["test_predictions"]), card) for a, j in jobs.items()}
        rad = rad_references(retriever_job, layout, settings.rad_k) if retriever_job else None
        arms = [a for a in settings.arms
                if (not GENERALIST_ARMS[a][0] or spec_preds) and (not GENERALIST_ARMS[a][1] or rad is not None)]
        return diagnosis_predictions(test, card, generalist, gen, spec_preds, rad, arms, bs, settings.paraphrase)
    if card.task_kind == "vqa":
        return vqa_predictions(test, card, generalist, gen, bs)
    if card.task_kind == "report":
        return report_predictions(test, card, generalist, gen, bs)
    raise ValueError(f"{dataset}: no evaluation for task kind {card.task_kind!r}")


def predict_dataset(dataset: str, layout: RunLayout, generalist, settings: EvaluationSettings,
                    jobs: dict[str, dict], retriever_job: dict | None) -> dict:
    """Predictions of every arm on one benchmark dataset's test split (cached); returns paths, digest and status.

    `jobs`: the specialists stage's summaries of this dataset's jobs by architecture; `retriever_job`: the one whose
    RAD table is searched (None: no RAD arms)."""
    test_digest = split_digests(layout.tables, dataset)["test"]
    key = predictions_key(dataset, test_digest, generalist.id, jobs, retriever_job, settings)
    path, marker = layout.predictions(dataset), layout.predictions_key(dataset)
    entry = {"dataset": dataset, "path": str(path), "key": key, "test_digest": test_digest}
    if path.exists() and recorded_key(marker) == key:
        return {**entry, "status": "cached"}
    df = _predictions(dataset, layout, generalist, settings, jobs, retriever_job)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, df.write_parquet)
    write_json_atomic(marker, {"key": key})
    return {**entry, "status": "written"}


def report_key(digest: str, settings: EvaluationSettings) -> str:
    """Cache key of the metrics and report: the predictions' digest, the bootstrap and title, the scoring code."""
    return stage_key("report", {"predictions": digest},
                     settings.model_dump(include={"bootstrap", "seed", "title"}), REPORT_CODE)


def score_and_report(preds: list[dict], layout: RunLayout, settings: EvaluationSettings) -> dict:
    """Metrics (95% bootstrap CIs, P-values vs best) and the Markdown/HTML report; cached on the predictions digest."""
    paths = [p["path"] for p in preds]
    digest = predictions_digest(paths)
    key = report_key(digest, settings)
    status = "cached"
    if not (layout.metrics.exists() and recorded_key(layout.report_key) == key):
        df = pl.concat([pl.read_parquet(p) for p in paths])
        validate_predictions(df, str(layout.predictions_dir))
        metrics = metrics_from_predictions(df, {d: get_card(d) for d in df["dataset"].unique().to_list()},
                                           n_boot=settings.bootstrap, seed=settings.seed)
        layout.evaluation.mkdir(parents=True, exist_ok=True)
        atomic_write(layout.metrics, metrics.write_parquet)
        render_report(metrics, layout.report, settings.title, {"method": METHOD_NOTE}, generated_at=False)
        write_json_atomic(layout.report_key, {"key": key})
        status = "written"
    files = {p.name: str(p) for p in layout.report.iterdir() if p.is_file() and not p.name.startswith("_")}
    return {"status": status, "predictions_digest": digest, "predictions": paths, "metrics": str(layout.metrics),
            "report_md": str(layout.report_md), "report_html": str(layout.report_html),
            "files": files, "test_digests": {p["dataset"]: p["test_digest"] for p in preds},
            "predictions_status": {p["dataset"]: p["status"] for p in preds}}


def record_evaluation(result: dict, lineage_inputs: dict, tracking) -> str:
    """The evaluation run: test tables, MedDr and specialist models, RAD indexes in; predictions + report out."""
    import mlflow

    from tasks.lineage import log_model_input
    from tasks.tracking import log_split_input, log_table

    tables_root = Path(lineage_inputs["tables_root"])
    with tracking.stage_run("evaluation") as run:
        for ds, digest in result["test_digests"].items():
            log_split_input(tables_root, ds, "test", digest)
        for name, info in lineage_inputs.get("indexes", {}).items():
            log_table(f"index/{name}", info["digest"], Path(info["uri"]), context="input",
                      tags={"gsco.lancedb.version": str(info["version"])})
        for model_id in lineage_inputs.get("model_ids", []):
            log_model_input(model_id)
        log_table("predictions", result["predictions_digest"], Path(result["predictions"][0]).parent,
                  context="output")
        metrics = pl.read_parquet(result["metrics"])
        head = metrics.filter((pl.col("metric") == pl.col("headline")) & pl.col("value").is_not_null())
        for r in head.to_dicts():
            key = f"{r['dataset']}.{r['method']}.{r['metric']}".replace(":", "_").replace("+", "_")
            mlflow.log_metric(key, r["value"])
        mlflow.log_metric("cached", float(result["status"] == "cached"))
        for path in result["files"].values():
            mlflow.log_artifact(path, artifact_path="report")
        mlflow.log_artifact(result["metrics"])
        return run.info.run_id

