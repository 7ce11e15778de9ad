"""Lineage in MLflow: stage runs record what they read and wrote (datasets and models by digest); `lineage` reads it back.

    gsco lineage RUN_ID          # the chain from a benchmark result back to datasets, corpus, adapter, specialists, index
    mlflow.pyfunc.load_model("models:/specialist-ham10000-resnet18@rad-retriever").predict(images_frame)

Tables are MLflow datasets (name, content digest, source) logged with context "input" or "output"; models (the
generalist base, the LoRA adapter, the merged MedDr, specialists) are MLflow LoggedModels with a `gsco.digest` tag (a
hash of their weights), linked to runs as model inputs / outputs. Everything here reads and writes MLflow only.

Models a user loads are logged as MLflow "models from code" pyfunc models (`log_code_model`): the model class is a
source file copied into the model (tasks/specialists/mlflow_model.py, tasks/generalist/mlflow_model.py), the weights
stay safetensors artifacts, and the project modules that code imports ride along as `code_paths`, so loading needs the
pinned packages only and never unpickles anything. Registered names and aliases:

| registered model | what | aliases |
| --- | --- | --- |
| `specialist-<dataset>-<arch>` | one specialist (images -> class probabilities) | `latest-run`; `rad-retriever` on the one keying the dataset's RAD table |
| `meddr` | the merged MedDr (image + prompt -> text) | `latest-run` |
| `meddr-adapter` | the LoRA adapter over its base (`models:/<base model id>`) | `latest-run` |

`latest-run` is the version the most recent benchmark run on the store used (a cached rerun moves it back to the
version it served); `rad-retriever` moves to the architecture chosen on validation, and leaves the others.
"""
from __future__ import annotations

import json
import modulefinder
import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelInput, LoggedModelOutput

from tasks.tracking import RUN_LOCK, ensure_experiment

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("tasks", "data_contracts")
LATEST_RUN, RAD_RETRIEVER = "latest-run", "rad-retriever"
MODEL_VERSIONS_TAG = "mlflow.modelVersions"   # MLflow's own tag on a LoggedModel: its registered versions
LOADABLE_TAG = "gsco.loadable"                # "pyfunc" on models `mlflow.pyfunc.load_model` can load


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


def find_model(uri: str, experiment: str, name: str, digest: str, loadable: bool = False) -> str | None:
    """The id of a READY LoggedModel with this name and digest (so cached stages link to the model they made);
    `loadable`: only one logged by `log_code_model` (a store's older raw-file models are passed over)."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    wanted = f"name = '{name}' AND tags.`gsco.digest` = '{digest}'"
    if loadable:
        wanted += f" AND tags.`{LOADABLE_TAG}` = 'pyfunc'"
    found = client.search_logged_models(experiment_ids=[exp.experiment_id], filter_string=wanted, max_results=1)
    return found[0].model_id if found else None


def pinned(*distributions: str) -> list[str]:
    """`name==version` of installed distributions: a logged model's pip requirements, as this run has them."""
    return [f"{d}=={metadata.version(d)}" for d in distributions]


