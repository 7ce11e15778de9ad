"""MLflow record of an ingest: one run, one dataset entry per written table (name, content digest, source)."""
from __future__ import annotations

from pathlib import Path

import mlflow

from tasks.ingest import IngestResult
from tasks.tracking import log_table, standard_tags, start_run, tracking_uri


def log_ingest_run(results: list[IngestResult], failures: dict[str, str], *, tables_root: str, out_dir: str,
                   tracking_uri: str | None, experiment: str, profile: str | None,
                   log_table_artifacts: bool, parent_run_id: str | None = None) -> str:
    """Log the ingest run and return its id."""
    uri = tracking_uri_of(out_dir, tracking_uri)
    with start_run(uri, experiment, "ingest", Path(out_dir), tags=standard_tags(profile, "ingest"),
                   parent_run_id=parent_run_id) as run:
        mlflow.log_params({"datasets": ",".join(r.dataset for r in results), "tables_root": tables_root})
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
                mlflow.log_artifacts(str(Path(tables_root) / r.dataset), artifact_path=f"tables/{r.dataset}")
        if failures:
            mlflow.set_tag("gsco.failed_datasets", ",".join(sorted(failures)))
            mlflow.log_text("\n".join(f"{n}: {m}" for n, m in failures.items()), "failures.txt")
        return run.info.run_id


def tracking_uri_of(out_dir: str, configured: str | None) -> str:
    return tracking_uri(Path(out_dir), configured)
