"""The specialist fan-out under Prefect: killed midway, a rerun trains only the unfinished jobs; MLflow runs + models."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from mlflow.tracking import MlflowClient

from data_contracts.layout import RunLayout
from tasks.tracking import tracking_uri
from tests.helpers import tiny_specialists

SETTINGS = tiny_specialists(max_epochs=8)
ARCHS = SETTINGS["architectures"]
DATASETS = ["pneumoniamnist", "breastmnist"]


def _call(out):
    tracking = {"uri": tracking_uri(RunLayout(out), None), "experiment": "test-spec", "out_dir": str(out),
                "profile": "test"}
    return f"""
from flows.specialists import specialists
from tasks.specialists.settings import SpecialistsSettings
from tasks.tracking import Tracking
print("RESULT", __import__("json").dumps(specialists({str(out)!r}, {DATASETS!r},
      SpecialistsSettings.model_validate({SETTINGS!r}), Tracking(**{tracking!r}))))
"""


def test_killed_fanout_reruns_only_unfinished_jobs(tiny_tables, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    RunLayout(out).tables.symlink_to(tiny_tables)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _call(out)], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done_markers = lambda: sorted(out.glob("specialists/*/*/done.json"))  # noqa: E731
    deadline = time.time() + 240
    while len(done_markers()) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole flow process (and its temporary Prefect server) dies at once
    proc.wait()
    finished = {tuple(p.parent.relative_to(out / "specialists").parts) for p in done_markers()}
    assert 2 <= len(finished) < len(DATASETS) * len(ARCHS), proc.stdout.read()[-3000:]
    mtimes = {k: (out / "specialists" / k[0] / k[1] / "best.safetensors").stat().st_mtime_ns for k in finished}

    rerun = subprocess.run([sys.executable, "-c", _call(out)], env=env, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    result = json.loads(rerun.stdout.split("RESULT", 1)[1])
    status = {(j["dataset"], j["arch"]): j["status"] for j in result["jobs"]}
    assert not result["failures"] and len(status) == len(DATASETS) * len(ARCHS)
    assert {k for k, s in status.items() if s == "skipped"} == finished
    assert all(s in ("trained", "resumed") for k, s in status.items() if k not in finished)
    for k in finished:  # finished jobs were not trained again
        assert (out / "specialists" / k[0] / k[1] / "best.safetensors").stat().st_mtime_ns == mtimes[k]

    client = MlflowClient(tracking_uri(RunLayout(out), None))
    for ds in DATASETS:
        for arch in ARCHS:
            versions = client.search_model_versions(f"name = 'specialist-{ds}-{arch}'")
            assert versions, f"specialist-{ds}-{arch} not registered"
    job = result["jobs"][0]
    run = client.get_run(job["run_id"])
    names = {d.dataset.name for d in run.inputs.dataset_inputs}
    assert {f"{job['dataset']}/train", f"{job['dataset']}/test"} <= names
    # the registered model's digest is a hash of its weights; the job's fingerprint is a tag of its own
    from safetensors.torch import load_file

    from tasks.specialists.stage import weights_digest

    model = client.get_logged_model(job["model_id"])
    best = out / "specialists" / job["dataset"] / job["arch"] / "best.safetensors"
    assert model.tags["gsco.digest"] == weights_digest(best)
    assert model.tags["gsco.specialist.fingerprint"] == job["fingerprint"]
    assert weights_digest(best) != job["fingerprint"][:32]
    w = load_file(str(best))
    k = sorted(w)[0]
    w[k] = w[k] + 1
    from safetensors.torch import save_file
    save_file(w, str(tmp_path / "changed.safetensors"))
    assert weights_digest(tmp_path / "changed.safetensors") != weights_digest(best)


def test_a_run_with_failed_specialist_jobs_ends_failed_naming_them(tmp_path):
    """Failed jobs (after retries) end the benchmark flow run Failed, naming them, while its result (the jobs that
    finished, every other stage) is still returned; `gsco run` prints it and exits 1."""
    out = tmp_path / "out"
    broken = "specialists.arch_settings.vit_b16.overrides.num_heads=3"   # 64 wide: not divisible, fails at build
    code = (f"import json\nfrom flows.benchmark import benchmark\n"
            f"s = benchmark(profile='micro', overrides=[{broken!r}, 'specialists.retries=0'], out_dir={str(out)!r}, "
            f"stages=['specialists'], return_state=True)\n"
            f"r = s.result(raise_on_failure=False)\n"
            f"print('RESULT', json.dumps({{'type': s.type.value, 'message': s.message, 'failures': sorted(r['failures']),"
            f" 'jobs': len(r['stages'] and r['recomputed']['specialists'])}}))\n")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.split("RESULT", 1)[1])
    expected = ["ham10000/vit_b16", "pneumoniamnist/vit_b16"]
    assert got["type"] == "FAILED" and got["failures"] == expected, got
    assert "2 specialist job(s) failed after retries: ham10000/vit_b16, pneumoniamnist/vit_b16" in got["message"]
    assert got["jobs"] == 2   # the resnet18 jobs trained
