"""MLflow helpers: where the store is, how runs are tagged, and how tables are recorded as datasets with digests.

    uri = tracking_uri(out_dir, None)        # sqlite:////abs/out/mlflow.db unless a URI is configured
    with start_run(uri, "gsco-tiny", "ingest", tags) as run: log_table(...)

MLflow has no "dataset output" entity; tables a run writes are logged as dataset inputs with context "output"
(and tables it reads with context "input"), so lineage tools can tell them apart through the `mlflow.data.context` tag.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from pathlib import Path

import mlflow
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.tracking import MlflowClient

SECRET_MARKERS = ("key", "token", "secret", "password", "credential")
# MLflow's fluent API keeps one tracking URI and experiment per process: tasks running in threads (specialist jobs
# on several slots) would log into each other's runs, so a run's logging section holds this lock.
_RUN_LOCK = threading.RLock()


def tracking_uri(out_dir: Path, configured: str | None) -> str:
    """The configured URI, else a SQLite store in the outputs folder (absolute path: four slashes)."""
    if configured:
        return configured
    p = Path(out_dir).resolve() / "mlflow.db"
    p.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{p.as_posix()}"  # as_posix() starts with "/": four slashes in all


def artifact_root(out_dir: Path) -> str:
    """Local artifact folder used when the experiment is created against a local store."""
    p = Path(out_dir).resolve() / "mlartifacts"
    p.mkdir(parents=True, exist_ok=True)
    return p.as_uri()


def ensure_experiment(uri: str, name: str, out_dir: Path) -> str:
    """The experiment id of `name`, creating it (with a local artifact root for SQLite stores) if needed."""
    with _RUN_LOCK:
        return _ensure_experiment(uri, name, out_dir)


def _ensure_experiment(uri: str, name: str, out_dir: Path) -> str:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifact_root(out_dir) if uri.startswith("sqlite:") or uri.startswith("file:") else None
    return client.create_experiment(name, artifact_location=location)


def git_commit() -> str:
    """The git commit of the checkout the code runs from ("unknown" outside a git checkout)."""
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def prefect_run_id() -> str | None:
    """The Prefect flow-run id when called inside a flow run."""
    try:
        from prefect.runtime import flow_run
        return flow_run.id
    except Exception:
        return None


def standard_tags(profile: str | None = None, stage: str | None = None) -> dict[str, str]:
    """Tags every run carries: git commit, Prefect flow-run id, profile, stage."""
    tags = {"gsco.git_commit": git_commit()}
    rid = prefect_run_id()
    if rid:
        tags["gsco.prefect_flow_run_id"] = str(rid)
    if profile:
        tags["gsco.profile"] = profile
    if stage:
        tags["gsco.stage"] = stage
    return tags


def safe_params(params: dict) -> dict:
    """Params with secret-looking keys dropped and values truncated to MLflow's limit."""
    out = {}
    for k, v in params.items():
        if any(m in k.lower() for m in SECRET_MARKERS):
            continue
        out[k] = str(v)[:6000]
    return out


@contextlib.contextmanager
def start_run(uri: str, experiment: str, run_name: str, out_dir: Path, tags: dict | None = None,
              nested: bool = False, parent_run_id: str | None = None):
    """A run in `experiment` on the store `uri`; restores the previous tracking URI afterwards."""
    with _RUN_LOCK:
        previous = mlflow.get_tracking_uri() if os.environ.get("MLFLOW_TRACKING_URI") else None
        mlflow.set_tracking_uri(uri)
        exp_id = ensure_experiment(uri, experiment, out_dir)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        try:
            with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=all_tags, nested=nested) as run:
                yield run
        finally:
            if previous:
                mlflow.set_tracking_uri(previous)


def log_table(name: str, digest: str, path: Path, context: str, tags: dict | None = None) -> None:
    """Record a table as an MLflow dataset (name, content digest, source path) on the active run."""
    ds = MetaDataset(source=LocalArtifactDatasetSource(Path(path).resolve().as_uri()), name=name, digest=digest)
    mlflow.log_input(ds, context=context, tags=tags)


def log_split_input(tables_root: Path, dataset: str, split: str, digest: str | None = None) -> None:
    """Record the canonical table `dataset/split` as an input of the active run (digest from its manifest unless
    given): the one name and source every stage uses for a split, so lineage joins them."""
    from data_contracts.io import read_manifest

    if digest is None:
        digest = read_manifest(Path(tables_root), dataset)["splits"][split]["digest"]
    log_table(f"{dataset}/{split}", digest, Path(tables_root) / dataset / split, context="input")


def run_datasets(uri: str, run_id: str) -> list[dict]:
    """The datasets recorded on a run: name, digest, source, context."""
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    out = []
    for di in run.inputs.dataset_inputs:
        ctx = {t.key: t.value for t in di.tags}.get("mlflow.data.context")
        out.append({"name": di.dataset.name, "digest": di.dataset.digest, "source": di.dataset.source,
                    "context": ctx})
    return out
