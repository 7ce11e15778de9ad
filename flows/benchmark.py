"""The main job: the whole GSCo DAG (SPEC §2) on a profile, one MLflow parent run with a nested run per stage.

    gsco run --profile tiny                                   # locally, embedded Prefect + MLflow + LanceDB
    prefect deployment run benchmark/full                     # on a GPU work pool (prefect.yaml)
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from data_contracts.cards import get_card
from data_contracts.io import write_json_atomic
from flows.evaluation import evaluation
from flows.generalist import base_model, corpus, finetune, synthesis
from flows.ingest import ingest
from flows.specialists import index, specialists
from infra.profiles import load_profile
from tasks import lineage as lineage_mod
from tasks.tracking import standard_tags, tracking_uri


STAGE_GROUPS = ("ingest", "generalist", "specialists", "evaluation")


@task(name="tiny-benchmark-data")
def synthetic_data(root: str, settings: dict) -> str:
    from tasks.tiny_data import generate_tiny_benchmark

    generate_tiny_benchmark(Path(root), **settings)
    return root


def _select(names: list[str], kinds: tuple[str, ...], role: str) -> list[str]:
    return [n for n in names if get_card(n).task_kind in kinds and role in get_card(n).roles]


@flow(name="benchmark")
def benchmark(profile: str = "tiny", overrides: list[str] | None = None, out_dir: str | None = None,
              stages: list[str] | None = None) -> dict:
    """Run every stage (each served from cache when its inputs are unchanged); returns where to look.

    `stages` limits the run to some stage groups (ingest, generalist, specialists, evaluation) and what they read.
    """
    logger = get_run_logger()
    groups = set(stages or STAGE_GROUPS)
    unknown = groups - set(STAGE_GROUPS)
    if unknown:
        raise ValueError(f"stages: unknown group(s) {sorted(unknown)}; expected some of {STAGE_GROUPS}")
    if "evaluation" in groups:
        groups |= {"generalist", "specialists"}
    prof = load_profile(profile, overrides or [])
    out = Path(out_dir or prof["outputs"]["dir"]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_root = str(Path(prof["data"]["root"] or out / "data").resolve())
    if prof["data"].get("synthetic"):
        synthetic_data(data_root, prof["data"]["synthetic"])
    tr = prof["tracking"]
    uri = tracking_uri(out, tr["uri"])
    tracking = {"uri": uri, "experiment": tr["experiment"], "out_dir": str(out), "profile": prof["name"]}
    parent = lineage_mod.start_parent(uri, tr["experiment"], out, "benchmark",
                                      standard_tags(prof["name"], "benchmark"),
                                      {"profile": prof["_path"], "overrides": ",".join(overrides or [])})
    status = "FAILED"
    try:
        ing = ingest(data_root, str(out), datasets=prof["data"]["datasets"], policy=prof["data"]["policy"],
                     policies=prof["data"].get("policies") or {}, tracking_uri=uri, experiment=tr["experiment"],
                     profile=prof["name"], log_table_artifacts=tr["log_table_artifacts"], parent_run_id=parent)
        tables = ing["tables_root"]
        names = [r["dataset"] for r in ing["results"]]

        # each stage's units (datasets, synthesis kinds, jobs, indexes, ...) -> their status in this run
        units = {"ingest": {r["dataset"]: r["status"] for r in ing["results"]}}
        result = {"mlflow_run_id": parent, "tracking_uri": uri, "report": None, "report_md": None,
                  "stages": {}, "recomputed": {}, "failures": {}, "out_dir": str(out)}
        if "generalist" in groups:
            base = base_model(prof["generalist"], tables, names, str(out), tracking, parent)
            syn = synthesis(tables, str(out), names, base, prof["generalist"], prof["synthesis"], tracking, parent)
            cor = corpus(tables, str(out), names, syn["results"], prof["corpus"], tracking, parent)
            ft = finetune(base, cor, prof["finetune"], str(out), tracking, parent)
            units.update({"generalist-base": {"generalist-base": base["status"]},
                          "synthesis": {r["kind"]: r["status"] for r in syn["results"]},
                          "corpus": {"corpus": cor["status"]}, "finetune": {"finetune": ft["status"]}})
        if "specialists" in groups:
            diag = _select(names, ("diagnosis",), "benchmark")
            spec_ds = [n for n in diag if prof["specialists"].get("datasets") is None
                       or n in prof["specialists"]["datasets"]]
            spe = specialists(tables, str(out), spec_ds, prof["specialists"], tracking, parent)
            result["failures"] = spe["failures"]
            if spe["failures"]:
                logger.warning("%d specialist job(s) failed after retries: %s", len(spe["failures"]),
                               sorted(spe["failures"]))
            done = {(j["dataset"], j["arch"]): j for j in spe["jobs"]}
            retrievers = prof["rad"]["retrievers"]
            idx_ds = [n for n in spec_ds if all((n, r) in done for r in retrievers)]
            idx = index(tables, str(out), idx_ds, prof["rad"], tracking, parent)
            units.update(specialists={f"{j['dataset']}/{j['arch']}": j["status"] for j in spe["jobs"]},
                         index={f"{i['dataset']}/{i['retriever']}": "cached" if i["reused"] else "written"
                                for i in idx["indexes"]})
        if "evaluation" in groups:
            eval_ds = [n for n in _select(names, ("diagnosis", "vqa", "report"), "benchmark")
                       if prof["evaluation"].get("datasets") is None or n in prof["evaluation"]["datasets"]]
            specialist_dirs = {ds: {a: j["out_dir"] for (d, a), j in done.items() if d == ds} for ds in eval_ds}
            merged = {"path": ft["merged_path"], "digest": ft["merged_digest"]}
            model_ids = [ft["model_ids"].get("meddr-merged"), ft["model_ids"].get("meddr-adapter")]
            model_ids += [_job_model(j["out_dir"]) for j in spe["jobs"]]
            lineage_inputs = {"tables_root": tables, "model_ids": [m for m in model_ids if m],
                              "indexes": {f"{i['dataset']}/{i['retriever']}": {"digest": i["content_digest"][:32],
                                                                             "uri": i["uri"], "version": i["version"]}
                                          for i in idx["indexes"]}}
            ev = evaluation(tables, str(out), eval_ds, merged, prof["generalist"], prof["evaluation"],
                            specialist_dirs, retrievers[0] if retrievers else None, lineage_inputs, tracking, parent)
            create_markdown_artifact(Path(ev["report_md"]).read_text(), key="gsco-benchmark-report",
                                     description=f"GSCo benchmark report ({prof['name']})")
            units["evaluation"] = {**ev["predictions_status"], "report": ev["status"]}
            result.update(report=ev["report_html"], report_md=ev["report_md"])
        result["stages"] = {stage: _status(list(u.values())) for stage, u in units.items()}
        result["recomputed"] = {stage: sorted(n for n, s in u.items() if s not in _DONE) for stage, u in units.items()}
        status = "FINISHED" if not result["failures"] else "FAILED"
        write_json_atomic(out / "benchmark_result.json", result)  # where schedulers and tests find the latest run
        return result
    finally:
        lineage_mod.end_parent(uri, parent, status)


def _job_model(job_out_dir: str) -> str | None:
    from tasks.specialist_jobs import logged_job
    try:
        return logged_job(Path(job_out_dir)).get("model_id")
    except FileNotFoundError:
        return None


_DONE = ("cached", "skipped", "external", "empty")  # unit statuses that mean no work was done


def _status(statuses: list[str]) -> str:
    """'cached' when every unit of a stage was served from cache (or skipped as finished), else 'computed'."""
    return "cached" if statuses and all(s in _DONE for s in statuses) else "computed"

