"""Per-job orchestration overhead on the team services: N light jobs (each one MLflow run: create, a param, a metric,
end) on the PostgreSQL-backed MLflow server, called directly from a thread pool and fanned out as N Prefect tasks of
one flow on the PostgreSQL-backed Prefect server (same pool size), alternating, in the same run; overhead per job =
(median Prefect batch - median direct batch) / N.

    python perf/orchestration_load.py                   # 200 jobs; its own servers on fresh databases, dropped after
    python perf/orchestration_load.py --jobs 200 --prefect-api-url http://127.0.0.1:4200/api \\
        --tracking-uri http://127.0.0.1:5000            # against running team services (infra/team/services.py)

Checks what it measures: every flow run Completed with N task runs Completed on the server, and exactly one FINISHED
MLflow run per job of every batch (no run lost, none duplicated); exits 1 otherwise. Prints a table and writes JSON
(default perf/measured/orchestration_load_cpu.json). On this 2-core machine: see that file.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "gsco-orchestration-load"


def light_job(uri: str, experiment_id: str, batch: str, index: int) -> str:
    """One MLflow run tagged with its batch and index, a param, a metric, ended FINISHED; its run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(experiment_id, tags={"gsco.load.batch": batch, "gsco.load.job": str(index)},
                            run_name=f"job-{index}")
    client.log_param(run.info.run_id, "index", index)
    client.log_metric(run.info.run_id, "value", float(index))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _post(url: str, body: dict) -> object:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def mlflow_runs(uri: str, experiment_id: str, batch: str) -> list[dict]:
    """Every run of `batch` (REST runs/search, all pages): {run_id, status, job}."""
    out, token = [], None
    while True:
        body = {"experiment_ids": [experiment_id], "filter": f"tags.`gsco.load.batch` = '{batch}'",
                "max_results": 1000, **({"page_token": token} if token else {})}
        page = _post(f"{uri}/api/2.0/mlflow/runs/search", body)
        for r in page.get("runs", []):
            tags = {t["key"]: t["value"] for t in r["data"].get("tags", [])}
            out.append({"run_id": r["info"]["run_id"], "status": r["info"]["status"], "job": tags["gsco.load.job"]})
        token = page.get("next_page_token")
        if not token:
            return out


def runs_check(runs: list[dict], n: int) -> dict:
    """Lost, duplicated and unfinished jobs among `runs` of one batch of `n` jobs."""
    jobs = [int(r["job"]) for r in runs]
    return {"runs": len(runs), "lost": sorted(set(range(n)) - set(jobs)),
            "duplicated": sorted({j for j in jobs if jobs.count(j) > 1}),
            "not_finished": sorted(r["job"] for r in runs if r["status"] != "FINISHED")}


def completed_task_runs(api: str, flow_run_id: str, timeout: float = 120) -> tuple[int, int, float]:
    """(task runs of the flow run, of them Completed, seconds until the server held them all) (REST count)."""
    flt = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    t0, deadline = time.perf_counter(), time.time() + timeout
    while True:
        total = _post(f"{api}/task_runs/count", flt)
        done = _post(f"{api}/task_runs/count", {**flt, "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
        if (total and done == total) or time.time() > deadline:   # task runs reach the server through events
            return total, done, time.perf_counter() - t0
        time.sleep(0.5)


def measure(api: str, uri: str, n: int, workers: int, rounds: int) -> dict:
    """Both modes on the running services, `rounds` times each in alternating order (a loaded machine drifts); the
    median wall times and the checks of every batch."""
    import statistics

    import mlflow
    from prefect import flow, task, unmapped
    from prefect.runtime import flow_run
    from prefect.task_runners import ThreadPoolTaskRunner

    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp else mlflow.create_experiment(EXPERIMENT)
    light_job(uri, exp_id, "warm-up", 0)   # connections, imports: paid once by either mode
    light = task(name="light-job")(light_job)

    @flow(name="orchestration-load", task_runner=ThreadPoolTaskRunner(max_workers=workers))
    def fan_out(batch: str) -> dict:
        futures = light.map(unmapped(uri), unmapped(exp_id), unmapped(batch), range(n))
        return {"flow_run_id": str(flow_run.id), "run_ids": [f.result() for f in futures]}

    def direct(batch: str) -> dict:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda i: light_job(uri, exp_id, batch, i), range(n)))
        return {}

    def prefect(batch: str) -> dict:
        state = fan_out(batch, return_state=True)
        res = state.result(raise_on_failure=False)
        flow_run_id = res["flow_run_id"] if isinstance(res, dict) else None
        total, completed, lag = completed_task_runs(api, flow_run_id) if flow_run_id else (0, 0, 0.0)
        return {"flow_run_id": flow_run_id, "flow_state": state.type.value, "task_runs": total,
                "task_runs_completed": completed, "server_persist_lag_s": lag}

    batches = []
    for r in range(rounds):
        for mode, fn in (("direct", direct), ("prefect", prefect))[::1 if r % 2 == 0 else -1]:
            batch = f"{mode}-{uuid.uuid4().hex[:8]}"
            t = time.perf_counter()
            extra = fn(batch)
            batches.append({"mode": mode, "batch": batch, "wall_s": time.perf_counter() - t, **extra})
    for b in batches:
        b["mlflow"] = runs_check(mlflow_runs(uri, exp_id, b["batch"]), n)
    walls = {m: statistics.median(b["wall_s"] for b in batches if b["mode"] == m) for m in ("direct", "prefect")}
    return {"jobs": n, "workers": workers, "rounds": rounds, "direct_s": walls["direct"],
            "prefect_s": walls["prefect"], "overhead_ms_per_job": 1000 * (walls["prefect"] - walls["direct"]) / n,
            "direct_ms_per_job": 1000 * walls["direct"] / n, "prefect_ms_per_job": 1000 * walls["prefect"] / n,
            "batches": batches, "experiment_id": exp_id}


