"""The deployment path end to end on the team services: a Prefect server and an MLflow server, both on this machine's
PostgreSQL (infra/team/services.py, databases of their own, dropped afterwards), MLflow artifacts through the server's
proxy. `prefect deploy --all` (prefect.yaml: the process pool), `prefect deployment run benchmark/tiny` with the micro
profile, a process worker runs it; the MLflow server is killed (kill -9) while the specialist jobs record and
restarted on the same port and database, and no record is lost or doubled; the lineage is read through MLflow's REST
API from the report's run down to the raw digests of `tables/<dataset>/_dataset.json`; a second run is served from
cache at every stage; a worker without GSCO_REPO fails the flow run with one line naming it.
PostgreSQL: GSCO_TEST_PG (default the machine's 127.0.0.1:5432).
"""
from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from data_contracts.io import read_manifest
from infra.team.services import PG_ADMIN, temporary_team
from tasks.lineage import lineage_digests
from tasks.specialists.stage import weights_digest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG = os.environ.get("GSCO_TEST_PG", PG_ADMIN)
STAGES = {"ingest", "generalist-base", "synthesis", "corpus", "finetune", "index", "evaluation"}


class MlflowRest:
    """MLflow's REST API, read with urllib (what any tool of a team would use; not the Python client)."""

    def __init__(self, uri: str):
        self.uri = uri

    def call(self, path: str, body: dict | None = None, **query) -> dict:
        url = f"{self.uri}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def run(self, run_id: str) -> dict:
        return self.call("runs/get", run_id=run_id)["run"]

    def search(self, experiment_id: str, filter_string: str) -> list[dict]:
        runs, token = [], None
        while True:
            page = self.call("runs/search", {"experiment_ids": [experiment_id], "filter": filter_string,
                                             "max_results": 1000, **({"page_token": token} if token else {})})
            runs += page.get("runs", [])
            token = page.get("next_page_token")
            if not token:
                return runs

    def experiment_id(self, name: str) -> str | None:
        try:
            return self.call("experiments/get-by-name", experiment_name=name)["experiment"]["experiment_id"]
        except urllib.error.HTTPError:
            return None


def tags(entity: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in entity.get("tags", entity.get("data", {}).get("tags", [])) or []}


def datasets(run: dict, context: str) -> list[dict]:
    """{name, digest, tags} of the run's dataset inputs with the given mlflow.data.context."""
    out = []
    for di in run.get("inputs", {}).get("dataset_inputs", []):
        t = tags(di)
        if t.get("mlflow.data.context") == context:
            out.append({"name": di["dataset"]["name"], "digest": di["dataset"]["digest"], "tags": t})
    return out


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    with temporary_team(tmp_path_factory.mktemp("team"), pg=PG) as svc:
        yield svc


@pytest.fixture(scope="module")
def env(team, tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    return {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_URL": team.cfg.prefect_api_url, "GSCO_REPO": str(REPO), "PREFECT_LOGGING_LEVEL": "WARNING",
            "OMP_NUM_THREADS": "2", "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get(
                "PYTHONPATH")])]),
            # the MLflow client's retries (MLflow's defaults, spelled out): ~2 minutes of backoff bridge a restart
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "120"}


def _prefect(env, *args, timeout=600) -> str:
    r = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"prefect {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def _flow_run(env, params: dict) -> str:
    text = _prefect(env, "deployment", "run", "benchmark/tiny", "--params", json.dumps(params))
    return re.search(r"UUID:\s*([0-9a-f-]{36})", text).group(1)


def _state(env, flow_run_id: str) -> dict:
    with urllib.request.urlopen(f"{env['PREFECT_API_URL']}/flow_runs/{flow_run_id}", timeout=60) as r:
        state = json.loads(r.read())["state"]
    return {"type": state["type"], "name": state["name"], "msg": state["message"]}


