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
from tasks.evaluation.arms import (diagnosis_predictions, multiple_choice_predictions, report_predictions,
                                   specialist_predictions, vqa_predictions)
from tasks.evaluation.references import reference_section
from tasks.evaluation.report import render_report
from tasks.evaluation.variants import variant_arms, variant_predictions
from tasks.evaluation.scoring import metrics_from_predictions, predictions_digest
from tasks.evaluation.settings import GENERALIST_ARMS, EvaluationSettings

PREDICTION_CODE = ("tasks.evaluation.arms", "tasks.evaluation.parsing", "tasks.evaluation.voting",
                   "tasks.evaluation.variants", "tasks.evaluation.references", "tasks.rad.encoder", "tasks.rad.voting",
                   "tasks.evaluation.settings", "tasks.prompts", "tasks.rad.stage", "data_contracts.predictions")
REPORT_CODE = ("tasks.evaluation.scoring", "tasks.evaluation.bootstrap", "tasks.evaluation.metrics",
               "tasks.evaluation.report", "tasks.evaluation.report_tables", "tasks.evaluation.report_plots",
               "tasks.evaluation.clinical",
               "data_contracts.metrics")
METHOD_NOTE = ("MoED = specialists' predicted labels; RAD = labels of the top-k training cases retrieved by the "
               "retriever specialist's embeddings (cosine, LanceDB); the retriever is the specialist with the best "
               "validation headline metric.")


def predictions_key(dataset: str, test_digest: str, generalist_id: str, jobs: dict[str, dict],
                    retriever_job: dict | None, settings: EvaluationSettings, train_digest: str | None = None) -> str:
    """Cache key of one dataset's predictions: its test table, the generalist, the specialists and retriever, what the
    profile asks of the arms (not the report's bootstrap or title) and the arms' code."""
    inputs = {"dataset": dataset, "test": test_digest, "generalist": generalist_id,
              "specialists": {a: j["fingerprint"] for a, j in sorted(jobs.items())},
              "retriever": retriever_job["fingerprint"] if retriever_job else None, "train": train_digest}
    asked = settings.model_dump(include={"arms", "rad_k", "paraphrase", "batch_size", "generation"})
    return stage_key("evaluation-predictions", inputs, asked, PREDICTION_CODE)


def _split(layout: RunLayout, card, split: str) -> pl.DataFrame:
    """A split's samples; a report set's text cut to the section its card scores (findings), rows without it out."""
    df = read_samples(layout.tables, card.name, split, validate=False)
    if card.task_kind != "report" or card.reference_section in (None, "full"):
        return df
    sections = [reference_section(t, card.reference_section) for t in df["text"].to_list()]
    return df.with_columns(pl.Series("text", sections, dtype=pl.Utf8)).filter(pl.col("text").is_not_null())


def _predictions(dataset: str, layout: RunLayout, generalist, settings: EvaluationSettings, jobs: dict[str, dict],
                 retriever_job: dict | None) -> pl.DataFrame:
    """Run every arm that has what it needs on the dataset's test split (and the Table A9 variants asked for)."""
    from tasks.rad.stage import rad_references

    card = get_card(dataset)
    test = _split(layout, card, "test")
    gen, bs = settings.generation.for_task(card.task_kind, card.task_type), settings.batch_size
    if card.task_kind == "diagnosis":
        spec_preds = {a: specialist_predictions(Path(j["test_predictions"]), card) for a, j in jobs.items()}
        rad = rad_references(retriever_job, layout, settings.rad_k) if retriever_job else None
        arms = [a for a in settings.arms if a in GENERALIST_ARMS
                and (not GENERALIST_ARMS[a][0] or spec_preds) and (not GENERALIST_ARMS[a][1] or rad is not None)]
        df = diagnosis_predictions(test, card, generalist, gen, spec_preds, rad, arms, bs, settings.paraphrase)
    elif card.task_type == "multiple-choice":
        df = multiple_choice_predictions(test, card, generalist, gen, bs)
    elif card.task_kind == "vqa":
        df = vqa_predictions(test, card, generalist, gen, bs)
    elif card.task_kind == "report":
        df = report_predictions(test, card, generalist, gen, bs)
    else:
        raise ValueError(f"{dataset}: no evaluation for task kind {card.task_kind!r}")
    if variant_arms(card, settings.arms):
        train = _split(layout, card, "train")
        df = pl.concat([df, variant_predictions(test, train, card, generalist, gen, settings.arms, layout.lancedb,
                                                settings.rad_k, bs)])
    return df


