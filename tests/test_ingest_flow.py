"""The Prefect `ingest` flow: MLflow dataset entries carry the tables' content digests; reruns are served from cache."""
from __future__ import annotations

import io

import polars as pl
from mlflow.tracking import MlflowClient
from PIL import Image

from data_contracts.io import read_manifest, read_samples, table_digest
from data_contracts.layout import RunLayout
from flows.ingest import ingest
from tasks.ingest.tiny_benchmark import TINY_DATASETS
from tasks.tracking import Tracking, run_datasets, tracking_uri
from tests.helpers import tables_mtimes


def test_ingest_flow_mlflow_digests_cache_and_partial_recompute(tiny_copy, tmp_path):
    out = tmp_path / "out"
    uri = tracking_uri(RunLayout(out), None)
    tracking = Tracking(uri=uri, experiment="test", out_dir=str(out))
    first = ingest(str(tiny_copy), str(out), tracking)
    assert {r["dataset"] for r in first["results"]} == set(TINY_DATASETS)
    assert all(r["status"] == "written" for r in first["results"])

    # one MLflow dataset entry per table, digest == the table's content digest
    entries = {d["name"]: d for d in run_datasets(uri, first["run_id"])}
    tables = {(n, s) for n in TINY_DATASETS for s in read_manifest(out / "tables", n)["splits"]}
    assert set(entries) == {f"{n}/{s}" for n, s in tables}
    for n, s in tables:
        df = read_samples(out / "tables", n, s)
        assert entries[f"{n}/{s}"]["digest"] == table_digest(df)
        assert entries[f"{n}/{s}"]["context"] == "output"
    arts = [a.path for a in MlflowClient(uri).list_artifacts(first["run_id"], "tables")]
    assert set(arts) == {f"tables/{n}" for n in TINY_DATASETS}

    # unchanged inputs: nothing rewritten
    before = tables_mtimes(out / "tables")
    second = ingest(str(tiny_copy), str(out), tracking)
    assert all(r["status"] == "cached" for r in second["results"])
    assert tables_mtimes(out / "tables") == before
    assert {d["digest"] for d in run_datasets(uri, second["run_id"])} == {e["digest"] for e in entries.values()}

    # one raw file changed: only that dataset recomputes; a quarantined bad row is counted in MLflow
    img = sorted((tiny_copy / "dermnet").rglob("*.jpg"))[0]
    im = Image.open(img).convert("RGB")
    im.putpixel((0, 0), (255, 0, 0))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95)
    img.write_bytes(buf.getvalue())
    csv = tiny_copy / "ham10000" / "HAM10000_metadata.csv"
    df = pl.read_csv(csv, infer_schema=False)
    df.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("zebra")).otherwise(pl.col("dx"))
                    .alias("dx")).write_csv(csv)
    third = ingest(str(tiny_copy), str(out), tracking, policies={"ham10000": "quarantine"})
    status = {r["dataset"]: r["status"] for r in third["results"]}
    assert {n for n, s in status.items() if s == "written"} == {"dermnet", "ham10000"}
    after = tables_mtimes(out / "tables")
    unchanged = [k for k in before if not k.startswith(("dermnet/", "ham10000/"))]
    assert all(after[k] == before[k] for k in unchanged)
    metrics = MlflowClient(uri).get_run(third["run_id"]).data.metrics
    assert metrics["ham10000.rejects"] == 1 and metrics["dermnet.rejects"] == 0
    assert metrics["ham10000.cached"] == 0 and metrics["chestmnist.cached"] == 1
