"""The evaluation stage: per benchmark dataset the arms' predictions (cached on every input), then metrics with CIs
and the report (cached on the predictions' digest and its inputs' digests), and the MLflow run recording what was
read and written.

    entry = predict_dataset("ham10000", layout, generalist, profile.evaluation, jobs, retriever_job)
    context = report_context(profile, ingested, trained, finetuned, tracking)    # header: run, commit, digests
    result = score_and_report([entry, ...], layout, profile.evaluation, context)
    run_id = record_evaluation(result, lineage_inputs, tracking)   # every metric with CI, n, parse failures

The report's header (Provenance) names the run that wrote it; a rerun on the same inputs serves that report and
records whose it is (tag `gsco.report.run_id` on its evaluation and parent runs). MLflow metric keys:
`<dataset>/<method>/<metric>/{value,ci_low,ci_high,n,parse_failure_rate,p_value_vs_best}` (`metric_key`); the
parent run carries `headline.json` (an MLflow table) and `report/`.
"""
from __future__ import annotations

import json
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
from tasks.logs import cache_hit, part_logger, summarised_warnings

log = part_logger("evaluation")

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
        cache_hit(log, "evaluation", dataset, key)
        return {**entry, "status": "cached"}
    with summarised_warnings(log, f"evaluation {dataset}"):
        df = _predictions(dataset, layout, generalist, settings, jobs, retriever_job)
    log.info("evaluation %s: %d predictions over %d arm(s)", dataset, df.height, df["method"].n_unique())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, df.write_parquet)
    write_json_atomic(marker, {"key": key})
    return {**entry, "status": "written"}


def report_context(profile, ingested: dict, trained: dict, finetuned: dict | None = None, tracking=None) -> dict:
    """What the report states beside the metrics: the departures from the paper (profile and loaders), the RAD
    retriever chosen per dataset, the specialists' Table A12 figures (from the job summaries), the digests of every
    input (`inputs`: raw data and tables, MedDr and its adapter, each specialist's weights, the RAD tables) and the
    run that writes it (`stamp`: MLflow run, commit, date, profile, data sources).

    Everything but `stamp` keys the report's cache: a rerun on the same inputs serves the report the first run wrote,
    which names that run (the rerun's MLflow runs say whose report they serve: `gsco.report.run_id`)."""
    from tasks.evaluation.departures import ingest_warnings, profile_departures

    departures = profile_departures(profile) + ingest_warnings(ingested["results"])
    specialists = [{"arch": j["arch"], "dataset": j["dataset"],
                    **{k: j["metrics"].get(k) for k in ("params_m", "gmacs", "train_images_per_s")}}
                   for j in trained["jobs"]]
    retrievers = {d: {"arch": c["arch"], "rule": c["rule"]} for d, c in trained.get("choices", {}).items()}
    return {"departures": departures, "specialists": specialists, "retrievers": retrievers,
            "inputs": report_inputs(ingested, trained, finetuned), "stamp": run_stamp(profile, ingested, tracking)}


def report_inputs(ingested: dict, trained: dict, finetuned: dict | None) -> dict:
    """The digests the report's numbers rest on, and one `combined` digest over them all."""
    import hashlib

    datasets = {r["dataset"]: {"raw": r["raw_digest"][:32], **{s: e["digest"] for s, e in sorted(r["splits"].items())}}
                for r in ingested["results"]}
    specialists = {f"{j['dataset']}/{j['arch']}": j.get("model_digest") or j["fingerprint"]
                   for j in sorted(trained["jobs"], key=lambda j: (j["dataset"], j["arch"]))}
    indexes = {f"{i['dataset']}/{i['retriever']}": {"digest": i["content_digest"][:32], "lancedb_version": i["version"]}
               for i in trained.get("indexes", [])}
    generalist = {}
    if finetuned:
        generalist = {"meddr": finetuned.get("merged_digest"), "meddr-adapter": finetuned.get("adapter_digest"),
                      **{f"{name}@registered": v for name, v in sorted((finetuned.get("registered") or {}).items())}}
    out = {"datasets": datasets, "specialists": specialists, "indexes": indexes, "generalist": generalist}
    blob = json.dumps(out, sort_keys=True, default=str).encode()
    return {**out, "combined": hashlib.sha256(blob).hexdigest()[:32]}


