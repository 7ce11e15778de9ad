"""Scoring and reporting of a benchmark's predictions, and its MLflow record (inputs by digest, report artifacts).

    result = score_and_report(prediction_entries, out_dir, settings, "GSCo benchmark (tiny)")
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import polars as pl

from data_contracts.cards import get_card
from data_contracts.io import write_json_atomic
from data_contracts.predictions import validate_predictions
from tasks.evaluate import metrics_from_predictions, predictions_digest
from tasks.lineage import log_model_input
from tasks.report import render_report
from tasks.tracking import log_split_input, log_table, standard_tags, start_run


def score_and_report(preds: list[dict], out_dir: Path, settings: dict, title: str) -> dict:
    """Metrics (95% bootstrap CIs, P-values vs best) and the Markdown/HTML report; cached on the predictions digest."""
    ev = Path(out_dir) / "evaluation"
    paths = [p["path"] for p in preds]
    digest = predictions_digest(paths)
    marker = ev / "report" / "_gsco_report.json"
    n_boot, seed = int(settings.get("bootstrap", 1000)), int(settings.get("seed", 0))
    cfg = {"digest": digest, "bootstrap": n_boot, "seed": seed, "title": title}
    status = "cached"
    if not (marker.exists() and json.loads(marker.read_text()) == cfg):
        df = pl.concat([pl.read_parquet(p) for p in paths])
        validate_predictions(df, str(ev / "predictions"))
        metrics = metrics_from_predictions(df, {d: get_card(d) for d in df["dataset"].unique().to_list()},
                                           n_boot=n_boot, seed=seed)
        ev.mkdir(parents=True, exist_ok=True)
        tmp = ev / "metrics.parquet.tmp"
        metrics.write_parquet(tmp)
        tmp.replace(ev / "metrics.parquet")
        notes = {"method": "MoED = specialists' predicted labels; RAD = labels of the top-k training cases retrieved "
                           "by the retriever specialist's embeddings (cosine, LanceDB)."}
        render_report(metrics, ev / "report", title, notes, generated_at=False)
        write_json_atomic(marker, cfg)
        status = "written"
    files = {p.name: str(p) for p in (ev / "report").iterdir() if p.is_file() and not p.name.startswith("_")}
    return {"status": status, "predictions_digest": digest, "predictions": paths, "metrics": str(ev / "metrics.parquet"),
            "report_md": str(ev / "report" / "report.md"), "report_html": str(ev / "report" / "report.html"),
            "files": files, "datasets": [p["dataset"] for p in preds],
            "predictions_status": {p["dataset"]: p["status"] for p in preds}}


def log_evaluation_run(result: dict, lineage_inputs: dict, tracking: dict, parent_run_id: str | None) -> str:
    """The evaluation run: test tables, MedDr and specialist models, RAD indexes in; predictions + report out."""
    tables_root = Path(lineage_inputs["tables_root"])
    with start_run(tracking["uri"], tracking["experiment"], "evaluation", Path(tracking["out_dir"]),
                   tags=standard_tags(tracking.get("profile"), "evaluation"), parent_run_id=parent_run_id) as run:
        for ds in result["datasets"]:
            log_split_input(tables_root, ds, "test")
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
