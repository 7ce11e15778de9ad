"""Evaluation: every arm on every benchmark dataset -> per-sample predictions -> metrics with CIs -> report.

    gsco run --profile tiny        (the last stage of the `benchmark` flow)
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from tasks import meddr
from tasks.evaluate import evaluate_dataset
from tasks.evaluation_report import log_evaluation_run, score_and_report


@task(name="evaluate-dataset", task_run_name="evaluate-{dataset}")
def evaluate_one(dataset: str, tables_root: str, out_dir: str, model: dict, generalist: dict, settings: dict,
                 specialist_dirs: dict, retriever: str | None) -> dict:
    generator = meddr.LazyGeneralist(model["path"], model["digest"], generalist) \
        if generalist.get("backend", "transformers") == "transformers" else meddr.generator_for(model, generalist)
    return {**evaluate_dataset(dataset, tables_root, out_dir, generator, settings, specialist_dirs, retriever),
            "generator": generator.id}


@task(name="score-and-report")
def score(preds: list[dict], out_dir: str, settings: dict, title: str) -> dict:
    return score_and_report(preds, Path(out_dir), settings, title)


@task(name="log-evaluation")
def log_eval(result: dict, lineage_inputs: dict, tracking: dict, parent_run_id: str | None) -> str:
    return log_evaluation_run(result, lineage_inputs, tracking, parent_run_id)


@flow(name="evaluation")
def evaluation(tables_root: str, out_dir: str, datasets: list[str], model: dict, generalist: dict, settings: dict,
               specialist_dirs: dict[str, dict[str, str]], retriever: str | None, lineage_inputs: dict,
               tracking: dict, parent_run_id: str | None = None) -> dict:
    """Predictions per dataset (sequential: generation holds the device), then metrics, report and MLflow run."""
    preds = [evaluate_one(ds, tables_root, out_dir, model, generalist, settings, specialist_dirs.get(ds, {}),
                          retriever if specialist_dirs.get(ds) else None) for ds in datasets]
    result = score(preds, out_dir, settings, settings.get("title", "GSCo benchmark"))
    result["run_id"] = log_eval(result, lineage_inputs, tracking, parent_run_id)
    return result