def stage_project_code(code_file: Path, dest: Path) -> list[str]:
    """Copy the project modules `code_file` imports (transitively, function-level imports included) into `dest`,
    package layout kept; returns the top-level package folders (a model's `code_paths`)."""
    finder = modulefinder.ModuleFinder(path=[str(REPO_ROOT)])   # only project modules resolve: fast, exact
    finder.run_script(str(code_file))
    tops = set()
    for name, mod in finder.modules.items():
        if name.split(".")[0] not in PROJECT_PACKAGES or not mod.__file__:
            continue
        src = Path(mod.__file__)
        target = dest / src.relative_to(REPO_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        tops.add(name.split(".")[0])
    return [str(dest / t) for t in sorted(tops)]


def log_code_model(name: str, code_file: Path, artifacts: dict[str, str], digest: str, model_type: str, *,
                   requirements: list[str], registered_name: str, params: dict | None = None,
                   tags: dict | None = None, model_config: dict | None = None, signature=None) -> dict:
    """Log a pyfunc "models from code" LoggedModel as an output of the active run (no pickle: `code_file` is copied,
    weights stay in `artifacts`), tagged with `gsco.digest`, and register it as `registered_name`.

    Returns {"model_id", "registered": {"name", "version"}}."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # per model, MLflow would advise an input example and predict() type hints: the signature says it all
        warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\.")
        code_paths = stage_project_code(Path(code_file), Path(tmp))
        info = mlflow.pyfunc.log_model(
            name=name, python_model=str(code_file), artifacts=artifacts, code_paths=code_paths,
            pip_requirements=requirements, model_config=model_config, signature=signature,
            registered_model_name=registered_name, model_type=model_type,
            params={k: str(v) for k, v in (params or {}).items()},
            tags={**(tags or {}), "gsco.digest": digest, LOADABLE_TAG: "pyfunc"})
    return {"model_id": info.model_id,
            "registered": {"name": registered_name, "version": str(info.registered_model_version)}}


def registered_version(uri: str, registered_name: str, model_id: str) -> str | None:
    """The version of `registered_name` that registers the LoggedModel `model_id` (None: not registered)."""
    m = MlflowClient(tracking_uri=uri).get_logged_model(model_id)
    for v in json.loads(m.tags.get(MODEL_VERSIONS_TAG) or "[]"):
        if v.get("name") == registered_name:
            return str(v["version"])
    return None


def set_alias(uri: str, registered_name: str, alias: str, version: str | None) -> None:
    """Point `alias` of a registered model at `version` (nothing when the model was never registered)."""
    if version is None:
        return
    with RUN_LOCK:
        MlflowClient(tracking_uri=uri).set_registered_model_alias(registered_name, alias, str(version))


def drop_alias(uri: str, registered_name: str, alias: str) -> None:
    """Remove `alias` from a registered model when it carries it."""
    client = MlflowClient(tracking_uri=uri)
    with RUN_LOCK:
        try:
            aliases = client.get_registered_model(registered_name).aliases
        except mlflow.exceptions.MlflowException:   # never registered
            return
        if alias in aliases:
            client.delete_registered_model_alias(registered_name, alias)


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


def _source_uri(source: str) -> str:
    return json.loads(source).get("uri", source) if source.startswith("{") else source


def _run_summary(client: MlflowClient, run, describe) -> dict:
    inputs = []
    for di in run.inputs.dataset_inputs:
        tags = {t.key: t.value for t in di.tags}
        inputs.append({"name": di.dataset.name, "digest": di.dataset.digest, "context": tags.get("mlflow.data.context"),
                       "source": _source_uri(di.dataset.source),
                       "tags": {k: v for k, v in tags.items() if not k.startswith("mlflow.")}})
    models_in = [m.model_id for m in (run.inputs.model_inputs or [])]
    models_out = [m.model_id for m in (run.outputs.model_outputs or [])] if run.outputs else []
    stage = run.data.tags.get("gsco.stage")
    out = {"run_id": run.info.run_id, "name": run.info.run_name, "stage": stage,
           "status": run.info.status, "datasets": inputs, "models_in": [describe(m) for m in models_in],
           "models_out": [describe(m) for m in models_out],
           "tags": {k: v for k, v in run.data.tags.items() if k.startswith("gsco.")}}
    if stage == "index":   # the retriever chosen per dataset, and the validation scores it was chosen on
        out["metrics"], out["params"] = dict(run.data.metrics), dict(run.data.params)
    return out


def _describer(client: MlflowClient):
    """describe(model_id) -> {model_id, name, digest, source_run, registered: [{name, version, aliases}]}, cached."""
    models: dict[str, dict] = {}
    aliases: dict[str, dict[str, str]] = {}

    def registered_aliases(name: str) -> dict[str, str]:
        if name not in aliases:
            try:
                aliases[name] = dict(client.get_registered_model(name).aliases)
            except mlflow.exceptions.MlflowException:
                aliases[name] = {}
        return aliases[name]

    def describe(mid: str) -> dict:
        if mid not in models:
            m = client.get_logged_model(mid)
            registered = []
            for v in json.loads(m.tags.get(MODEL_VERSIONS_TAG) or "[]"):
                by_alias = registered_aliases(v["name"])
                registered.append({"name": v["name"], "version": str(v["version"]),
                                   "aliases": sorted(a for a, ver in by_alias.items() if str(ver) == str(v["version"]))})
            models[mid] = {"model_id": mid, "name": m.name, "digest": m.tags.get("gsco.digest"),
                           "source_run": m.source_run_id, "registered": registered}
            if m.name.startswith("specialist-"):   # what it was chosen on lies in the run that trained it
                src = client.get_run(m.source_run_id)
                ds, arch = src.data.tags.get("gsco.specialist.dataset"), src.data.tags.get("gsco.specialist.arch")
                if ds is None:   # runs recorded before these tags: the registered name says it
                    ds, arch = m.name.removeprefix("specialist-").rsplit("-", 1)
                models[mid].update(dataset=ds, arch=arch, fingerprint=m.tags.get("gsco.specialist.fingerprint"),
                                   source_metrics={k: v for k, v in src.data.metrics.items() if k.startswith("val_")})
        return models[mid]
    return describe


def lineage(uri: str, run_id: str) -> dict:
    """The run (a benchmark parent or any stage run), its child stage runs, and for each what it read and wrote;
    `summary` (lineage_summary) gathers the facts a reader asks first."""
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'", max_results=5000,
                                  order_by=["attributes.start_time ASC"])
    describe = _describer(client)
    # search results omit model inputs: read each run in full
    tree = {"run": _run_summary(client, run, describe),
            "stages": [_run_summary(client, client.get_run(c.info.run_id), describe) for c in children]}
    tree["summary"] = lineage_summary(tree)
    return tree


def lineage_summary(tree: dict) -> dict:
    """What a number rests on, from a lineage tree: per dataset its raw digest, source and split tables; the LanceDB
    tables (digest, version, retriever); the specialists per dataset (architecture, weights digest, validation
    metric, which one keys RAD, registered version); MedDr, its adapter and base (digests, registered versions)."""
    runs = [tree["run"], *tree["stages"]]
    datasets: dict[str, dict] = {}
    for r in runs:
        for d in r["datasets"]:
            if d["context"] != "output" or "gsco.raw_digest" not in d["tags"]:
                continue
            ds, split = d["name"].split("/", 1)
            entry = datasets.setdefault(ds, {"raw_digest": d["tags"]["gsco.raw_digest"],
                                             "source": d["tags"].get("gsco.source"), "splits": {}})
            entry["splits"][split] = {"digest": d["digest"], "rows": int(d["tags"].get("gsco.rows", -1)),
                                      "table": d["source"]}
    index_runs = [r for r in runs if r["stage"] == "index"]
    indexes, retrievers = {}, {}
    for r in index_runs:
        for d in r["datasets"]:
            if d["context"] == "output" and d["name"].startswith("index/"):
                _, ds, arch = d["name"].split("/", 2)
                indexes[f"{ds}/{arch}"] = {"dataset": ds, "retriever": arch, "digest": d["digest"],
                                           "lancedb_version": d["tags"].get("gsco.lancedb.version"),
                                           "lancedb_tag": d["tags"].get("gsco.lancedb.tag"), "uri": d["source"]}
        for key, value in r["params"].items():
            if key.endswith(".retriever"):
                ds = key.removesuffix(".retriever")
                retrievers[ds] = {"arch": value, "rule": r["params"].get(f"{ds}.retriever_rule"),
                                  "metric": r["params"].get(f"{ds}.retriever_metric"),
                                  "scores": {k.rsplit(".", 1)[1]: v for k, v in r["metrics"].items()
                                             if k.startswith(f"{ds}.retriever_val.")}}
    specialists: dict[str, list[dict]] = {}
    seen = set()
    # a cached rerun trains nothing: its specialists are the models its index and evaluation runs read
    for m in (m for r in runs for m in r["models_out"] + r["models_in"] if m["name"].startswith("specialist-")):
        if m["model_id"] in seen:
            continue
        seen.add(m["model_id"])
        ds, arch = m["dataset"], m["arch"]
        metric = retrievers.get(ds, {}).get("metric")
        specialists.setdefault(ds, []).append({
            "arch": arch, "digest": m["digest"], "model_id": m["model_id"], "run_id": m["source_run"],
            "fingerprint": m.get("fingerprint"), "val_metric": metric,
            "val_score": m["source_metrics"].get(metric) if metric else None,
            "rad_retriever": retrievers.get(ds, {}).get("arch") == arch, "registered": m["registered"]})
    generalist = {}
    for r in runs:
        for m in r["models_out"]:
            if not m["name"].startswith("specialist-"):
                generalist[m["name"]] = {"digest": m["digest"], "model_id": m["model_id"],
                                         "registered": m["registered"]}
    for r in runs:   # a cached stage links the model it made in an earlier run: an input, not an output, here
        for m in r["models_in"]:
            if not m["name"].startswith("specialist-"):
                generalist.setdefault(m["name"], {"digest": m["digest"], "model_id": m["model_id"],
                                                  "registered": m["registered"]})
    run_tags = tree["run"]["tags"]
    return {"run_id": tree["run"]["run_id"], "commit": run_tags.get("gsco.git_commit"),
            "profile": run_tags.get("gsco.profile"), "report_run_id": run_tags.get("gsco.report.run_id"),
            "datasets": datasets, "indexes": indexes, "retrievers": retrievers,
            "specialists": {d: sorted(v, key=lambda x: x["arch"]) for d, v in sorted(specialists.items())},
            "generalist": generalist}


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
