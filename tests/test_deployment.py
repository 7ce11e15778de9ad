"""The deployment path end to end: a real `prefect server` on 127.0.0.1, the process pool, `prefect deploy`,
`prefect deployment run benchmark/tiny` (with the micro profile), a worker runs it; MLflow holds every stage run with
its lineage; a second run is served from cache at every stage; `gsco lineage` names the digests of the artifacts.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from data_contracts.io import read_manifest
from data_contracts.layout import RunLayout
from tasks.lineage import lineage, lineage_digests
from tasks.specialists.stage import weights_digest
from tasks.tracking import tracking_uri

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = {"ingest", "generalist-base", "synthesis", "corpus", "finetune", "index", "evaluation"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "GSCO_REPO": str(REPO),
           "PREFECT_LOGGING_LEVEL": "WARNING", "OMP_NUM_THREADS": "2"}
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
    yield env
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _prefect(env, *args, timeout=600) -> str:
    r = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"prefect {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def _run_deployment(env, out: Path) -> dict:
    text = _prefect(env, "deployment", "run", "benchmark/tiny", "--param", "profile=micro",
                    "--param", f"out_dir={out}")
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", text).group(1)
    _prefect(env, "worker", "start", "--pool", "gsco-process", "--run-once", timeout=1200)
    state = json.loads(subprocess.run(
        [sys.executable, "-c", "import json,sys; from prefect.client.orchestration import get_client\n"
         f"with get_client(sync_client=True) as c: r = c.read_flow_run('{flow_run_id}'); "
         "print(json.dumps({'type': r.state.type.value, 'name': r.state.name, 'msg': r.state.message}))"],
        env=env, capture_output=True, text=True, timeout=120).stdout.strip().splitlines()[-1])
    return {"flow_run_id": flow_run_id, "state": state}


def test_deploy_run_cache_and_lineage(server, tmp_path):
    env = server
    _prefect(env, "work-pool", "create", "gsco-process", "--type", "process",
             "--base-job-template", str(REPO / "infra" / "work_pools" / "process.json"))
    _prefect(env, "deploy", "--name", "tiny")
    out = tmp_path / "out"

    first = _run_deployment(env, out)
    assert first["state"]["type"] == "COMPLETED", first
    res1 = json.loads((out / "benchmark_result.json").read_text())
    uri = tracking_uri(RunLayout(out), None)
    tree = lineage(uri, res1["mlflow_run_id"])
    names = {s["name"] for s in tree["stages"]}
    assert STAGES <= names and any(n.startswith("specialist-") for n in names)
    by_name = {s["name"]: s for s in tree["stages"]}
    for stage in STAGES - {"generalist-base"}:
        assert by_name[stage]["datasets"], f"stage {stage} recorded no dataset"
        assert by_name[stage]["tags"]["gsco.prefect_flow_run_id"]
    assert by_name["finetune"]["models_out"] and by_name["evaluation"]["models_in"]
    assert any(s["stage"] == "specialists" and s["models_out"] for s in tree["stages"])
    assert Path(res1["report"]).exists() and "GSCo" in Path(res1["report_md"]).read_text()
    assert res1["stages"]["ingest"] == "computed"

    second = _run_deployment(env, out)
    assert second["state"]["type"] == "COMPLETED", second
    res2 = json.loads((out / "benchmark_result.json").read_text())
    assert res2["mlflow_run_id"] != res1["mlflow_run_id"]
    assert set(res2["stages"].values()) == {"cached"}, res2["stages"]
    assert res2["recomputed"].keys() == res1["recomputed"].keys() and not any(res2["recomputed"].values())
    assert len(res1["recomputed"]["specialists"]) == 4  # micro: 2 architectures x 2 diagnosis sets, all trained

    # gsco lineage: the digests MLflow holds are those of the artifacts on disk
    cli = subprocess.run([str(BIN / "gsco"), "lineage", res2["mlflow_run_id"], "--out", str(out), "--json"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    digests = lineage_digests(json.loads(cli.stdout))
    tables = out / "tables"
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
    shutil.rmtree(out / "mlartifacts", ignore_errors=True)