def run_stamp(profile, ingested: dict, tracking=None) -> dict:
    """Who writes the report: the MLflow parent run (and a link when the store is a server), commit, UTC date,
    profile, the raw data's folders."""
    from datetime import datetime, timezone

    from tasks.secrets import redact
    from tasks.tracking import git_commit

    stamp = {"run_id": None, "experiment": None, "link": None, "commit": git_commit(), "profile": profile.name,
             "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "sources": {r["dataset"]: r["source"] for r in ingested["results"]}}
    if tracking is not None:
        stamp.update(run_id=tracking.parent_run_id, experiment=tracking.experiment, tracking_uri=redact(tracking.uri))
        if tracking.uri.startswith(("http://", "https://")) and tracking.parent_run_id:
            from mlflow import MlflowClient

            exp = MlflowClient(tracking.uri).get_run(tracking.parent_run_id).info.experiment_id
            stamp["link"] = f"{redact(tracking.uri).rstrip('/')}/#/experiments/{exp}/runs/{tracking.parent_run_id}"
    return stamp


def provenance(context: dict, predictions_digest: str) -> dict | None:
    """The report header (render_report's `provenance`) from a report_context and the predictions' digest."""
    stamp, inputs = context.get("stamp"), context.get("inputs")
    if not stamp or not inputs:
        return None
    fields = [("MLflow run", stamp["run_id"] or "none (written outside a benchmark run)", stamp.get("link")),
              ("MLflow experiment", stamp.get("experiment") or "-", None),
              ("tracking store", stamp.get("tracking_uri") or "-", None),
              ("git commit", stamp["commit"], None), ("written (UTC)", stamp["date"], None),
              ("profile", stamp["profile"], None), ("inputs digest (all below)", inputs["combined"], None),
              ("predictions digest", predictions_digest, None)]
    for name, digest in inputs["generalist"].items():
        label = f"{name.removesuffix('@registered')} registered version" if name.endswith("@registered") else \
            f"{name} digest"
        fields.append((label, digest, None))
    splits = sorted({s for d in inputs["datasets"].values() for s in d if s != "raw"})
    tables = [("Datasets: raw files (digest, folder) and canonical tables (content digest per split).",
               ["dataset", "raw digest", "source", *splits],
               [[ds, d["raw"], stamp["sources"].get(ds, ""), *(d.get(s, "–") for s in splits)]
                for ds, d in sorted(inputs["datasets"].items())]),
              ("RAD tables (LanceDB).", ["dataset/retriever", "content digest", "LanceDB version"],
               [[k, v["digest"], v["lancedb_version"]] for k, v in sorted(inputs["indexes"].items())]),
              ("Specialists (weights digest).", ["dataset/arch", "weights digest"],
               [[k, v] for k, v in inputs["specialists"].items()])]
    return {"fields": fields, "tables": tables}


def _retriever_note(retrievers: dict[str, dict]) -> dict[str, str]:
    if not retrievers:
        return {}
    return {"retriever": "RAD retriever per dataset (chosen on validation, never on test): " +
            "; ".join(f"{d}: {r['arch']} ({r['rule']})" for d, r in sorted(retrievers.items()))}


def report_key(digest: str, settings: EvaluationSettings, context: dict | None = None) -> str:
    """Cache key of the metrics and report: the predictions' digest, what the report states beside them, the
    bootstrap, A7 list and title, the scoring code."""
    keyed = {k: v for k, v in (context or {}).items() if k != "stamp"}   # the stamp names a run: not an input
    return stage_key("report", {"predictions": digest, "context": keyed},
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
        with summarised_warnings(log, "evaluation metrics"):
            metrics = _score(df, settings)
        layout.evaluation.mkdir(parents=True, exist_ok=True)
        atomic_write(layout.metrics, metrics.write_parquet)
        notes = {"method": METHOD_NOTE, **_retriever_note(context.get("retrievers", {}))}
        render_report(metrics, layout.report, settings.title, notes, generated_at=False,
                      departures=context.get("departures", []), specialists=context.get("specialists", []),
                      a7_datasets=list(settings.a7_datasets), n_boot=settings.bootstrap,
                      provenance=provenance(context, digest))
        write_json_atomic(layout.report_key, {"key": key, "produced_by": _producer(context)})
        status = "written"
    else:
        cache_hit(log, "evaluation", "report", key)
    _log_scores(pl.read_parquet(layout.metrics))
    files = {p.name: str(p) for p in layout.report.iterdir() if p.is_file() and not p.name.startswith("_")}
    return {"status": status, "predictions_digest": digest, "predictions": paths, "metrics": str(layout.metrics),
            "report_md": str(layout.report_md), "report_html": str(layout.report_html),
            "files": files, "test_digests": {p["dataset"]: p["test_digest"] for p in preds},
            "predictions_status": {p["dataset"]: p["status"] for p in preds},
            "produced_by": recorded_key(layout.report_key, "produced_by") or {}}


def _producer(context: dict) -> dict:
    """The run a report names as its writer (kept beside the report's key, returned when it is served cached)."""
    stamp = context.get("stamp") or {}
    return {k: stamp.get(k) for k in ("run_id", "commit", "date", "profile")}


def _log_scores(metrics: pl.DataFrame) -> None:
    """One log line per dataset: its headline metric for every arm, best first (with the 95% CI)."""
    head = metrics.filter((pl.col("metric") == pl.col("headline")) & pl.col("value").is_not_null())
    for (dataset,), rows in head.sort("value", descending=True).group_by("dataset", maintain_order=True):
        log.info("scores %s (%s): %s", dataset, rows["metric"][0], "; ".join(_score_text(r) for r in rows.to_dicts()))


def _score_text(r: dict) -> str:
    ci = f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if r["ci_low"] is not None and r["ci_high"] is not None else ""
    return f"{r['method']} {r['value']:.3f}{ci}"


def record_evaluation(result: dict, lineage_inputs: dict, tracking) -> str:
    """The evaluation run: test tables, MedDr and specialist models, RAD indexes in; predictions + report out; every
    metric row as MLflow metrics (value, CI, n, parse-failure rate: `metric_values`). The benchmark's parent run gets
    the headline table and the report (`record_on_parent`)."""
    import mlflow

    from tasks.lineage import log_model_input
    from tasks.tracking import log_split_input, log_table

    tables_root = Path(lineage_inputs["tables_root"])
    producer = result.get("produced_by") or {}
    tags = {"gsco.report.run_id": producer.get("run_id") or "", "gsco.report.cached": str(result["status"] == "cached")}
    with tracking.stage_run("evaluation", tags=tags) as run:
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
        mlflow.log_metrics(metric_values(metrics))
        mlflow.log_metric("cached", float(result["status"] == "cached"))
        for path in result["files"].values():
            mlflow.log_artifact(path, artifact_path="report")
        mlflow.log_artifact(result["metrics"])
        mlflow.log_table(headline_table(metrics), "headline.json")
        run_id = run.info.run_id
    if tracking.parent_run_id:
        record_on_parent(result, metrics, tracking)
    return run_id


METRIC_FIELDS = ("value", "ci_low", "ci_high", "n", "parse_failure_rate", "p_value_vs_best")


def metric_key(dataset: str, method: str, metric: str, field: str) -> str:
    """The MLflow key of one metrics-table cell: `<dataset>/<method>/<metric>/<field>`, characters MLflow refuses
    mapped (`MedDr+MoED` -> `MedDr_MoED`, `accuracy[CT]` -> `accuracy.CT`, other ones and spaces -> `_`)."""
    import re

    def clean(part: str) -> str:
        part = part.replace("[", ".").replace("]", "").replace("+", "_").replace("(", "_").replace(")", "")
        return re.sub(r"[^\w.\-]", "_", part)
    return "/".join(clean(p) for p in (dataset, method, metric, field))


def metric_values(metrics: pl.DataFrame) -> dict[str, float]:
    """{metric_key: number} for every (dataset, method, metric) row: its value, 95% CI bounds, n, the method's
    parse-failure rate and the P-value against the best method (nulls, i.e. not computed, are left out)."""
    out = {}
    for r in metrics.iter_rows(named=True):
        for f in METRIC_FIELDS:
            if r.get(f) is not None:
                out[metric_key(r["dataset"], r["method"], r["metric"], f)] = float(r[f])
    return out


def headline_table(metrics: pl.DataFrame) -> "pd.DataFrame":  # noqa: F821
    """The headline rows (one per dataset and method) with CI, n and parse-failure rate, as MLflow logs a table."""
    cols = ["dataset", "domain", "task_type", "method", "metric", *METRIC_FIELDS]
    return metrics.filter(pl.col("metric") == pl.col("headline")).select(cols).to_pandas()


def record_on_parent(result: dict, metrics: pl.DataFrame, tracking) -> None:
    """The benchmark's parent run carries the headline table, the report (and its plots) and which run's report it
    serves (`gsco.report.run_id`: itself, or the earlier run whose cached report a rerun serves)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking.uri)
    parent = tracking.parent_run_id
    producer = result.get("produced_by") or {}
    client.set_tag(parent, "gsco.report.run_id", producer.get("run_id") or parent)
    client.set_tag(parent, "gsco.report.cached", str(result["status"] == "cached"))
    client.log_table(parent, headline_table(metrics), "headline.json")
    for path in result["files"].values():
        client.log_artifact(parent, path, artifact_path="report")
