"""What a run shows in Prefect while it works, read back from the Prefect API: the stages' log lines (rows, epochs,
losses, cache hits) in their task runs' logs as they happen, cached units as Cached, queued specialist jobs Pending
(not Running), third-party warnings as one counted line, the report artifact self-contained with its MLflow run.

    OMP_NUM_THREADS=1 pytest -q tests/test_observability.py
"""
from __future__ import annotations

import base64
import json
import logging
import re
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId,
                                            FlowRunFilterStartTime, LogFilter, LogFilterFlowRunId,
                                            LogFilterTaskRunId)

from data_contracts.layout import RunLayout
from tasks.tracking import Tracking, tracking_uri
from tests.helpers import tiny_specialists
from tests.test_finetune import tiny  # noqa: F401  (the tiny model + corpus fixture)


@pytest.fixture()
def info_logs():
    """The run loggers at INFO (the test session runs Prefect at WARNING; Prefect re-reads the setting when it sets
    its logging up again, e.g. as its temporary server starts)."""
    from prefect.logging.configuration import setup_logging
    from prefect.settings import PREFECT_LOGGING_LEVEL, temporary_settings

    with temporary_settings({PREFECT_LOGGING_LEVEL: "INFO"}):
        setup_logging()
        yield
    setup_logging()


