"""The team setup for real: a Prefect server and an MLflow server on this machine's PostgreSQL (databases of their
own, created by infra/team/services.py and dropped afterwards), MLflow artifacts through the server's proxy; 200 light
jobs fanned out on them (perf/orchestration_load.py); `prefect deploy --all` for whichever pool exists; the
docker-compose file in step with the local recipe. PostgreSQL: GSCO_TEST_PG (default the machine's 127.0.0.1:5432).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from infra.team.services import PG_ADMIN, db_url, mlflow_server_args, prefect_server_args, temporary_team

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG = os.environ.get("GSCO_TEST_PG", PG_ADMIN)
DEPLOYMENTS = {"full", "tiny", "ingest-full", "generalist-full", "specialists-full", "evaluation-full"}


def pg_query(database: str, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows of `sql` on `database` of the test PostgreSQL."""
    import psycopg2

    conn = psycopg2.connect(db_url(PG, database))
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def rest(url: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    with temporary_team(tmp_path_factory.mktemp("team"), pg=PG) as svc:
        yield svc


def _env(team, home: Path) -> dict:
    return {**os.environ, "PREFECT_API_URL": team.cfg.prefect_api_url, "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": os.pathsep.join(
                [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]), "GSCO_REPO": str(REPO)}


def test_servers_store_in_postgresql_and_proxy_artifacts(team, tmp_path):
    """A run logged through the MLflow server lands in its PostgreSQL database, its artifact in the proxy's store;
    the Prefect server's schema is in its own database."""
    cfg = team.cfg
    script = ("import mlflow, sys\nmlflow.set_tracking_uri(sys.argv[1])\n"
              "with mlflow.start_run(run_name='team-check') as r:\n"
              "    mlflow.log_param('p', 1); mlflow.log_text('hello', 'notes/hello.txt')\n"
              "print(r.info.run_id, r.info.artifact_uri)")
    out = subprocess.run([sys.executable, "-c", script, cfg.mlflow_uri], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"})
    assert out.returncode == 0, out.stderr[-2000:]
    run_id, artifact_uri = out.stdout.split()[-2:]
    assert artifact_uri.startswith("mlflow-artifacts:/"), artifact_uri   # the client never writes the store itself
    assert pg_query(cfg.mlflow_db, "SELECT name, status FROM runs WHERE run_uuid = %s", (run_id,)) == \
        [("team-check", "FINISHED")]
    stored = list(cfg.artifacts_dir.rglob("notes/hello.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "hello" and run_id in str(stored[0])
    assert pg_query(cfg.prefect_db, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'flow_run'") \
        == [(1,)]
    assert rest(f"{cfg.prefect_api_url}/health") is True


def test_load_200_jobs(team, tmp_path):
    """200 light jobs fanned out as Prefect tasks on the PostgreSQL-backed server: 200 task runs Completed in its
    database, one FINISHED MLflow run per job (none lost, none duplicated); the perf script prints the overhead."""
    cfg, n = team.cfg, 200
    out = tmp_path / "load.json"
    r = subprocess.run([sys.executable, str(REPO / "perf" / "orchestration_load.py"), "--jobs", str(n), "--rounds",
                        "1", "--prefect-api-url", cfg.prefect_api_url, "--tracking-uri", cfg.mlflow_uri,
                        "--json", str(out)], env=_env(team, tmp_path / "home"), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "orchestration overhead per job:" in r.stdout
    res = json.loads(out.read_text())
    (prefect_batch,) = [b for b in res["batches"] if b["mode"] == "prefect"]
    # counted here from the two databases, not from the script's own report
    assert pg_query(cfg.prefect_db, "SELECT state_type, count(*) FROM task_run WHERE flow_run_id = %s GROUP BY 1",
                    (prefect_batch["flow_run_id"],)) == [("COMPLETED", n)]
    assert pg_query(cfg.prefect_db, "SELECT state_type FROM flow_run WHERE id = %s",
                    (prefect_batch["flow_run_id"],)) == [("COMPLETED",)]
    for b in res["batches"]:
        rows = pg_query(cfg.mlflow_db, "SELECT t.value, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                                       "WHERE t.key = 'gsco.load.batch' AND t.value = %s", (b["batch"],))
        assert len(rows) == n and {s for _, s in rows} == {"FINISHED"}, (b["batch"], len(rows))
        jobs = pg_query(cfg.mlflow_db, "SELECT j.value FROM tags j JOIN tags b ON b.run_uuid = j.run_uuid "
                                       "WHERE j.key = 'gsco.load.job' AND b.key = 'gsco.load.batch' AND b.value = %s",
                        (b["batch"],))
        assert sorted(int(j) for (j,) in jobs) == list(range(n))          # each job exactly once
    assert isinstance(res["overhead_ms_per_job"], float)


def test_deploy_all_for_the_pool_a_user_has(team, tmp_path):
    """`prefect deploy --all` with only the process pool deploys every deployment onto it; the Kubernetes file does
    the same for a Kubernetes pool alone (before: the first deployment named the other pool and --all stopped)."""
    env = _env(team, tmp_path / "home")

    def prefect(*args):
        r = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], env=env, cwd=REPO, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, f"prefect {' '.join(args)}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"

    def deployments() -> dict[str, str]:
        return {d["name"]: d["work_pool_name"] for d in rest(f"{team.cfg.prefect_api_url}/deployments/filter", {})}

    prefect("work-pool", "create", "gsco-process", "--type", "process", "--base-job-template",
            str(REPO / "infra" / "work_pools" / "process.json"))
    prefect("deploy", "--all")
    assert deployments() == {name: "gsco-process" for name in DEPLOYMENTS}

    prefect("work-pool", "delete", "gsco-process")
    prefect("work-pool", "create", "gsco-gpu", "--type", "kubernetes", "--base-job-template",
            str(REPO / "infra" / "work_pools" / "kubernetes-gpu.json"))
    prefect("deploy", "--all", "--prefect-file", "infra/deployments/kubernetes.yaml")
    deployed = rest(f"{team.cfg.prefect_api_url}/deployments/filter", {})
    assert {d["name"]: d["work_pool_name"] for d in deployed} == {name: "gsco-gpu" for name in DEPLOYMENTS}
    assert {d["name"]: d["job_variables"].get("gpus") for d in deployed}["full"] == 8
    for d in deployed:
        assert d["pull_steps"] == [{"flows.checkout.enter_checkout": {}}]


def test_pull_step_names_gsco_repo(tmp_path, monkeypatch):
    from flows.checkout import CheckoutError, enter_checkout

    monkeypatch.delenv("GSCO_REPO", raising=False)
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    with pytest.raises(CheckoutError, match=r"^GSCO_REPO is not set in this worker's environment") as e:
        enter_checkout()
    assert "\n" not in str(e.value)
    monkeypatch.setenv("GSCO_REPO", str(tmp_path))
    with pytest.raises(CheckoutError, match=rf"^GSCO_REPO={tmp_path}: not a gsco-pipeline checkout"):
        enter_checkout()
    monkeypatch.setenv("GSCO_REPO", str(REPO))
    monkeypatch.chdir(tmp_path)
    assert enter_checkout() == {"directory": str(REPO)} and Path.cwd() == REPO


def test_setup_errors_are_one_line(tmp_path):
    def up(*args):
        return subprocess.run([sys.executable, "-m", "infra.team.services", "up", "--state", str(tmp_path), *args],
                              cwd=REPO, capture_output=True, text=True, timeout=60)

    r = up("--pg", "postgresql://gsco:secret@127.0.0.1:5432/postgres")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "PGPASSWORD" in r.stderr and "secret" not in r.stderr
    r = up("--pg", "postgresql://postgres@127.0.0.1:1/postgres")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: PostgreSQL at postgresql://postgres@127.0.0.1:1/postgres (--pg): ")


def _flags(argv: list[str]) -> dict[str, str | None]:
    """{--flag: its value or None} of a command line (values that are URLs, paths or ports kept as given)."""
    out, i = {}, 0
    while i < len(argv):
        if argv[i].startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
            out[argv[i]] = nxt
            i += 2 if nxt is not None else 1
        else:
            i += 1
    return out


def test_compose_in_step_with_the_local_recipe():
    """Pinned images, non-root users, the same server flags and databases as infra/team/services.py, and no password
    inside a URL."""
    compose = yaml.safe_load((REPO / "infra" / "team" / "docker-compose.yml").read_text())
    services = compose["services"]
    for name, s in services.items():
        image = s.get("image", "")
        tag = image.rsplit(":", 1)[-1] if ":" in image else ""
        assert tag and tag != "latest" and any(c.isdigit() for c in tag), f"{name}: image {image!r} not pinned"
        if "build" in s:
            dockerfile = (REPO / "infra" / "team" / s["build"]["dockerfile"]).read_text()
            base = [ln.split()[1] for ln in dockerfile.splitlines() if ln.startswith("FROM ")]
            assert base and all(":" in b and not b.endswith(":latest") for b in base), base
            assert any(ln.startswith("USER ") and ln.split()[1] not in ("root", "0") for ln in dockerfile.splitlines())
        else:
            assert s.get("user") not in (None, "root", "0", "0:0"), f"{name}: runs as root"
    mlflow_cmd = services["mlflow"]["command"]
    assert mlflow_cmd[:2] == ["mlflow", "server"]
    local = _flags(mlflow_server_args(5000, "/mlartifacts", 2))
    assert _flags(mlflow_cmd[1:]) == {**local, "--host": "0.0.0.0"}
    prefect_cmd = services["prefect-server"]["command"]
    assert prefect_cmd[0] == "prefect"
    assert _flags(prefect_cmd[1:]) == {**_flags(prefect_server_args(4200)), "--host": "0.0.0.0"}
    # the same databases and drivers as the local recipe, the password only in PGPASSWORD
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"] == \
        db_url("postgresql://gsco@postgres:5432/postgres", "gsco_mlflow", "psycopg2")
    assert services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"] == \
        db_url("postgresql://gsco@postgres:5432/postgres", "gsco_prefect", "asyncpg")
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "gsco_prefect"
    assert "CREATE DATABASE gsco_mlflow" in (REPO / "infra" / "team" / "postgres-init.sql").read_text()
    for name in ("mlflow", "prefect-server"):
        assert "PGPASSWORD" in services[name]["environment"]
    for s in services.values():
        assert all(p.startswith("127.0.0.1:") for p in s.get("ports", [])), s.get("ports")
