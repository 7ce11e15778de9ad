"""Bad raw input: each case gets an error naming the file and row/field, and tables written earlier stay intact."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from data_contracts.cards import get_card
from data_contracts.errors import ContractError
from data_contracts.io import read_manifest, read_rejects, read_samples
from tasks.ingest.dataset import ingest_dataset
from tests.helpers import tables_mtimes


def _ingest(name, data, out, **kw):
    return ingest_dataset(get_card(name), data, out, **kw)


def _ham_csv(data: Path) -> Path:
    return data / "ham10000" / "HAM10000_metadata.csv"


def _edit_csv(path: Path, fn) -> None:
    df = pl.read_csv(path, infer_schema=False)
    fn(df).write_csv(path)


def _setup(tiny_copy, tmp_path, *names):
    out = tmp_path / "tables"
    for n in names:
        _ingest(n, tiny_copy, out)
    return out, tables_mtimes(out), {n: read_manifest(out, n) for n in names}


def _assert_intact(out, before_mtimes, before_manifests):
    assert tables_mtimes(out) == before_mtimes
    for n, m in before_manifests.items():
        assert read_manifest(out, n) == m
        for split in m["splits"]:
            read_samples(out, n, split, verify_digest=True)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_corrupted_image(tiny_copy, tmp_path):
    out, mt, mf = _setup(tiny_copy, tmp_path, "ham10000", "dermnet")
    img = sorted((tiny_copy / "ham10000" / "images").glob("*.jpg"))[3]
    img.write_bytes(img.read_bytes()[:40])
    with pytest.raises(ContractError) as e:
        _ingest("ham10000", tiny_copy, out)
    msg = str(e.value)
    assert "ham10000/HAM10000_metadata.csv row" in msg and "field 'image_id'" in msg and img.name in msg
    _assert_intact(out, mt, mf)


def test_label_outside_label_set(tiny_copy, tmp_path):
    out, mt, mf = _setup(tiny_copy, tmp_path, "ham10000")
    _edit_csv(_ham_csv(tiny_copy), lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 5).then(pl.lit("zebra")).otherwise(pl.col("dx")).alias("dx")))
    with pytest.raises(ContractError, match=r"HAM10000_metadata.csv row 5 field 'dx': expected a label in the label "
                                            r"set of ham10000.*'zebra'"):
        _ingest("ham10000", tiny_copy, out)
    _assert_intact(out, mt, mf)


def test_missing_column(tiny_copy, tmp_path):
    out, mt, mf = _setup(tiny_copy, tmp_path, "ham10000")
    _edit_csv(_ham_csv(tiny_copy), lambda df: df.drop("dx"))
    with pytest.raises(ContractError, match=r"HAM10000_metadata.csv field 'dx': expected column 'dx'"):
        _ingest("ham10000", tiny_copy, out)
    _assert_intact(out, mt, mf)


def _rewrite_npz(path: Path, fn) -> None:
    arrays = dict(np.load(path))
    arrays = fn(arrays)
    np.savez(path, **arrays)


def test_npz_wrong_keys(tiny_copy, tmp_path):
    out, mt, mf = _setup(tiny_copy, tmp_path, "pneumoniamnist")
    npz = tiny_copy / "medmnist" / "pneumoniamnist.npz"
    _rewrite_npz(npz, lambda a: {k: v for k, v in a.items() if k != "val_labels"})
    with pytest.raises(ContractError, match=r"medmnist/pneumoniamnist.npz field 'val_labels': expected key"):
        _ingest("pneumoniamnist", tiny_copy, out)
    _assert_intact(out, mt, mf)


def test_npz_wrong_shapes(tiny_copy, tmp_path):
    out, mt, mf = _setup(tiny_copy, tmp_path, "pneumoniamnist")
    npz = tiny_copy / "medmnist" / "pneumoniamnist.npz"
    _rewrite_npz(npz, lambda a: {**a, "test_labels": np.zeros((len(a["test_labels"]), 3), dtype=np.uint8)})
    with pytest.raises(ContractError, match=r"pneumoniamnist.npz field 'test_labels': expected labels of shape"):
        _ingest("pneumoniamnist", tiny_copy, out)
    _rewrite_npz(npz, lambda a: {**a, "train_images": a["train_images"].astype(np.float32)})
    with pytest.raises(ContractError, match=r"field 'train_images': expected uint8 images"):
        _ingest("pneumoniamnist", tiny_copy, out)
    _assert_intact(out, mt, mf)


def test_csv_path_escaping_data_root(tiny_copy, tmp_path):
    out, mt, mf = _setup(tiny_copy, tmp_path, "ham10000")
    _edit_csv(_ham_csv(tiny_copy), lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 2).then(pl.lit("../../../../etc/passwd")).otherwise(
            pl.col("image_id")).alias("image_id")))
    with pytest.raises(ContractError, match=r"HAM10000_metadata.csv row 2 field 'image_id': expected a path inside "
                                            r"the data root.*escapes"):
        _ingest("ham10000", tiny_copy, out)
    _assert_intact(out, mt, mf)


def test_duplicate_ids(tiny_copy, tmp_path):
    out, mt, mf = _setup(tiny_copy, tmp_path, "ham10000")
    _edit_csv(_ham_csv(tiny_copy), lambda df: pl.concat([df, df[1:2]]))
    with pytest.raises(ContractError, match=r"sample_id|duplicate sample id") as e:
        _ingest("ham10000", tiny_copy, out)
    assert "HAM10000_metadata.csv" in str(e.value)
    _assert_intact(out, mt, mf)


def test_empty_vqa_answer(tiny_copy, tmp_path):
    out, mt, mf = _setup(tiny_copy, tmp_path, "slake")
    path = tiny_copy / "slake" / "train.json"
    rows = json.loads(path.read_text())
    idx = next(i for i, r in enumerate(rows) if r["q_lang"] == "en")
    rows[idx]["answer"] = "  "
    path.write_text(json.dumps(rows))
    with pytest.raises(ContractError, match=rf"slake/train.json row {idx} field 'answer': expected a non-empty answer"):
        _ingest("slake", tiny_copy, out)
    _assert_intact(out, mt, mf)


def test_quarantine_writes_good_rows_and_rejects(tiny_copy, tmp_path):
    out = tmp_path / "tables"
    clean = _ingest("ham10000", tiny_copy, out)
    n_clean = sum(e["rows"] for e in clean.splits.values())
    img = sorted((tiny_copy / "ham10000" / "images").glob("*.jpg"))[0]
    img.write_bytes(b"not an image")
    _edit_csv(_ham_csv(tiny_copy), lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(pl.lit("zebra")).otherwise(pl.col("dx")).alias("dx")))
    with pytest.raises(ContractError):
        _ingest("ham10000", tiny_copy, out, policy="fail")
    r = _ingest("ham10000", tiny_copy, out, policy="quarantine")
    assert r.status == "written" and r.rejects == 2
    assert sum(e["rows"] for e in r.splits.values()) == n_clean - 2
    rej = read_rejects(out, "ham10000")
    assert rej.height == 2
    assert any("zebra" in x for x in rej["reason"]) and any(img.name in x for x in rej["reason"])
    assert set(rej["field"]) == {"dx", "image_id"}