def _until(read, what: str, timeout: float = 60):
    """Poll `read()` until it is truthy (the API records runs and logs a moment after they happen)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = read()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"not seen in the Prefect API within {timeout}s: {what}")


def _task_runs(flow_run_id) -> dict[str, object]:
    with get_client(sync_client=True) as c:
        return {t.name: t for t in c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))}


def _logs(*, flow_run_id=None, task_run_id=None) -> list:
    f = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])) if flow_run_id else \
        LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id]))
    with get_client(sync_client=True) as c:
        return c.read_logs(f)


def _tracking(out: Path) -> Tracking:
    return Tracking(uri=tracking_uri(RunLayout(out), None), experiment="test-observe", out_dir=str(out))


# ---------------------------------------------------------------------------------------------- cache hits, row logs
def test_cached_rerun_shows_cached_task_runs_and_logs_rows_and_cache_hits(tiny_copy, tmp_path, info_logs):
    from flows.ingest import ingest

    out = tmp_path / "out"
    runs = []
    for _ in range(2):
        state = ingest(str(tiny_copy), str(out), _tracking(out), datasets=["pneumoniamnist"], return_state=True)
        runs.append((state.state_details.flow_run_id, state.result()))
    (first_id, first), (second_id, second) = runs
    [r1], [r2] = first["results"], second["results"]
    assert (r1["status"], r2["status"]) == ("written", "cached")   # the data comes back through the Cached state

    tr1 = _until(lambda: _task_runs(first_id).get("ingest-pneumoniamnist"), "first ingest task run")
    tr2 = _until(lambda: (t := _task_runs(second_id).get("ingest-pneumoniamnist")) and t.state_name != "Running"
                 and t, "second ingest task run")
    assert (tr1.state_type.value, tr1.state_name) == ("COMPLETED", "Completed")
    assert (tr2.state_type.value, tr2.state_name) == ("COMPLETED", "Cached")

    splits = ", ".join(f"{s} {e['rows']}" for s, e in sorted(r1["splits"].items()))
    rows = sum(e["rows"] for e in r1["splits"].values())
    want1 = f"ingest pneumoniamnist: {rows} rows ({splits}), 0 rejected"
    want2 = f"cache hit: ingest/pneumoniamnist (key {r2['cache_key'][:12]})"
    _until(lambda: want1 in [lg.message for lg in _logs(task_run_id=tr1.id)], want1)
    _until(lambda: want2 in [lg.message for lg in _logs(task_run_id=tr2.id)], want2)


# --------------------------------------------------------------------------------------- queued jobs wait, not run
SPEC_SETTINGS = tiny_specialists(max_epochs=2)
SPEC_DATASETS = ["breastmnist", "pneumoniamnist"]


def test_queued_specialist_jobs_wait_pending_and_log_their_epochs(tiny_root, tmp_path, info_logs):
    from data_contracts.cards import get_card
    from flows.specialists import specialists
    from tasks.ingest.dataset import ingest_dataset
    from tasks.specialists.settings import SpecialistsSettings

    out = tmp_path / "out"
    for ds in SPEC_DATASETS:
        ingest_dataset(get_card(ds), tiny_root, RunLayout(out).tables)
    settings = SpecialistsSettings.model_validate(SPEC_SETTINGS)
    t0 = datetime.now(timezone.utc)
    box = {}
    runner = threading.Thread(target=lambda: box.update(state=specialists(
        str(out), SPEC_DATASETS, settings, _tracking(out), return_state=True)))
    runner.start()

    def flow_run_id():
        with get_client(sync_client=True) as c:
            found = c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["specialists"])),
                                     flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=t0)))
        return found[0].id if found else None

    fr = _until(flow_run_id, "the specialists flow run")
    seen = []   # per poll: {job: state name}
    while runner.is_alive():
        seen.append({n: t.state_name for n, t in _task_runs(fr).items() if n.startswith("specialist-")})
        time.sleep(0.3)
    runner.join()
    result = box["state"].result()
    assert not result["failures"] and len(result["jobs"]) == 4
    running = [sorted(n for n, s in poll.items() if s == "Running") for poll in seen]
    assert max(map(len, running)) == 1, f"more than one job Running on one CPU slot: {max(running, key=len)}"
    assert any(len(poll) == 4 and list(poll.values()).count("Pending") >= 1 and "Running" in poll.values()
               for poll in seen), f"no poll saw a queued job Pending beside a Running one: {seen[-5:]}"

    final = _until(lambda: (t := _task_runs(fr)) and all(r.state_name == "Completed" for r in t.values()) and t,
                   "every job Completed")
    for ds, arch in [(d, a) for d in SPEC_DATASETS for a in SPEC_SETTINGS["architectures"]]:
        tr = final[f"specialist-{ds}-{arch}"]
        epochs = lambda: [lg.message for lg in _logs(task_run_id=tr.id) if " epoch " in lg.message]  # noqa: E731
        lines = _until(lambda: len(epochs()) == 2 and epochs(), f"{ds}/{arch}: two epoch lines")
        assert [re.match(rf"{ds}/{arch} epoch (\d)/2: train loss [\d.]+, val loss [\d.]+, val accuracy "
                         r"[\d.]+, val macro-F1 [\d.]+", m).group(1) for m in lines] == ["1", "2"], lines


# -------------------------------------------------------------------------------------- fine-tuning, while it runs
def test_finetune_loss_reaches_the_prefect_log_while_training_runs(tiny, tmp_path, info_logs):  # noqa: F811
    from flows.generalist import finetune
    from infra.profiles import load_profile

    out = tmp_path / "out"
    layout = RunLayout(out)
    shutil.copytree(tiny["data"] / "shards", layout.corpus.shards)
    shutil.copytree(tiny["tables"], layout.tables)   # the samples tables the corpus rows refer to
    settings = load_profile("micro").finetune.model_copy(update={"max_steps": 12, "save_steps": 6})
    base = {"path": str(tiny["model"]), "digest": "tiny-base", "model_id": None}
    corpus = {"digest": "tiny-corpus", "path": str(layout.corpus.shards)}
    state = finetune(base, corpus, settings, str(out), _tracking(out), return_state=True)
    ft = state.result()
    assert ft["status"] == "trained"
    fr = state.state_details.flow_run_id
    tr = _until(lambda: next((t for n, t in _task_runs(fr).items() if n.startswith("lora-finetune") and t.end_time),
                             None), "lora-finetune ended")
    curve = [json.loads(ln) for ln in layout.finetune.loss_curve.read_text().splitlines() if ln]
    want = [f"finetune step {r['step']}/12: loss {r['loss']:.4f}" for r in curve]
    logs = _until(lambda: (got := [lg for lg in _logs(task_run_id=tr.id) if lg.message.startswith("finetune step")])
                  and len(got) == 12 and got, "12 loss lines")
    assert [lg.message.split(", lr")[0] for lg in sorted(logs, key=lambda lg: lg.timestamp)] == want
    # the first step was in the log before training ended (the adapter is written after the last step), and the
    # lines came as the steps did, not in one batch at the end
    adapter_written = min(p.stat().st_mtime for p in Path(layout.finetune.dir).rglob("adapter_model*"))
    stamps = sorted(lg.timestamp.timestamp() for lg in logs)
    assert stamps[0] < adapter_written and stamps[0] < tr.end_time.timestamp(), (stamps[0], adapter_written)
    assert stamps[-1] - stamps[0] > 0.4, stamps


# ------------------------------------------------------------------------------------------------------- warnings
def test_third_party_warnings_are_one_counted_line(capsys):
    import numpy as np
    from sklearn.metrics import precision_score

    from tasks.logs import part_logger, summarised_warnings

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = part_logger("test-warnings")
    log.addHandler(handler)
    try:
        y = np.array([0, 1, 0, 1])
        with summarised_warnings(log, "specialist metrics"):
            for _ in range(40):   # one warning per call (sklearn's metrics reset the warnings registry)
                precision_score(y, np.zeros_like(y))
    finally:
        log.removeHandler(handler)
    lines = [r.getMessage() for r in records]
    assert len(lines) == 1, lines
    assert re.match(r"specialist metrics: 40 x UndefinedMetricWarning at sklearn/metrics/_classification\.py:\d+: "
                    r"Precision is ill-defined", lines[0]), lines[0]
    assert "UndefinedMetricWarning" not in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- the report artifact
def test_report_artifact_embeds_its_images_and_names_the_mlflow_run(tmp_path, info_logs):
    import mlflow
    from prefect import flow

    from flows.benchmark import publish_report
    from tasks.evaluation.report import render_report
    from tasks.evaluation.report_artifact import artifact_markdown
    from tests.test_report import planted

    files = render_report(planted(), tmp_path / "report", "GSCo test report", generated_at=False)
    pngs = {n: p.read_bytes() for n, p in files.items() if n.endswith(".png")}
    assert pngs
    out = tmp_path / "out"
    tracking = _tracking(out)
    mlflow.set_tracking_uri(tracking.uri)
    with mlflow.start_run(experiment_id=mlflow.create_experiment("observe", artifact_location=str(out / "art"))) as r:
        run_id = r.info.run_id
    mlflow.set_tracking_uri(None)
    tracking = tracking.model_copy(update={"parent_run_id": run_id})

    @flow(name="publish-report-test")
    def publish() -> None:
        publish_report(str(files["report.md"]), tracking, "test")

    state = publish(return_state=True)
    with get_client(sync_client=True) as c:
        [art] = c.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[state.state_details.flow_run_id])))
    md = art.data
    assert art.key == "gsco-benchmark-report" and art.type == "markdown"
    assert run_id in md.splitlines()[0] and "mlflow ui --backend-store-uri sqlite:///" in md.splitlines()[0]
    targets = re.findall(r"!\[(?:[^\]\\]|\\.)*\]\(([^)]*)\)", md)
    assert len(targets) == len(pngs) and all(t.startswith("data:image/png;base64,") for t in targets)
    assert sorted(base64.b64decode(t.split(",", 1)[1]) for t in targets) == sorted(pngs.values())
    assert not re.search(r"\]\((?!data:)[^)]*\.png\)", md)

    server = artifact_markdown(files["report.md"], "abc123", "http://ops:hunter2@mlflow.lab:5000", "7")
    assert "http://ops:***@mlflow.lab:5000/#/experiments/7/runs/abc123" in server and "hunter2" not in server
    (tmp_path / "report" / next(iter(pngs))).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(next(iter(pngs)))):
        artifact_markdown(files["report.md"], "abc123", tracking.uri)
