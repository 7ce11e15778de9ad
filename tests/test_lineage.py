"""Traceable numbers: models registered in a loadable MLflow flavour (no pickle) with aliases, the report's header, CIs
and parse-failure rates in MLflow, and `gsco lineage` down to raw digests, sources and LanceDB versions.

    OMP_NUM_THREADS=1 pytest -q tests/test_lineage.py
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import polars as pl
import pytest
import yaml
from mlflow import MlflowClient

from data_contracts.cards import get_card
from data_contracts.io import read_manifest, read_samples
from data_contracts.layout import JobFiles, RunLayout
from infra.profiles import load_profile
from tasks.ingest.dataset import ingest_dataset
from tasks.lineage import LATEST_RUN, RAD_RETRIEVER
from tasks.specialists.stage import DevicePool, job_specs, run_and_record, weights_digest
from tasks.tracking import Tracking, tracking_uri

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MICRO = load_profile("micro")


def _no_pickle(model_dir: Path) -> None:
    """A models-from-code pyfunc: the code file is in the model, no pickled python model anywhere."""
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"]["model_code_path"]
    assert "python_model" not in mlmodel["flavors"]["python_function"]
    assert not [p for p in model_dir.rglob("*") if p.suffix in (".pkl", ".pickle", ".pt", ".bin", ".cloudpickle")]


def test_a_specialist_is_registered_loadable_and_predicts_as_trained(tiny_root, tmp_path):
    layout = RunLayout(tmp_path / "out")
    ingest_dataset(get_card("pneumoniamnist"), tiny_root, layout.tables)
    uri = tracking_uri(layout, None)
    tracking = Tracking(uri=uri, experiment="lineage-test", out_dir=str(layout.root), profile="micro")
    spec = job_specs(layout, ["pneumoniamnist"], MICRO.specialists)[0]
    pool = DevicePool(layout.device_locks, [], 1)
    job = run_and_record(spec, pool, "inprocess", tracking)
    files = JobFiles(Path(job["out_dir"]))
    name = f"specialist-pneumoniamnist-{spec['arch']}"

    client = MlflowClient(uri)
    assert job["status"] == "trained" and job["registered"] == {"name": name, "version": "1"}
    assert client.get_registered_model(name).aliases == {LATEST_RUN: 1}
    assert client.get_logged_model(job["model_id"]).tags["gsco.digest"] == weights_digest(files.best) \
        == job["model_digest"]

    mlflow.set_tracking_uri(uri)
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@{LATEST_RUN}", dst_path=str(tmp_path / "m")))
    _no_pickle(model_dir)
    assert (model_dir / "code" / "tasks" / "specialists" / "training.py").is_file()   # the project code rides along
    model = mlflow.pyfunc.load_model(f"models:/{name}@{LATEST_RUN}")
    test = read_samples(layout.tables, "pneumoniamnist", "test", validate=False)
    probs = model.predict(pd.DataFrame({"image": test["image"].to_list()}))
    card = get_card("pneumoniamnist")
    assert list(probs.columns) == list(card.labels)
    # the training code's own predictions on the test split, written when it trained
    np.testing.assert_allclose(probs.to_numpy(), np.load(files.dir / "probs_test.npy"), atol=1e-5)
    emb = model.predict(pd.DataFrame({"image": test["image"].to_list()[:3]}), params={"output": "embedding"})
    np.testing.assert_allclose(emb.to_numpy(), np.load(files.embeddings("test"))[:3], atol=1e-4)

    # a rerun finds the job finished: the same model and version, no new registration
    again = run_and_record(spec, pool, "inprocess", tracking)
    assert again["status"] == "skipped" and again["model_id"] == job["model_id"]
    assert again["registered"] == job["registered"]
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    # loads outside the checkout: a fresh interpreter elsewhere imports the model's own copy of the project code
    probe = ("import mlflow, sys, pandas as pd\n"
             f"m = mlflow.pyfunc.load_model({str(model_dir)!r})\n"
             "import tasks.specialists.training as t\n"
             "print(t.__file__)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith(str(model_dir / "code")), out.stdout


# ------------------------------------------------------------------------------------------ one micro benchmark
@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """One `gsco run --profile micro` (the module's only benchmark): (outputs folder, benchmark_result.json)."""
    out = tmp_path_factory.mktemp("micro") / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    env.pop("PREFECT_API_URL", None)
    r = subprocess.run([str(BIN / "gsco"), "run", "--profile", "micro", "--out", str(out)], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return out, json.loads((out / "benchmark_result.json").read_text())


def _git_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()


def _lancedb_versions(out: Path) -> dict[str, int]:
    import lancedb

    db = lancedb.connect(str(RunLayout(out).lancedb))
    names = db.list_tables().tables   # micro: two tables, one page
    return {n.replace("__", "/"): db.open_table(n).version for n in names}


def test_report_header_names_the_run_commit_date_and_input_digests(micro):
    from tasks.generalist.backends import weights_fingerprint

    out, res = micro
    md = Path(res["report_md"]).read_text()
    html = Path(res["report"]).read_text()
    header = md.split("## Headline metric")[0]
    assert "## Provenance" in header
    assert f"- MLflow run: `{res['mlflow_run_id']}`" in header
    assert f"- git commit: `{_git_commit()}`" in header
    assert f"- profile: `micro`" in header
    assert re.search(r"- written \(UTC\): `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00`", header)
    tables = RunLayout(out).tables
    for ds in ("pneumoniamnist", "ham10000", "slake", "iu_xray", "openi_cases"):
        manifest = read_manifest(tables, ds)
        for split, entry in manifest["splits"].items():
            assert entry["digest"] in header, f"{ds}/{split} table digest missing from the report header"
    assert f"- meddr digest: `{weights_fingerprint(out / 'finetune' / 'merged')}`" in header
    for best in (out / "specialists").glob("*/*/best.safetensors"):
        assert f"| {best.parent.parent.name}/{best.parent.name} | {weights_digest(best)} |" in header
    for name, version in _lancedb_versions(out).items():
        assert re.search(rf"\| {re.escape(name)} \| [0-9a-f]{{32}} \| {version} \|", header), name
    assert res["mlflow_run_id"] in html and _git_commit() in html and "<h2>Provenance</h2>" in html


def test_metrics_with_ci_n_and_parse_failures_in_mlflow_and_the_parent_carries_table_and_report(micro, tmp_path):
    from tasks.evaluation.stage import metric_key

    out, res = micro
    uri = tracking_uri(RunLayout(out), None)
    client = MlflowClient(uri)
    parent = client.get_run(res["mlflow_run_id"])
    evaluation = client.search_runs([parent.info.experiment_id],
                                    f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' AND "
                                    "tags.`gsco.stage` = 'evaluation'")[0]
    logged = evaluation.data.metrics
    metrics = pl.read_parquet(RunLayout(out).metrics)
    checked = 0
    for r in metrics.iter_rows(named=True):
        for field in ("value", "ci_low", "ci_high", "n", "parse_failure_rate"):
            key = metric_key(r["dataset"], r["method"], r["metric"], field)
            if r[field] is None:
                assert key not in logged
            else:
                assert logged[key] == pytest.approx(float(r[field])), key
                checked += 1
    assert checked > 5 * 20
    assert logged["pneumoniamnist/GSCo/accuracy/ci_low"] <= logged["pneumoniamnist/GSCo/accuracy/value"] \
        <= logged["pneumoniamnist/GSCo/accuracy/ci_high"]

    assert parent.data.tags["gsco.report.run_id"] == parent.info.run_id   # this run wrote the report it carries
    files = {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.html"} <= files
    md = Path(client.download_artifacts(parent.info.run_id, "report/report.md", str(tmp_path))).read_text()
    assert md == Path(res["report_md"]).read_text()
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "headline.json", str(tmp_path))).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    head = metrics.filter(pl.col("metric") == pl.col("headline"))
    assert len(rows) == head.height
    want = {(r["dataset"], r["method"]): r for r in head.iter_rows(named=True)}
    for row in rows:
        w = want[(row["dataset"], row["method"])]
        assert row["metric"] == w["metric"] and row["n"] == w["n"]
        assert row["value"] == pytest.approx(w["value"], nan_ok=True) if w["value"] is not None else True


def test_gsco_lineage_prints_raw_digests_sources_lancedb_versions_and_specialists(micro):
    out, res = micro
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = subprocess.run([str(BIN / "gsco"), "lineage", res["mlflow_run_id"], "--out", str(out), "--json"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    s = json.loads(cli.stdout)["summary"]
    assert s["run_id"] == res["mlflow_run_id"] and s["commit"] == _git_commit() and s["profile"] == "micro"
    tables = RunLayout(out).tables
    assert set(s["datasets"]) == {"pneumoniamnist", "ham10000", "slake", "iu_xray", "openi_cases"}
    for ds, d in s["datasets"].items():
        manifest = read_manifest(tables, ds)
        assert d["raw_digest"] == manifest["meta"]["raw_digest"][:32]
        assert d["source"] == manifest["meta"]["source"] and Path(d["source"]).is_dir()
        assert {sp: e["digest"] for sp, e in d["splits"].items()} == \
            {sp: e["digest"] for sp, e in manifest["splits"].items()}
        assert {sp: e["rows"] for sp, e in d["splits"].items()} == {sp: e["rows"] for sp, e in manifest["splits"].items()}
    assert {k: int(v["lancedb_version"]) for k, v in s["indexes"].items()} == _lancedb_versions(out)

    uri = tracking_uri(RunLayout(out), None)
    client = MlflowClient(uri)
    assert set(s["specialists"]) == {"pneumoniamnist", "ham10000"}
    for ds, jobs in s["specialists"].items():
        assert [j["arch"] for j in jobs] == ["resnet18", "vit_b16"]
        chosen = [j for j in jobs if j["rad_retriever"]]
        assert len(chosen) == 1 and f"{ds}/{chosen[0]['arch']}" in s["indexes"]
        best = max(j["val_score"] for j in jobs)
        assert chosen[0]["val_score"] == best and chosen[0]["val_metric"].startswith("val_")
        for j in jobs:
            assert j["digest"] == weights_digest(out / "specialists" / ds / j["arch"] / "best.safetensors")
            name = f"specialist-{ds}-{j['arch']}"
            assert j["registered"][0]["name"] == name
            aliases = client.get_registered_model(name).aliases
            assert aliases[LATEST_RUN] == int(j["registered"][0]["version"])
            assert (RAD_RETRIEVER in aliases) == j["rad_retriever"]
    gen = s["generalist"]
    ft = json.loads((out / "finetune" / "finetune_result.json").read_text())
    assert gen["meddr-adapter"]["digest"] == ft["adapter"]["digest"][:32]
    for model, registered in (("meddr-merged", "meddr"), ("meddr-adapter", "meddr-adapter")):
        assert gen[model]["registered"] == [{"name": registered, "version": "1", "aliases": [LATEST_RUN]}]

    human = subprocess.run([str(BIN / "gsco"), "lineage", res["mlflow_run_id"], "--out", str(out)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert human.returncode == 0, human.stderr[-2000:]
    for ds, d in s["datasets"].items():
        assert d["raw_digest"] in human.stdout and ds in human.stdout
    assert "RAD tables (LanceDB)" in human.stdout and "rad-retriever" in human.stdout
    assert "meddr v1 @latest-run" in human.stdout


def test_meddr_and_its_adapter_load_from_the_registry_and_generate_as_the_pipeline(micro):
    from tasks.generalist.backends import TransformersGeneralist
    from tasks.generalist.settings import GenerationSettings

    out, _ = micro
    mlflow.set_tracking_uri(tracking_uri(RunLayout(out), None))
    test = read_samples(RunLayout(out).tables, "pneumoniamnist", "test", validate=False).head(2)
    prompt = pl.read_parquet(RunLayout(out).predictions("pneumoniamnist"))["prompt"][0]   # the evaluation's prompt
    frame = pd.DataFrame({"image": test["image"].to_list(), "prompt": [prompt] * 2})
    # seeded sampling: the micro MedDr (6 steps) answers greedy prompts with nothing; sampled text shows the weights
    gen = {"max_new_tokens": 8, "do_sample": True, "seed": 3}
    want = TransformersGeneralist(str(out / "finetune" / "merged")).generate(
        frame["image"].to_list(), frame["prompt"].to_list(), GenerationSettings(**gen))
    assert all(want), want
    for uri in (f"models:/meddr@{LATEST_RUN}", f"models:/meddr-adapter@{LATEST_RUN}"):
        model_dir = Path(mlflow.artifacts.download_artifacts(uri))
        _no_pickle(model_dir)
        got = mlflow.pyfunc.load_model(uri).predict(frame, params=gen)
        assert list(got) == want, uri


def test_a_cached_report_names_the_run_that_wrote_it_and_its_key_ignores_the_run(micro, tmp_path):
    import shutil

    from tasks.evaluation.stage import report_key, score_and_report

    out, _ = micro
    layout = RunLayout(tmp_path / "out")
    shutil.copytree(RunLayout(out).predictions_dir, layout.predictions_dir)
    preds = [{"dataset": p.stem, "path": str(p), "test_digest": "t", "status": "cached"}
             for p in sorted(layout.predictions_dir.glob("*.parquet"))]
    inputs = {"datasets": {"pneumoniamnist": {"raw": "r" * 32, "test": "a" * 32}}, "specialists": {},
              "indexes": {}, "generalist": {"meddr": "m" * 16}, "combined": "c" * 32}

    def context(run_id: str, date: str, combined: str = "c" * 32) -> dict:
        return {"inputs": {**inputs, "combined": combined},
                "stamp": {"run_id": run_id, "experiment": "e", "link": None, "commit": "abc", "profile": "micro",
                          "date": date, "sources": {"pneumoniamnist": "/data/medmnist"}}}

    settings = MICRO.evaluation
    first = score_and_report(preds, layout, settings, context("run-one", "2026-01-01T00:00:00+00:00"))
    assert first["status"] == "written" and first["produced_by"]["run_id"] == "run-one"
    report = Path(first["report_md"]).read_text()
    assert "- MLflow run: `run-one`" in report and "`2026-01-01T00:00:00+00:00`" in report
    assert report_key("d", settings, context("run-one", "x")) == report_key("d", settings, context("run-two", "y"))
    # another run, same inputs: the report is served as it was, naming the run that wrote it
    again = score_and_report(preds, layout, settings, context("run-two", "2026-02-02T00:00:00+00:00"))
    assert again["status"] == "cached" and again["produced_by"]["run_id"] == "run-one"
    assert Path(again["report_md"]).read_text() == report
    # changed inputs: rewritten, naming the new run
    changed = score_and_report(preds, layout, settings, context("run-three", "2026-03-03T00:00:00+00:00", "d" * 32))
    assert changed["status"] == "written" and "- MLflow run: `run-three`" in Path(changed["report_md"]).read_text()
