"""Specialist side: the (architecture x dataset) fan-out and the RAD indexes built from their embeddings.

    gsco run --profile tiny --stage specialists      (the `benchmark` flow, this stage group only)
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.concurrency.sync import concurrency
from prefect.futures import wait

from tasks.tracking import ensure_experiment
from tasks.specialist_jobs import DevicePool, job_specs, log_job, run_on_slot
from tasks.rad_index import build_rad_index, log_index_run


@task(name="specialist-job", task_run_name="specialist-{spec[dataset]}-{spec[arch]}")
def specialist_job(spec: dict, devices: list[int], isolation: str, tracking: dict, parent_run_id: str | None,
                   limit_name: str | None, cpu_slots: int) -> dict:
    pool = DevicePool(Path(spec["out_root"]) / ".device-locks", devices, cpu_slots)
    # the Prefect limit caps running jobs across flow runs sharing a pool; the lock-file pool pins each to a device
    with concurrency(limit_name, occupy=1, strict=True) if limit_name else contextlib.nullcontext():
        result = run_on_slot(spec, pool, isolation)
    run_id = log_job(result, spec, tracking, parent_run_id)
    return {"dataset": result["dataset"], "arch": result["arch"], "status": result["status"],
            "out_dir": result["out_dir"], "fingerprint": result["fingerprint"], "run_id": run_id,
            "metrics": result["metrics"], "init": result["init"]}


@flow(name="specialists")
def specialists(tables_root: str, out_dir: str, datasets: list[str], settings: dict, tracking: dict,
                parent_run_id: str | None = None) -> dict:
    """Train every (architecture x dataset) job under a device-slot limit; failures are retried and reported."""
    logger = get_run_logger()
    # create the MLflow store before any job runs: its schema migration is not atomic, so it must not be racing
    # job threads (or be cut short by a killed run)
    ensure_experiment(tracking["uri"], tracking["experiment"], Path(tracking["out_dir"]))
    devices = list(settings.get("devices") or [])
    slots = max(1, len(devices)) if devices else int(settings.get("cpu_slots", 1))
    isolation = settings.get("isolation", "subprocess" if devices else "inprocess")
    job = specialist_job.with_options(retries=int(settings.get("retries", 1)), retry_delay_seconds=2)
    specs = job_specs(tables_root, out_dir, datasets, settings)
    limit_name = settings.get("concurrency_limit")
    if limit_name:
        ensure_concurrency_limit(limit_name, slots)
    futures = [(s, job.submit(s, devices, isolation, tracking, parent_run_id, limit_name, slots)) for s in specs]
    wait([f for _, f in futures])
    results, failures = [], {}
    for s, f in futures:
        if f.state.is_completed():
            results.append(f.result())
        else:
            try:
                f.result()
            except Exception as e:
                failures[f"{s['dataset']}/{s['arch']}"] = f"{type(e).__name__}: {str(e)[:2000]}"
    for name, msg in failures.items():
        logger.error("specialist job %s failed: %s", name, msg)
    return {"jobs": results, "failures": failures}


def ensure_concurrency_limit(name: str, slots: int) -> None:
    """Create or resize the Prefect global concurrency limit that caps running jobs at `slots` (GPUs)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, slots)


@task(name="rad-index", task_run_name="rad-index-{dataset}-{retriever}")
def rad_index(dataset: str, retriever: str, tables_root: str, out_dir: str, settings: dict) -> dict:
    return build_rad_index(dataset, retriever, Path(tables_root), Path(out_dir), settings)


@flow(name="index")
def index(tables_root: str, out_dir: str, datasets: list[str], settings: dict, tracking: dict,
          parent_run_id: str | None = None) -> dict:
    """One LanceDB table per (dataset, retriever) from the retriever specialist's train-split embeddings."""
    futures = [rad_index.submit(ds, r, tables_root, out_dir, settings) for ds in datasets
               for r in settings["retrievers"]]
    wait(futures)
    infos = [f.result() for f in futures]
    run_id = log_index_run(infos, tracking, parent_run_id)
    return {"indexes": infos, "run_id": run_id}
