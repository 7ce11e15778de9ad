"""The `ingest` flow: every registered dataset present under a data root -> validated canonical tables, one MLflow run.

    gsco ingest --data-root outputs/tiny/data --out outputs/tiny
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.futures import wait
from prefect.runtime import flow_run

from data_contracts.layout import RunLayout
from flows.observe import as_state
from tasks.ingest import stage
from tasks.ingest.settings import DEFAULT_MAX_IMAGE_PIXELS
from tasks.tracking import Tracking


@task(name="ingest-dataset", task_run_name="ingest-{name}")
def ingest_dataset(name: str, data_root: str, out_dir: str, policy: str,
                   max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> dict:
    result = stage.ingest_one(name, Path(data_root), RunLayout(Path(out_dir)), policy, max_image_pixels)
    return as_state(result, cached=result["status"] == "cached")


@task(name="record-ingest")
def record(results: list[dict], failures: dict[str, str], out_dir: str, tracking: Tracking,
           log_table_artifacts: bool) -> str:
    return stage.record_ingest(results, failures, RunLayout(Path(out_dir)), tracking, log_table_artifacts)


@flow(name="ingest")
def ingest(data_root: str, out_dir: str, tracking: Tracking, datasets: list[str] | None = None, policy: str = "fail",
           policies: dict[str, str] | None = None, log_table_artifacts: bool = True,
           max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> dict:
    """Ingest every dataset (one task each) and log one MLflow run; returns {run_id, tables_root, results}.
    Raises after logging when any dataset failed (the tables of the others are written)."""
    layout, root = RunLayout(Path(out_dir)), Path(data_root).resolve()
    if tracking.flow_run_id is None:  # run on its own (gsco ingest): its runs carry this flow run's id
        tracking = tracking.model_copy(update={"flow_run_id": str(flow_run.id)})
    names = stage.present_datasets(root, datasets)
    futures = {n: ingest_dataset.submit(n, str(root), str(layout.root), (policies or {}).get(n, policy),
                                        max_image_pixels) for n in names}
    wait(list(futures.values()))
    results, failures = [], {}
    for n, f in futures.items():
        if f.state.is_completed():
            results.append(f.result())
            continue
        try:
            f.result()
        except Exception as e:  # the task's own error message names the file/row/field
            failures[n] = f"{type(e).__name__}: {e}"
    run_id = record(results, failures, str(layout.root), tracking, log_table_artifacts)
    for r in results:   # shown in the Prefect UI too (the loaders' own logger is not Prefect's)
        for w in r.get("warnings") or []:
            get_run_logger().warning("%s", w)
    if failures:
        details = "\n".join(f"  {n}: {msg}" for n, msg in failures.items())
        raise RuntimeError(f"ingest failed for {len(failures)} dataset(s) (tables of the others were written; "
                           f"earlier tables of the failed ones are intact):\n{details}")
    return {"run_id": run_id, "tables_root": str(layout.tables), "results": results}
