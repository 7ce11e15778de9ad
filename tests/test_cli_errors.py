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


def _mistakes(tmp_path: Path) -> list[tuple[list[str], str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    return [
        (["run", "--profile", "nope"], "unknown profile 'nope'; known: ['full', 'micro', 'tiny']"),
        (["run", "--stage", "specialist"], "unknown group(s) ['specialist']; expected some of"),
        (["run", "--set", "finetune.max_steps"], "--set 'finetune.max_steps': expected KEY.PATH=VALUE"),
        (["run", "--set", "finetune.max_step=3"], "finetune.max_step"),
        (["run", "--set", "data.datasets=[nosuch]"], "--set data.datasets=[nosuch]: data.datasets: unknown dataset(s) "
                                                     "['nosuch']; known: breastmnist"),
        (["run", "--out", str(a_file / "sub")], f"--out {a_file / 'sub'}: {a_file} is a file, not a folder"),
        (["run", "--bogus"], "gsco run: No such option: --bogus"),
        (["nosuchcmd"], "gsco: No such command 'nosuchcmd'."),
        (["lineage"], "gsco lineage: Missing argument 'run_id'."),
        (["ingest", "--data-root", str(tmp_path / "none")], f"--data-root {tmp_path / 'none'}: no such folder"),
        (["ingest", "--data-root", str(tmp_path), "--dataset", "nosuch"], "unknown dataset 'nosuch'; known: "),
        (["ingest", "--data-root", str(tmp_path), "--policy", "drop"], "--policy 'drop': expected fail or quarantine"),
        (["ingest", "--data-root", str(tmp_path)], f"no registered dataset found under {tmp_path}"),
        (["datasets", "show", "nosuch"], "unknown dataset 'nosuch'; known: breastmnist"),
        (["datasets", "validate", "ham10000", str(tmp_path / "none")], f"{tmp_path / 'none'}: no such folder"),
        (["tiny-benchmark", str(a_file)], f"OUT {a_file}: {a_file} is a file, not a folder"),
        (["tiny-benchmark", str(tmp_path / "tb"), "--scale", "abc"], "Invalid value for '--scale'"),
    ]


def test_every_cli_mistake_is_one_line_before_any_server_starts(tmp_path):
    """Profile, stage, override, dataset, path and usage mistakes: exit 2, one line naming what was wrong and what is
    accepted, printed before a Prefect server starts (no Prefect home is created, no flow run is left behind)."""
    for args, expected in _mistakes(tmp_path):
        rc, msg = _gsco(*args, tmp_path=tmp_path)
        assert rc == 2, (args, msg)
        assert len(msg.splitlines()) == 1 and msg.startswith("error: ") and expected in msg, (args, msg)
        assert not (tmp_path / "prefect").exists(), f"{args}: a Prefect server started before the mistake was found"
