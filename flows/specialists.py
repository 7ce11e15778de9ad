"""Specialist side: the (architecture x dataset) fan-out and the RAD indexes built from their embeddings.

    gsco run --profile tiny --stage specialists      (the `benchmark` flow, this stage group only)
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.futures import wait

from data_contracts.layout import RunLayout
from flows.observe import as_state, device_slots
from tasks.rad.settings import RadSettings
from tasks.rad.stage import build_rad_index, record_indexes
from tasks.specialists.settings import SpecialistsSettings
from tasks.specialists.stage import DevicePool, job_specs, run_and_record
from tasks.tracking import Tracking, ensure_experiment


@task(name="specialist-job", task_run_name="specialist-{spec[dataset]}-{spec[arch]}")
def specialist_job(spec: dict, settings: SpecialistsSettings, out_dir: str, tracking: Tracking) -> dict:
    # Prefect's tag limit (flows/observe.device_slots) lets a job start Running only once a slot is free (queued jobs
    # wait Pending); the lock-file pool then pins it to a device
    pool = DevicePool(RunLayout(Path(out_dir)).device_locks, settings.devices, settings.cpu_slots)
    summary = run_and_record(spec, pool, settings.job_isolation, tracking)
    return as_state(summary, cached=summary["status"] == "skipped")


@flow(name="specialists")
def specialists(out_dir: str, datasets: list[str], settings: SpecialistsSettings, tracking: Tracking) -> dict:
    """Train every (architecture x dataset) job under a device-slot limit; failures are retried and reported.
    Returns {"jobs": [job summary, ...], "failures": {"dataset/arch": error}}."""
    logger = get_run_logger()
    # create the MLflow store before any job runs: its schema migration is not atomic, so it must not be racing
    # job threads (or be cut short by a killed run)
    ensure_experiment(tracking.uri, tracking.experiment, Path(tracking.out_dir))
    slots = device_slots(settings.concurrency_limit, str(RunLayout(Path(out_dir)).device_locks), settings.slots)
    job = specialist_job.with_options(retries=settings.retries, retry_delay_seconds=2, tags=[slots])
    specs = job_specs(RunLayout(Path(out_dir)), datasets, settings)
    futures = [(s, job.submit(s, settings, out_dir, tracking)) for s in specs]
    wait([f for _, f in futures])
    results, failures = [], {}
    for s, f in futures:
        if f.state.is_completed():
            results.append(f.result())
            continue
        try:
            f.result()
        except Exception as e:
            failures[f"{s['dataset']}/{s['arch']}"] = f"{type(e).__name__}: {str(e)[:2000]}"
    for name, msg in failures.items():
        logger.error("specialist job %s failed: %s", name, msg)
    return {"jobs": results, "failures": failures}


@task(name="rad-index", task_run_name="rad-index-{job[dataset]}-{job[arch]}")
def rad_index(job: dict, out_dir: str, settings: RadSettings) -> dict:
    info = build_rad_index(job, RunLayout(Path(out_dir)), settings)
    return as_state(info, cached=info["reused"])


@flow(name="index")
def index(out_dir: str, retriever_jobs: list[dict], settings: RadSettings, tracking: Tracking,
          choices: dict[str, dict] | None = None) -> dict:
    """One LanceDB table per (dataset, retriever) from the retriever specialist's train-split embeddings; `choices`:
    per dataset, why that retriever (tasks/rad/retriever.py), recorded in MLflow."""
    futures = [rad_index.submit(job, out_dir, settings) for job in retriever_jobs]
    wait(futures)
    infos = [f.result() for f in futures]
    return {"indexes": infos, "run_id": record_indexes(infos, tracking, choices or {})}