def _worker(env, log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([str(BIN / "prefect"), "--no-prompt", "worker", "start", "--pool", "gsco-process",
                                 "--run-once"], env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _kill_mlflow_while_specialists_record(team, rest: MlflowRest, out: Path, worker: subprocess.Popen) -> dict:
    """kill -9 the MLflow server as soon as the first specialist job's run exists (its record still being written),
    keep it down a few seconds, restart it on the same port and database; what was pending when it died."""
    deadline = time.time() + 900
    while time.time() < deadline and worker.poll() is None:
        exp = rest.experiment_id("gsco-micro")
        if exp and rest.search(exp, "tags.`gsco.stage` = 'specialists'"):
            break
        time.sleep(0.25)
    else:
        pytest.fail(f"no specialist run appeared in MLflow (worker exit {worker.poll()})")
    team.kill_mlflow()
    killed_at = time.time()
    pending = [str(d.parent) for d in out.glob("specialists/*/*/done.json")
               if not (d.parent / "mlflow_run.json").exists()]
    time.sleep(5)   # requests fail meanwhile: the client retries
    team.start_mlflow()
    return {"pending": pending, "killed_at": killed_at, "down_s": time.time() - killed_at}


def _walk_to_raw(rest: MlflowRest, start: dict, children: list[dict]) -> dict[str, dict]:
    """From `start`, follow model inputs to the runs that logged the models and dataset inputs to the runs that wrote
    them (same name and digest, context output) until tables an ingest run wrote: {dataset/split: output dataset}."""
    writers = collections.defaultdict(list)
    for c in children:
        for d in datasets(c, "output"):
            writers[(d["name"], d["digest"])].append(c)
    reached, seen, todo = {}, set(), [start]
    while todo:
        run = todo.pop()
        if run["info"]["run_id"] in seen:
            continue
        seen.add(run["info"]["run_id"])
        for m in run.get("inputs", {}).get("model_inputs", []):
            model = rest.call(f"logged-models/{m['model_id']}")["model"]
            todo.append(rest.run(model["info"]["source_run_id"]))
        for d in datasets(run, "input"):
            for w in writers.get((d["name"], d["digest"]), []):
                for o in datasets(w, "output"):
                    if (o["name"], o["digest"]) == (d["name"], d["digest"]) and "gsco.raw_digest" in o["tags"]:
                        reached[o["name"]] = o
                todo.append(w)
    return reached


def test_deploy_run_on_postgresql_services(team, env, tmp_path):
    rest = MlflowRest(team.cfg.mlflow_uri)
    _prefect(env, "work-pool", "create", "gsco-process", "--type", "process",
             "--base-job-template", str(REPO / "infra" / "work_pools" / "process.json"))
    _prefect(env, "deploy", "--all")        # prefect.yaml: every deployment on the process pool, no other pool needed
    out = tmp_path / "out"
    params = {"profile": "micro", "out_dir": str(out), "overrides": [f"tracking.uri={team.cfg.mlflow_uri}"]}

    # a worker without GSCO_REPO: the flow run fails with one line naming it (before: a FileNotFoundError on the
    # worker's temporary folder)
    no_repo = _flow_run(env, params)
    _prefect({k: v for k, v in env.items() if k != "GSCO_REPO"}, "worker", "start", "--pool", "gsco-process",
             "--run-once", timeout=300)
    state = _state(env, no_repo)
    assert state["type"] == "FAILED" and state["msg"].startswith("GSCO_REPO is not set in this worker's environment")
    assert "\n" not in state["msg"] and not out.exists()

    # the run, with the MLflow server killed and restarted while the specialist jobs record
    first = _flow_run(env, params)
    worker = _worker(env, tmp_path / "worker-1.log")
    try:
        outage = _kill_mlflow_while_specialists_record(team, rest, out, worker)
        assert worker.wait(timeout=1500) == 0, (tmp_path / "worker-1.log").read_text()[-4000:]
    finally:
        if worker.poll() is None:
            worker.kill()
    state = _state(env, first)
    assert state["type"] == "COMPLETED", (state, (tmp_path / "worker-1.log").read_text()[-4000:])
    assert outage["pending"], "the kill missed the specialists' recording: nothing was in flight"
    assert "Retrying (Retry(" in (tmp_path / "worker-1.log").read_text()   # the client met the outage and retried
    res1 = json.loads((out / "benchmark_result.json").read_text())
    assert res1["tracking_uri"] == team.cfg.mlflow_uri and res1["stages"]["ingest"] == "computed"
    assert len(res1["recomputed"]["specialists"]) == 4  # micro: 2 architectures x 2 diagnosis sets, all trained

    # every stage run exactly once, FINISHED, with what it read and wrote (REST, from the report's run id)
    parent = rest.run(res1["mlflow_run_id"])
    assert parent["info"]["status"] == "FINISHED"
    exp = parent["info"]["experiment_id"]
    found = rest.search(exp, f"tags.`mlflow.parentRunId` = '{res1['mlflow_run_id']}'")
    names = collections.Counter(r["info"]["run_name"] for r in found)
    assert all(n == 1 for n in names.values()), f"doubled stage runs: {names}"
    assert STAGES <= set(names) and sum(n.startswith("specialist-") for n in names) == 4, names
    children = [rest.run(r["info"]["run_id"]) for r in found]   # search results omit model inputs
    by_name = {c["info"]["run_name"]: c for c in children}
    assert {c["info"]["status"] for c in children} == {"FINISHED"}
    for c in children:
        assert tags(c)["gsco.prefect_flow_run_id"] == first
        if c["info"]["run_name"] != "generalist-base":
            assert c.get("inputs", {}).get("dataset_inputs"), f"{c['info']['run_name']} recorded no dataset"
        logged = [(d["name"], d["digest"], ctx) for ctx in ("input", "output") for d in datasets(c, ctx)]
        assert len(logged) == len(set(logged)), f"{c['info']['run_name']}: a dataset logged twice"
    for name in ("finetune", *(n for n in names if n.startswith("specialist-"))):
        assert by_name[name].get("outputs", {}).get("model_outputs"), f"{name} logged no model"
    assert by_name["evaluation"].get("inputs", {}).get("model_inputs")
    models = rest.call("logged-models/search", {"experiment_ids": [exp], "max_results": 1000}).get("models", [])
    model_names = collections.Counter(m["info"]["name"] for m in models)
    assert all(n == 1 for n in model_names.values()), f"doubled logged models: {model_names}"
    for c in children:   # a specialist recorded during the outage: its run, its metrics and its model complete
        if c["info"]["run_name"].startswith("specialist-"):
            assert len(c["outputs"]["model_outputs"]) == 1
            assert {"val_loss", "train_loss"} <= {m["key"] for m in c["data"].get("metrics", [])}, c["data"]
    restarted_after = outage["killed_at"] * 1000
    assert int(by_name["evaluation"]["info"]["start_time"]) > restarted_after   # the run went on after the restart

    # lineage through REST: the report's run -> evaluation -> models -> their runs -> tables -> raw digests
    reached = _walk_to_raw(rest, by_name["evaluation"], children)
    tables = out / "tables"
    ingested = sorted(p.parent.name for p in tables.glob("*/_dataset.json"))
    assert sorted({n.split("/")[0] for n in reached}) == ingested
    for name, d in reached.items():
        ds, split = name.split("/")
        manifest = read_manifest(tables, ds)
        assert d["tags"]["gsco.raw_digest"] == manifest["meta"]["raw_digest"][:32]
        assert d["tags"]["gsco.source"] == manifest["meta"]["source"]
        assert d["digest"] == manifest["splits"][split]["digest"]

    # a second run: every stage from cache
    second = _flow_run(env, params)
    _prefect(env, "worker", "start", "--pool", "gsco-process", "--run-once", timeout=1200)
    assert _state(env, second)["type"] == "COMPLETED"
    res2 = json.loads((out / "benchmark_result.json").read_text())
    assert res2["mlflow_run_id"] != res1["mlflow_run_id"]
    assert set(res2["stages"].values()) == {"cached"}, res2["stages"]
    assert res2["recomputed"].keys() == res1["recomputed"].keys() and not any(res2["recomputed"].values())

    # gsco lineage on the tracking server: the digests MLflow holds are those of the artifacts on disk
    cli = subprocess.run([str(BIN / "gsco"), "lineage", res2["mlflow_run_id"], "--out", str(out), "--tracking-uri",
                          team.cfg.mlflow_uri, "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    digests = lineage_digests(json.loads(cli.stdout))
    for name, digest in digests["tables"].items():
        ds, split = name.split("/")
        assert read_manifest(tables, ds)["splits"][split]["digest"] == digest
    assert digests["corpus"]["corpus"] == json.loads((out / "corpus" / "_corpus.json").read_text())["digest"]
    ft = json.loads((out / "finetune" / "finetune_result.json").read_text())
    assert digests["models"]["meddr-adapter"] == ft["adapter"]["digest"][:32]
    for job in (out / "specialists").glob("*/*/done.json"):   # a specialist's digest: a hash of its weights
        digest = digests["models"][f"specialist-{job.parent.parent.name}-{job.parent.name}"]
        assert digest == weights_digest(job.parent / "best.safetensors")
    assert digests["index"] and all(len(d) == 32 for d in digests["index"].values())
    assert not (out / "mlflow.db").exists() and not (out / "mlartifacts").exists()   # all of it on the server