def predict_dataset(dataset: str, layout: RunLayout, generalist, settings: EvaluationSettings,
                    jobs: dict[str, dict], retriever_job: dict | None) -> dict:
    """Predictions of every arm on one benchmark dataset's test split (cached); returns paths, digest and status.

    `jobs`: the specialists stage's summaries of this dataset's jobs by architecture; `retriever_job`: the one whose
    RAD table is searched (None: no RAD arms)."""
    digests = split_digests(layout.tables, dataset)
    test_digest = digests["test"]
    # the Table A9 variants search a table of the train split: its content is then an input too
    train_digest = digests.get("train") if variant_arms(get_card(dataset), settings.arms) else None
    key = predictions_key(dataset, test_digest, generalist.id, jobs, retriever_job, settings, train_digest)
    path, marker = layout.predictions(dataset), layout.predictions_key(dataset)
    entry = {"dataset": dataset, "path": str(path), "key": key, "test_digest": test_digest}
    if path.exists() and recorded_key(marker) == key:
        return {**entry, "status": "cached"}
    df = _predictions(dataset, layout, generalist, settings, jobs, retriever_job)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, df.write_parquet)
    write_json_atomic(marker, {"key": key})
    return {**entry, "status": "written"}


def report_context(profile, ingested: dict, trained: dict) -> dict:
    """What the report states beside the metrics: the departures from the paper (profile and loaders), the RAD
    retriever chosen per dataset, and the specialists' Table A12 figures (from the job summaries)."""
    from tasks.evaluation.departures import ingest_warnings, profile_departures

    departures = profile_departures(profile) + ingest_warnings(ingested["results"])
    specialists = [{"arch": j["arch"], "dataset": j["dataset"],
                    **{k: j["metrics"].get(k) for k in ("params_m", "gmacs", "train_images_per_s")}}
                   for j in trained["jobs"]]
    retrievers = {d: {"arch": c["arch"], "rule": c["rule"]} for d, c in trained.get("choices", {}).items()}
    return {"departures": departures, "specialists": specialists, "retrievers": retrievers}


def _retriever_note(retrievers: dict[str, dict]) -> dict[str, str]:
    if not retrievers:
        return {}
    return {"retriever": "RAD retriever per dataset (chosen on validation, never on test): " +
            "; ".join(f"{d}: {r['arch']} ({r['rule']})" for d, r in sorted(retrievers.items()))}


def report_key(digest: str, settings: EvaluationSettings, context: dict | None = None) -> str:
    """Cache key of the metrics and report: the predictions' digest, what the report states beside them, the
    bootstrap, A7 list and title, the scoring code."""
    return stage_key("report", {"predictions": digest, "context": context or {}},
                     settings.model_dump(include={"bootstrap", "seed", "title", "a7_datasets", "report_metrics"}),
                     REPORT_CODE)


def _score(df: pl.DataFrame, settings: EvaluationSettings) -> pl.DataFrame:
    """The metrics table, with the model-based report metrics scored where the profile points at local weights."""
    from tasks.evaluation.clinical import chexbert_scorer, radgraph_scorer

    cards = {d: get_card(d) for d in df["dataset"].unique().to_list()}
    scorers, notes = {}, {}
    if any(c.task_kind == "report" for c in cards.values()):
        for name, build in (("radgraph", radgraph_scorer), ("chexbert", chexbert_scorer)):
            scorers[name], notes[name] = build(getattr(settings.report_metrics, name))
    return metrics_from_predictions(df, cards, n_boot=settings.bootstrap, seed=settings.seed,
                                    report_scorers={k: v for k, v in scorers.items() if v is not None},
                                    report_notes=notes)


def score_and_report(preds: list[dict], layout: RunLayout, settings: EvaluationSettings,
                     context: dict | None = None) -> dict:
    """Metrics (95% bootstrap CIs, P-values vs best) and the Markdown/HTML report; cached on the predictions digest
    and the report's `context` (report_context)."""
    context = context or {}
    paths = [p["path"] for p in preds]
    digest = predictions_digest(paths)
    key = report_key(digest, settings, context)
    status = "cached"
    if not (layout.metrics.exists() and recorded_key(layout.report_key) == key):
        df = pl.concat([pl.read_parquet(p) for p in paths])
        validate_predictions(df, str(layout.predictions_dir))
        metrics = _score(df, settings)
        layout.evaluation.mkdir(parents=True, exist_ok=True)
        atomic_write(layout.metrics, metrics.write_parquet)
        notes = {"method": METHOD_NOTE, **_retriever_note(context.get("retrievers", {}))}
        render_report(metrics, layout.report, settings.title, notes, generated_at=False,
                      departures=context.get("departures", []), specialists=context.get("specialists", []),
                      a7_datasets=list(settings.a7_datasets), n_boot=settings.bootstrap)
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

