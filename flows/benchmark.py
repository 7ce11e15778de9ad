"""The main job: the whole GSCo DAG (SPEC §2) on a profile, one MLflow parent run with a nested run per stage.

    gsco run --profile tiny                                   # locally, embedded Prefect + MLflow + LanceDB
    prefect deployment run benchmark/full                     # on a GPU work pool (prefect.yaml)

    ingest -> specialists (jobs -> RAD index)
           -> generalist (base -> synthesis -> corpus [+ collaboration rows from the specialists] -> finetune)
           -> evaluation (arms -> metrics -> report)
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Failed, State

from data_contracts.files import FolderLock, write_json_atomic
from data_contracts.layout import RunLayout
import flows.observe  # noqa: F401  (the work's log lines go to the Prefect run log)
from flows.evaluation import evaluation
from flows.generalist import base_model, corpus, finetune, synthesis
from flows.ingest import ingest
from flows.specialists import index, specialists
from infra.profiles import Profile, load_profile
from tasks import lineage, plan
from tasks.evaluation.report_artifact import artifact_markdown
from tasks.evaluation.stage import report_context
from tasks.ingest.settings import TinyBenchmarkSettings
from tasks.secrets import redact
from tasks.tracking import Tracking, standard_tags, tracking_uri


@task(name="generate-tiny-benchmark")
def write_tiny_benchmark(root: str, settings: TinyBenchmarkSettings) -> str:
    from tasks.ingest.tiny_benchmark import generate_tiny_benchmark

    generate_tiny_benchmark(Path(root), seed=settings.seed, scale=settings.scale)
    return root


def _generalist(prof: Profile, layout: RunLayout, names: list[str], tracking: Tracking,
                trained: dict | None) -> tuple[dict, dict]:
    """base -> synthesis -> corpus -> finetune; (the fine-tuning result, {stage: {unit: status}}). `trained`: the
    specialists' result, read by the corpus when it carries collaboration rows."""
    out = str(layout.root)
    base = base_model.submit(prof.generalist, out, names, tracking).result()
    synth = synthesis(out, names, base, prof.generalist, prof.synthesis, tracking)
    jobs = plan.jobs_by_dataset(trained["jobs"]) if trained else None
    corpus_result = corpus(out, names, synth["results"], prof.corpus, tracking, jobs,
                           trained["retriever_jobs"] if trained else None)
    finetuned = finetune(base, corpus_result, prof.finetune, out, tracking)
    return finetuned, {"generalist-base": {"generalist-base": base["status"]},
                       "synthesis": {r["kind"]: r["status"] for r in synth["results"]},
                       "corpus": {"corpus": corpus_result["status"]}, "finetune": {"finetune": finetuned["status"]}}


def _specialists(prof: Profile, layout: RunLayout, names: list[str], tracking: Tracking) -> tuple[dict, dict]:
    """The job fan-out and the RAD indexes; ({"jobs", "failures", "indexes"}, {stage: {unit: status}})."""
    datasets = plan.specialist_datasets(names, prof.specialists.datasets)
    trained = specialists(str(layout.root), datasets, prof.specialists, tracking)
    if trained["failures"]:
        get_run_logger().warning("%d specialist job(s) failed after retries: %s", len(trained["failures"]),
                                 sorted(trained["failures"]))
    jobs = plan.jobs_by_dataset(trained["jobs"])
    choices = plan.retriever_choices(jobs, prof.rad.retriever)   # on validation, never on test
    retriever_jobs = {d: jobs[d][c["arch"]] for d, c in choices.items()}
    indexed = index(str(layout.root), list(retriever_jobs.values()), prof.rad, tracking, choices)
    units = {"specialists": {f"{j['dataset']}/{j['arch']}": j["status"] for j in trained["jobs"]},
             "index": {f"{i['dataset']}/{i['retriever']}": "cached" if i["reused"] else "written"
                       for i in indexed["indexes"]}}
    return {**trained, "indexes": indexed["indexes"], "retriever_jobs": retriever_jobs, "choices": choices}, units


def _evaluation(prof: Profile, layout: RunLayout, ingested: dict, finetuned: dict, trained: dict,
                tracking: Tracking) -> tuple[dict, dict]:
    """Every arm on every benchmark dataset, metrics and the report; (its result, {stage: {unit: status}})."""
    names = [r["dataset"] for r in ingested["results"]]
    datasets = plan.evaluation_datasets(names, prof.evaluation.datasets)
    jobs = plan.jobs_by_dataset(trained["jobs"])
    lineage_inputs = {"tables_root": str(layout.tables),
                      "model_ids": [*finetuned["model_ids"].values(), *(j["model_id"] for j in trained["jobs"])],
                      "indexes": {f"{i['dataset']}/{i['retriever']}": {"digest": i["content_digest"][:32],
                                                                     "uri": i["uri"], "version": i["version"]}
                                  for i in trained["indexes"]}}
    meddr = {"path": finetuned["merged_path"], "digest": finetuned["merged_digest"]}
    context = report_context(prof, ingested, trained, finetuned, tracking)
    evaluated = evaluation(str(layout.root), datasets, meddr, prof.generalist, prof.evaluation, jobs,
                           trained["retriever_jobs"], lineage_inputs, tracking, context)
    publish_report(evaluated["report_md"], tracking, prof.name)
    return evaluated, {"evaluation": {**evaluated["predictions_status"], "report": evaluated["status"]}}


