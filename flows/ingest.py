"""The `ingest` flow: every registered dataset present under a data root -> validated canonical tables, one MLflow run.

    gsco ingest --data-root outputs/tiny/data --out outputs/tiny
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.futures import wait

from data_contracts.cards import get_card, registry
from tasks import loaders
from tasks.ingest import FileHashMemo, IngestResult, ingest_dataset
from tasks.ingest_tracking import log_ingest_run


@task(name="ingest-dataset", task_run_name="ingest-{name}")
def ingest_one(name: str, data_root: str, tables_root: str, policy: str, memo_path: str) -> dict:
    return ingest_dataset(get_card(name), Path(data_root), Path(tables_root), policy=policy,
                          memo=FileHashMemo(Path(memo_path))).to_dict()


@task(name="log-ingest-run")
def log_run(results: list[dict], failures: dict[str, str], settings: dict) -> str:
    return log_ingest_run([IngestResult(**r) for r in results], failures, **settings)


def present_datasets(data_root: Path, names: list[str] | None) -> list[str]:
    """Requested dataset names (validated against the registry), else every card whose raw files are present."""
    if names:
        for n in names:
            get_card(n)
        return list(names)
    return [n for n, c in registry().items() if loaders.is_present(c, data_root)]


@flow(name="ingest")
def ingest(data_root: str, out_dir: str, datasets: list[str] | None = None, policy: str = "fail",
           policies: dict[str, str] | None = None, tracking_uri: str | None = None, experiment: str = "gsco",
           profile: str | None = None, log_table_artifacts: bool = True, parent_run_id: str | None = None) -> dict:
    """Ingest every dataset and log one MLflow run; returns {run_id, tables_root, results, failures}."""
    out, root = Path(out_dir).resolve(), Path(data_root).resolve()
    tables_root = out / "tables"
    names = present_datasets(root, datasets)
    if not names:
        raise FileNotFoundError(f"no registered dataset found under {root} (see `gsco datasets list`)")
    # one memo file per dataset: concurrent tasks never write the same file
    futures = {n: ingest_one.submit(n, str(root), str(tables_root), (policies or {}).get(n, policy),
                                    str(out / ".cache" / f"filehash-{n}.json")) for n in names}
    wait(list(futures.values()))
    results, failures = [], {}
    for n, f in futures.items():
        state = f.state
        if state.is_completed():
            results.append(f.result())
        else:
            try:
                f.result()
            except Exception as e:  # the task's own error message names the file/row/field
                failures[n] = f"{type(e).__name__}: {e}"
    settings = {"tables_root": str(tables_root), "out_dir": str(out), "tracking_uri": tracking_uri,
                "experiment": experiment, "profile": profile, "log_table_artifacts": log_table_artifacts,
                "parent_run_id": parent_run_id}
    run_id = log_run(results, failures, settings)
    if failures:
        details = "\n".join(f"  {n}: {msg}" for n, msg in failures.items())
        raise RuntimeError(f"ingest failed for {len(failures)} dataset(s) (tables of the others were written; "
                           f"earlier tables of the failed ones are intact):\n{details}")
    return {"run_id": run_id, "tables_root": str(tables_root), "results": results, "failures": failures}
