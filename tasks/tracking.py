"""MLflow helpers: where the store is, how runs are tagged, how params and tables are recorded.

    tracking = Tracking(uri=tracking_uri(layout, None), experiment="gsco-tiny", out_dir=str(layout.root))
    with tracking.stage_run("corpus") as run:
        log_params({...}); log_table("corpus", digest, path, context="output")

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
from pydantic import BaseModel, ConfigDict

from data_contracts.layout import RunLayout

# a param whose name holds one of these is never logged (its value could be a credential)
SECRET_MARKERS = ("key", "token", "secret", "password", "credential")
PARAM_MAX_CHARS = 6000  # MLflow's limit on a param value
# MLflow's fluent API keeps one tracking URI and experiment per process: tasks running in threads (specialist jobs
# on several slots) would log into each other's runs, so a run's logging section holds this lock.
RUN_LOCK = threading.RLock()


def tracking_uri(layout: RunLayout, configured: str | None) -> str:
    """The configured URI, else a SQLite store in the outputs folder (absolute path: four slashes)."""
    if configured:
        return configured
    layout.root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{layout.mlflow_db.as_posix()}"  # as_posix() starts with "/": four slashes in all


def ensure_experiment(uri: str, name: str, out_dir: Path) -> str:
    """The experiment id of `name`, creating it (with a local artifact root for SQLite stores) if needed."""
    with RUN_LOCK:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if uri.startswith(("sqlite:", "file:")):
            root = RunLayout(Path(out_dir)).mlartifacts
            root.mkdir(parents=True, exist_ok=True)
            location = root.as_uri()
        return client.create_experiment(name, artifact_location=location)


def git_commit() -> str:
    """The git commit of the checkout the code runs from ("unknown" outside a git checkout)."""
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def standard_tags(profile: str | None = None, stage: str | None = None,
                  flow_run_id: str | None = None) -> dict[str, str]:
    """Tags every run carries: git commit, the Prefect flow run it belongs to, profile, stage."""
    tags = {"gsco.git_commit": git_commit()}
    if flow_run_id:
        tags["gsco.prefect_flow_run_id"] = str(flow_run_id)
    if profile:
        tags["gsco.profile"] = profile
    if stage:
        tags["gsco.stage"] = stage
    return tags


def loggable_params(params: dict) -> dict[str, str]:
    """Params as MLflow takes them: secret-looking keys dropped, values as strings cut to MLflow's limit."""
    return {str(k): str(v)[:PARAM_MAX_CHARS] for k, v in params.items()
            if not any(m in str(k).lower() for m in SECRET_MARKERS)}


def log_params(params: dict) -> None:
    """Log `params` on the active run through `loggable_params`."""
    mlflow.log_params(loggable_params(params))


@contextlib.contextmanager
def start_run(uri: str, experiment: str, run_name: str, out_dir: Path, tags: dict | None = None,
              parent_run_id: str | None = None):
    """A run in `experiment` on the store `uri`; restores the previous tracking URI afterwards."""
    with RUN_LOCK:
        previous = mlflow.get_tracking_uri() if os.environ.get("MLFLOW_TRACKING_URI") else None
        mlflow.set_tracking_uri(uri)
        exp_id = ensure_experiment(uri, experiment, out_dir)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        try:
            with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=all_tags) as run:
                yield run
        finally:
            if previous:
                mlflow.set_tracking_uri(previous)


class Tracking(BaseModel):
    """Where a benchmark's stage runs go: the store, the experiment, the outputs folder, the parent run."""
    model_config = ConfigDict(frozen=True)

    uri: str
    experiment: str
    out_dir: str
    profile: str | None = None
    parent_run_id: str | None = None      # the benchmark's MLflow parent run
    flow_run_id: str | None = None        # the Prefect flow run (the UI's link to these runs)

    @contextlib.contextmanager
    def stage_run(self, name: str, stage: str | None = None, tags: dict | None = None):
        """A nested run under the benchmark's parent, tagged with commit, Prefect flow run, profile and stage."""
        with start_run(self.uri, self.experiment, name, Path(self.out_dir),
                       tags={**standard_tags(self.profile, stage or name, self.flow_run_id), **(tags or {})},
                       parent_run_id=self.parent_run_id) as run:
            yield run


def log_table(name: str, digest: str, path: Path, context: str, tags: dict | None = None) -> None:
    """Record a table as an MLflow dataset (name, content digest, source path) on the active run."""
    ds = MetaDataset(source=LocalArtifactDatasetSource(Path(path).resolve().as_uri()), name=name, digest=digest)
    mlflow.log_input(ds, context=context, tags=tags)


def log_split_input(tables_root: Path, dataset: str, split: str, digest: str) -> None:
    """Record the canonical table `dataset/split` as an input of the active run: the one name and source every stage
    uses for a split, so lineage joins them."""
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