def publish_report(report_md: str, tracking: Tracking, profile_name: str) -> None:
    """The report as the run's Prefect artifact: self-contained (images embedded), headed by the MLflow parent run
    and where to open it."""
    from mlflow.tracking import MlflowClient

    experiment_id = MlflowClient(tracking.uri).get_run(tracking.parent_run_id).info.experiment_id
    create_markdown_artifact(artifact_markdown(Path(report_md), tracking.parent_run_id, tracking.uri, experiment_id),
                             key="gsco-benchmark-report", description=f"GSCo benchmark report ({profile_name})")


@flow(name="benchmark")
def benchmark(profile: str = "tiny", overrides: list[str] | None = None, out_dir: str | None = None,
              stages: list[str] | None = None) -> dict | State:
    """Run every stage (each served from cache when its inputs are unchanged); returns where to look.

    `stages` limits the run to some stage groups (ingest, generalist, specialists, evaluation) and what they read.
    A run with failed specialist jobs ends in a Failed state that names them (its data: the same result dict).
    One run writes an outputs folder at a time: a second is refused (FolderLockedError, naming the first); the MLflow
    runs a killed run of the folder left RUNNING are marked KILLED when the next one starts.
    """
    prof = load_profile(profile, overrides or [])
    groups = plan.stage_groups(stages, prof.corpus.collaboration.enabled)
    layout = RunLayout(Path(out_dir or prof.outputs.dir))
    layout.root.mkdir(parents=True, exist_ok=True)
    with FolderLock(layout.run_lock, "run") as lock:   # one run per outputs folder; a second is refused, named
        return _benchmark(prof, overrides or [], layout, groups, lock)


def _benchmark(prof: Profile, overrides: list[str], layout: RunLayout, groups, lock: FolderLock) -> dict | State:
    data_root = Path(prof.data.root).resolve() if prof.data.root else layout.data
    if prof.data.tiny_benchmark is not None:
        write_tiny_benchmark(str(data_root), prof.data.tiny_benchmark)
    uri, flow_run_id = tracking_uri(layout, prof.tracking.uri), str(flow_run.id)
    if lock.previous.get("mlflow_run_id") and lock.previous.get("tracking_uri") == uri:
        killed = lineage.mark_killed(uri, lock.previous["mlflow_run_id"])
        if killed:
            get_run_logger().warning("a killed run of this folder left %d MLflow run(s) RUNNING: marked KILLED (%s)",
                                     len(killed), ", ".join(killed))
    parent = lineage.start_parent(uri, prof.tracking.experiment, layout.root, "benchmark",
                                  standard_tags(prof.name, "benchmark", flow_run_id),
                                  {"profile": prof.path, "overrides": ",".join(redact(o) for o in overrides)})
    lock.update(mlflow_run_id=parent, tracking_uri=uri, flow_run_id=flow_run_id)
    tracking = Tracking(uri=uri, experiment=prof.tracking.experiment, out_dir=str(layout.root), profile=prof.name,
                        parent_run_id=parent, flow_run_id=flow_run_id)
    status = "FAILED"
    try:
        data = prof.data
        ingested = ingest(str(data_root), str(layout.root), tracking, datasets=data.datasets, policy=data.policy,
                          policies=data.policies, log_table_artifacts=prof.tracking.log_table_artifacts,
                          max_image_pixels=data.max_image_pixels)
        names = [r["dataset"] for r in ingested["results"]]
        units = {"ingest": {r["dataset"]: r["status"] for r in ingested["results"]}}
        result = {"mlflow_run_id": parent, "tracking_uri": uri, "report": None, "report_md": None, "failures": {},
                  "out_dir": str(layout.root)}
        trained = None
        # a corpus with collaboration rows reads the specialists' predictions and RAD tables: they train first
        if "specialists" in groups:
            trained, stage_units = _specialists(prof, layout, names, tracking)
            units.update(stage_units)
            result["failures"] = trained["failures"]
        if "generalist" in groups:
            finetuned, stage_units = _generalist(prof, layout, names, tracking, trained)
            units.update(stage_units)
        if "evaluation" in groups:
            evaluated, stage_units = _evaluation(prof, layout, ingested, finetuned, trained, tracking)
            units.update(stage_units)
            result.update(report=evaluated["report_html"], report_md=evaluated["report_md"])
        result["stages"], result["recomputed"] = plan.summarize(units)
        status = "FINISHED" if not result["failures"] else "FAILED"
        write_json_atomic(layout.benchmark_result, result)  # where schedulers and tests find the latest run
        if result["failures"]:  # the flow run ends Failed, saying which jobs; the result (every other stage) is kept
            return Failed(message=f"{len(result['failures'])} specialist job(s) failed after retries: "
                                  f"{', '.join(sorted(result['failures']))}; the other stages ran without them",
                          data=result)
        return result
    finally:
        lineage.end_parent(uri, parent, status)
