"""One run per outputs folder: a second `gsco run` (or benchmark flow) on a folder in use is refused with one line
naming the holder; a killed holder frees the folder at once, and the MLflow runs it left RUNNING are marked KILLED.

    pytest -q tests/test_run_lock.py
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from data_contracts.files import FolderLock, FolderLockedError, folder_lock_holder
from data_contracts.layout import RunLayout
from tasks import lineage
from tests.helpers import process_cmdlines

REPO = Path(__file__).resolve().parents[1]
GSCO = Path(sys.executable).with_name("gsco")


def _hold(lock: Path, **info) -> subprocess.Popen:
    """Another process holding `lock` the way a run does (FolderLock, with what a run writes into it)."""
    code = (f"import sys, time; from data_contracts.files import FolderLock\n"
            f"with FolderLock({str(lock)!r}, 'run') as l:\n"
            f"    l.update(**{info!r}); print('held', flush=True); time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_run_on_a_folder_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "out"
    lock = RunLayout(out).run_lock
    holder = _hold(lock)
    try:
        assert f"pid {holder.pid} on " in folder_lock_holder(lock)
        t0 = time.monotonic()
        r = subprocess.run([str(GSCO), "run", "--profile", "micro", "--out", str(out)], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"),
                                             "PYTHONPATH": str(REPO)})
        msg = (r.stdout + r.stderr).strip()
        assert r.returncode == 2, msg
        assert len(msg.splitlines()) == 1 and f"pid {holder.pid}" in msg and "another run is writing" in msg, msg
        assert not (tmp_path / "prefect").exists() and time.monotonic() - t0 < 60  # refused before any server
        # the flow takes the lock itself: a run that got past the CLI's check is refused in the same words
        from flows.benchmark import benchmark

        with pytest.raises(FolderLockedError, match=rf"another run is writing this folder \(pid {holder.pid} "):
            benchmark.fn(profile="micro", out_dir=str(out))
    finally:
        holder.kill()
        holder.wait()
    # SIGKILL frees the folder at once; the next holder reads what the killed one wrote
    assert folder_lock_holder(lock) is None
    with FolderLock(lock, "run") as again:
        assert again.previous["pid"] == holder.pid
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_runs_a_killed_run_left_running_are_marked_killed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = lineage.start_parent(uri, "lock-test", tmp_path, "benchmark", {}, {})
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_run(parent).info.experiment_id
    child = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
    done = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
    client.set_terminated(done, "FINISHED")
    other = client.create_run(exp).info.run_id   # another run's: untouched

    lock = RunLayout(tmp_path / "out").run_lock
    holder = _hold(lock, mlflow_run_id=parent, tracking_uri=uri)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with FolderLock(lock, "run") as next_run:
        assert next_run.previous["mlflow_run_id"] == parent
        assert sorted(lineage.mark_killed(uri, next_run.previous["mlflow_run_id"])) == sorted([parent, child])
    status = {r: client.get_run(r).info.status for r in (parent, child, done, other)}
    assert status == {parent: "KILLED", child: "KILLED", done: "FINISHED", other: "RUNNING"}
    assert lineage.mark_killed(uri, parent) == []   # a run that ended is left as it is


def test_a_child_started_dying_with_its_parent_dies_when_the_parent_is_killed(tmp_path):
    marker = f"gsco-orphan-probe-{os.getpid()}"
    code = ("import subprocess, sys\n"
            "from tasks.processes import dying_with_this_process\n"
            f"subprocess.run(dying_with_this_process([sys.executable, '-c', 'import time; time.sleep(120)', "
            f"{marker!r}]))\n")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})

    def children() -> list[int]:
        return [pid for pid, cmd in process_cmdlines().items() if cmd.endswith(marker)]

    deadline = time.time() + 30
    while not children() and time.time() < deadline:
        time.sleep(0.05)
    assert children(), "the child never started"
    parent.kill()
    parent.wait()
    deadline = time.time() + 10
    while children() and time.time() < deadline:
        time.sleep(0.05)
    assert not children(), "the child outlived its killed parent"
    bad = subprocess.run([sys.executable, "-m", "tasks.processes", "sleep", "1"], cwd=REPO, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert bad.returncode != 0 and "usage: python -m tasks.processes --parent PID -- CMD" in bad.stderr

