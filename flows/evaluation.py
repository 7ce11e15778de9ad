"""Evaluation: every arm on every benchmark dataset -> per-sample predictions -> metrics with CIs -> report.

    gsco run --profile tiny        (the last stage of the `benchmark` flow)
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from data_contracts.layout import RunLayout
from flows.observe import as_state
from tasks.evaluation import stage
from tasks.evaluation.settings import EvaluationSettings
from tasks.generalist.backends import generalist_for
from tasks.generalist.settings import GeneralistSettings
from tasks.tracking import Tracking


@task(name="evaluate-dataset", task_run_name="evaluate-{dataset}")
def evaluate_dataset(dataset: str, out_dir: str, model: dict, generalist: GeneralistSettings,
                     settings: EvaluationSettings, jobs: dict[str, dict], retriever_job: dict | None) -> dict:
    g = generalist_for(model, generalist)
    result = {**stage.predict_dataset(dataset, RunLayout(Path(out_dir)), g, settings, jobs, retriever_job),
              "generalist": g.id}
    return as_state(result, cached=result["status"] == "cached")


@task(name="score-and-report")
def score(preds: list[dict], out_dir: str, settings: EvaluationSettings, context: dict) -> dict:
    result = stage.score_and_report(preds, RunLayout(Path(out_dir)), settings, context)
    return as_state(result, cached=result["status"] == "cached")


@task(name="record-evaluation")
def record(result: dict, lineage_inputs: dict, tracking: Tracking) -> str:
    return stage.record_evaluation(result, lineage_inputs, tracking)


@flow(name="evaluation")
def evaluation(out_dir: str, datasets: list[str], model: dict, generalist: GeneralistSettings,
               settings: EvaluationSettings, jobs: dict[str, dict[str, dict]], retriever_jobs: dict[str, dict],
               lineage_inputs: dict, tracking: Tracking, context: dict | None = None) -> dict:
    """Predictions per dataset (sequential: generation holds the device), then metrics, report and MLflow run.

    `model`: the merged MedDr {"path", "digest"}; `jobs`: dataset -> arch -> specialist job summary;
    `retriever_jobs`: dataset -> the job whose RAD table is searched (chosen on validation; absent: no RAD arms
    there); `context`: what the report says beside the metrics (tasks/evaluation/stage.report_context)."""
    # (submit + result: a task that returns its Cached state gives its data back this way, not the state)
    preds = [evaluate_dataset.submit(ds, out_dir, model, generalist, settings, jobs.get(ds, {}),
                                     retriever_jobs.get(ds)).result() for ds in datasets]
    result = score.submit(preds, out_dir, settings, context or {}).result()
    return {**result, "run_id": record(result, lineage_inputs, tracking)}