def ok(res: dict) -> list[str]:
    """What is wrong with a measurement (empty: every check holds)."""
    n, bad = res["jobs"], []
    for b in res["batches"]:
        if b["mode"] == "prefect":
            if b["flow_state"] != "COMPLETED":
                bad.append(f"flow run {b['flow_run_id']} ended {b['flow_state']}")
            if b["task_runs"] != n or b["task_runs_completed"] != n:
                bad.append(f"flow run {b['flow_run_id']}: {b['task_runs_completed']} of {b['task_runs']} task runs "
                           f"Completed on the server, expected {n} of {n}")
        c = b["mlflow"]
        if c["runs"] != n or c["lost"] or c["duplicated"] or c["not_finished"]:
            bad.append(f"{b['batch']}: {c['runs']} MLflow runs for {n} jobs (lost {c['lost'][:5]}, duplicated "
                       f"{c['duplicated'][:5]}, not finished {c['not_finished'][:5]})")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=8, help="thread pool size of both modes")
    ap.add_argument("--rounds", type=int, default=3, help="batches per mode (alternating order; medians reported)")
    ap.add_argument("--prefect-api-url", help="a running Prefect server (default: start one on a fresh database)")
    ap.add_argument("--tracking-uri", help="a running MLflow server (with --prefect-api-url)")
    ap.add_argument("--pg", default=None, help="PostgreSQL admin URL for the servers this script starts")
    ap.add_argument("--json", type=Path, default=REPO / "perf" / "measured" / "orchestration_load_cpu.json")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from infra.team.services import PG_ADMIN, temporary_team

    with tempfile.TemporaryDirectory(prefix="gsco-load-") as tmp:
        os.environ.setdefault("PREFECT_HOME", str(Path(tmp) / "prefect-home"))
        os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"   # one "View run" line per job otherwise
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        if a.prefect_api_url:
            if not a.tracking_uri:
                ap.error("--prefect-api-url needs --tracking-uri")
            os.environ["PREFECT_API_URL"] = a.prefect_api_url
            res = measure(a.prefect_api_url, a.tracking_uri, a.jobs, a.workers, a.rounds)
            res["services"] = "given"
        else:
            with temporary_team(Path(tmp) / "team", pg=a.pg or PG_ADMIN) as svc:
                os.environ["PREFECT_API_URL"] = svc.cfg.prefect_api_url   # before Prefect reads its settings
                res = measure(svc.cfg.prefect_api_url, svc.cfg.mlflow_uri, a.jobs, a.workers, a.rounds)
                res["services"] = "started: PostgreSQL databases of their own, dropped after"
    res.update(machine=platform.machine(), cpus=os.cpu_count(), python=platform.python_version())
    load = os.getloadavg()[0]
    res["load_average_1min"] = load
    print(f"{'mode':10s} {'jobs':>5s} {'workers':>7s} {'rounds':>6s} {'median s':>9s} {'ms/job':>8s}")
    for mode in ("direct", "prefect"):
        print(f"{mode:10s} {a.jobs:5d} {a.workers:7d} {a.rounds:6d} {res[mode + '_s']:9.2f} "
              f"{res[mode + '_ms_per_job']:8.1f}")
    lags = [b["server_persist_lag_s"] for b in res["batches"] if b["mode"] == "prefect"]
    print(f"orchestration overhead per job: {res['overhead_ms_per_job']:.1f} ms  (load average {load:.1f} on "
          f"{os.cpu_count()} CPUs; task runs all held by the server up to {max(lags):.1f} s after their flow returned)")
    problems = ok(res)
    res["problems"] = problems
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(res, indent=2))
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
