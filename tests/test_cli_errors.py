"""CLI mistakes give one line naming what was wrong, and reading commands never create what they read.

    pytest -q tests/test_cli_errors.py
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from data_contracts.layout import RunLayout
from tasks.tracking import tracking_uri

REPO = Path(__file__).resolve().parents[1]
GSCO = Path(sys.executable).with_name("gsco")


def _gsco(*args: str, tmp_path: Path) -> tuple[int, str]:
    r = subprocess.run([str(GSCO), *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO)})
    return r.returncode, (r.stdout + r.stderr).strip()


def test_lineage_refuses_a_store_that_does_not_exist_and_an_unknown_run(tmp_path):
    empty = tmp_path / "nothing-here"
    rc, msg = _gsco("lineage", "0123abcd", "--out", str(empty), tmp_path=tmp_path)
    assert rc == 2 and len(msg.splitlines()) == 1 and "no MLflow store there" in msg, msg
    assert not empty.exists()   # no empty store (nor folder) created by a read

    out = tmp_path / "out"
    uri = tracking_uri(RunLayout(out), None)
    MlflowClient(tracking_uri=uri).create_experiment("e")
    rc, msg = _gsco("lineage", "0123abcd", "--out", str(out), tmp_path=tmp_path)
    assert rc == 2 and len(msg.splitlines()) == 1 and "run 0123abcd: not found in" in msg, msg
