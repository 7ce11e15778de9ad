"""Lineage in MLflow: stage runs record what they read and wrote (datasets and models by digest); `lineage` reads it back.

    gsco lineage RUN_ID          # the chain from a benchmark result back to datasets, corpus, adapter, specialists, index

Tables are MLflow datasets (name, content digest, source) logged with context "input" or "output"; models (the
generalist base, the LoRA adapter, the merged MedDr, specialists) are MLflow LoggedModels with a `gsco.digest` tag,
linked to runs as model inputs / outputs. Everything here reads and writes MLflow only.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelInput, LoggedModelOutput

from tasks.tracking import ensure_experiment


def log_model_dir(name: str, local_dir: Path, digest: str, model_type: str, params: dict | None = None,
                  tags: dict | None = None) -> str:
    """Log a model folder as a LoggedModel output of the active run (artifacts + digest tag, a hash of its weights);
    returns the model id."""
    run = mlflow.active_run()
    client = MlflowClient()
    m = mlflow.initialize_logged_model(name=name, source_run_id=run.info.run_id, model_type=model_type,
                                       tags={**(tags or {}), "gsco.digest": digest},
                                       params={k: str(v) for k, v in (params or {}).items()})
    client.log_model_artifacts(m.model_id, str(local_dir))
    mlflow.finalize_logged_model(m.model_id, "READY")
    mlflow.log_outputs([LoggedModelOutput(m.model_id, step=0)])
    return m.model_id


def log_model_input(model_id: str) -> None:
    """Record a LoggedModel as an input of the active run."""
    mlflow.log_input(model=LoggedModelInput(model_id))


def find_model(uri: str, experiment: str, name: str, digest: str) -> str | None:
    """The id of a READY LoggedModel with this name and digest (so cached stages link to the model they made)."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    found = client.search_logged_models(experiment_ids=[exp.experiment_id],
                                        filter_string=f"name = '{name}' AND tags.`gsco.digest` = '{digest}'",
                                        max_results=1)
    return found[0].model_id if found else None


def start_parent(uri: str, experiment: str, out_dir: Path, name: str, tags: dict, params: dict) -> str:
    """Create the parent run of a benchmark (not left active in this thread); returns its id."""
    client = MlflowClient(tracking_uri=uri)
    exp_id = ensure_experiment(uri, experiment, out_dir)
    run = client.create_run(exp_id, run_name=name, tags=tags)
    for k, v in params.items():
        client.log_param(run.info.run_id, k, str(v)[:6000])
    return run.info.run_id


def end_parent(uri: str, run_id: str, status: str = "FINISHED") -> None:
    MlflowClient(tracking_uri=uri).set_terminated(run_id, status=status)


def mark_killed(uri: str, parent_run_id: str) -> list[str]:
    """End a killed benchmark's runs that are still RUNNING (its parent and stage runs) as KILLED; returns their ids.

    A process killed with SIGKILL ends no MLflow run: the next run of its outputs folder, which holds the folder's
    lock and so knows that process is gone, closes them.
    """
    client = MlflowClient(tracking_uri=uri)
    try:
        parent = client.get_run(parent_run_id)
    except Exception:  # a store reset, or another store: nothing of it to close
        return []
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10_000)
    ended = []
    for run in [parent, *children]:
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    return ended


def _run_summary(client: MlflowClient, run) -> dict:
    inputs = []
    for di in run.inputs.dataset_inputs:
        tags = {t.key: t.value for t in di.tags}
        inputs.append({"name": di.dataset.name, "digest": di.dataset.digest, "context": tags.get("mlflow.data.context"),
                       "source": json.loads(di.dataset.source).get("uri", di.dataset.source)
                       if di.dataset.source.startswith("{") else di.dataset.source})
    models_in = [m.model_id for m in (run.inputs.model_inputs or [])]
    models_out = [m.model_id for m in (run.outputs.model_outputs or [])] if run.outputs else []

    def describe(mid):
        m = client.get_logged_model(mid)
        return {"model_id": mid, "name": m.name, "digest": m.tags.get("gsco.digest"), "source_run": m.source_run_id}
    return {"run_id": run.info.run_id, "name": run.info.run_name, "stage": run.data.tags.get("gsco.stage"),
            "status": run.info.status, "datasets": inputs, "models_in": [describe(m) for m in models_in],
            "models_out": [describe(m) for m in models_out],
            "tags": {k: v for k, v in run.data.tags.items() if k.startswith("gsco.")}}


def lineage(uri: str, run_id: str) -> dict:
    """The run (a benchmark parent or any stage run), its child stage runs, and for each what it read and wrote."""
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'", max_results=5000,
                                  order_by=["attributes.start_time ASC"])
    # search results omit model inputs: read each run in full
    return {"run": _run_summary(client, run),
            "stages": [_run_summary(client, client.get_run(c.info.run_id)) for c in children]}


def lineage_digests(tree: dict) -> dict[str, dict[str, str]]:
    """{kind: {name: digest}} over the whole tree: datasets (tables, corpus, synthesis, index) and models."""
    out: dict[str, dict[str, str]] = {"tables": {}, "corpus": {}, "synthesis": {}, "index": {}, "models": {},
                                      "predictions": {}}
    for r in [tree["run"], *tree["stages"]]:
        for d in r["datasets"]:
            kind = ("corpus" if d["name"].startswith("corpus") else "synthesis" if d["name"].startswith("synthesis/")
                    else "index" if d["name"].startswith("index/") else "predictions"
                    if d["name"].startswith("predictions") else "tables")
            out[kind][d["name"]] = d["digest"]
        for m in r["models_in"] + r["models_out"]:
            out["models"][m["name"]] = m["digest"]
    return out
