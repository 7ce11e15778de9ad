"""The ingest stage: which datasets are present, one dataset ingested (key -> run, tasks/ingest/dataset.py), and the
MLflow record of an ingest (one run, one dataset entry per written table: name, content digest, source).

    names = present_datasets(data_root, profile.data.datasets)
    result = ingest_one("ham10000", data_root, layout, policy="fail")
    run_id = record_ingest(results, failures, layout, tracking, log_table_artifacts=True)
"""
from __future__ import annotations

from pathlib import Path

from data_contracts.cards import get_card, registry
from data_contracts.layout import RunLayout
from tasks.ingest import loaders
from tasks.ingest.dataset import FileHashMemo, IngestResult, ingest_dataset
from tasks.ingest.settings import DEFAULT_MAX_IMAGE_PIXELS
from tasks.logs import cache_hit, part_logger

log = part_logger("ingest")


def present_datasets(data_root: Path, names: list[str] | None) -> list[str]:
    """Requested dataset names (validated against the registry), else every card whose raw files are present."""
    if names:
        for n in names:
            get_card(n)
        return list(names)
    found = [n for n, c in registry().items() if loaders.is_present(c, Path(data_root))]
    if not found:
        raise FileNotFoundError(f"no registered dataset found under {data_root} (see `gsco datasets list`)")
    return found


def ingest_one(name: str, data_root: Path, layout: RunLayout, policy: str,
               max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> dict:
    """Ingest one dataset into the run's tables (served from cache when unchanged); its IngestResult as a dict."""
    memo = FileHashMemo(layout.file_hash_memo(name))  # one memo per dataset: concurrent tasks never share a file
    r = ingest_dataset(get_card(name), Path(data_root), layout.tables, policy=policy, memo=memo,
                       max_image_pixels=max_image_pixels)
    if r.status == "cached":
        cache_hit(log, "ingest", name, r.cache_key)
    else:
        log.info("ingest %s: %d rows (%s), %d rejected", name, sum(e["rows"] for e in r.splits.values()),
                 ", ".join(f"{s} {e['rows']}" for s, e in sorted(r.splits.items())), r.rejects)
    return r.to_dict()


def record_ingest(results: list[dict], failures: dict[str, str], layout: RunLayout, tracking,
                  log_table_artifacts: bool) -> str:
    """Log the ingest run (tables as MLflow datasets, rejects and cache hits as metrics); returns its id."""
    import mlflow

    from tasks.tracking import log_params, log_table

    results = [IngestResult(**r) for r in results]
    with tracking.stage_run("ingest") as run:
        log_params({"datasets": ",".join(r.dataset for r in results), "tables_root": str(layout.tables)})
        mlflow.log_metric("cached_datasets", sum(r.status == "cached" for r in results))
        for r in results:
            mlflow.log_metrics({f"{r.dataset}.rejects": r.rejects,
                                f"{r.dataset}.cached": 1.0 if r.status == "cached" else 0.0})
            for split, e in sorted(r.splits.items()):
                log_table(f"{r.dataset}/{split}", e["digest"], Path(e["path"]), context="output",
                          tags={"gsco.raw_digest": r.raw_digest[:32], "gsco.source": r.source,
                                "gsco.rows": str(e["rows"])})
                mlflow.log_metric(f"{r.dataset}.{split}.rows", e["rows"])
            if log_table_artifacts:
                mlflow.log_artifacts(str(layout.tables / r.dataset), artifact_path=f"tables/{r.dataset}")
        if failures:
            mlflow.set_tag("gsco.failed_datasets", ",".join(sorted(failures)))
            mlflow.log_text("\n".join(f"{n}: {m}" for n, m in failures.items()), "failures.txt")
        return run.info.run_id
