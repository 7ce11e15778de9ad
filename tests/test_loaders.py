"""Every tiny dataset through the real loaders: row counts, label sets, decodable images, learnable classes."""
from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.preprocessing import MultiLabelBinarizer

from data_contracts.cards import get_card
from data_contracts.io import read_manifest, read_samples
from tasks.ingest.dataset import ingest_dataset
from tasks.ingest.tiny_benchmark import TINY_DATASETS

DIAGNOSIS = [n for n in TINY_DATASETS if get_card(n).task_kind == "diagnosis"]


@pytest.fixture(scope="module")
def tables(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    results = {n: ingest_dataset(get_card(n), tiny_root, out) for n in TINY_DATASETS}
    return out, results


def test_tiny_benchmark_covers_the_issue(tables):
    kinds = Counter((get_card(n).task_kind, get_card(n).raw.format) for n in TINY_DATASETS)
    assert sum(v for (k, _), v in kinds.items() if k == "diagnosis") >= 5
    formats = {get_card(n).raw.format for n in TINY_DATASETS}
    assert {"medmnist_npz", "image_folder", "csv_images", "slake_json", "report_table", "case_studies"} <= formats
    in_domain_multilabel = [n for n in DIAGNOSIS if get_card(n).task_type == "multilabel"
                            and get_card(n).domain == "in-domain" and "No finding" in get_card(n).labels]
    assert in_domain_multilabel
    ood_npz = [n for n in DIAGNOSIS if get_card(n).domain == "out-of-domain" and get_card(n).raw.format ==
               "medmnist_npz"]
    assert len(ood_npz) >= 2


@pytest.mark.parametrize("name", TINY_DATASETS)
def test_tables_load_and_validate(tables, name):
    out, results = tables
    card = get_card(name)
    r = results[name]
    assert r.status == "written" and r.rejects == 0
    total = 0
    for split, e in r.splits.items():
        df = read_samples(out, name, split, verify_digest=True)
        assert df.height == e["rows"] > 0
        total += df.height
        assert set(df["dataset"]) == {name} and set(df["split"]) == {split}
        assert all(ls == card.labels for ls in df["label_set"].to_list())
        for b in df["image"].to_list()[:5]:
            Image.open(io.BytesIO(b)).load()
        if card.task_kind == "diagnosis":
            assert {lab for ls in df["labels"].to_list() for lab in ls} <= set(card.labels)
        if card.task_kind == "vqa":
            assert df["question"].null_count() == 0 and df["answer"].null_count() == 0
            assert set(df["answer_type"]) <= {"open", "closed"}
        if card.task_kind in ("report", "description"):
            assert df["text"].str.len_chars().min() > 10
    assert set(r.splits) >= {"train", "test"} or card.task_kind == "description"
    assert total >= 20


def _xy(df, size=16):
    x = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("L").resize((size, size)), dtype=np.float32) / 255
                  for b in df["image"].to_list()]).reshape(df.height, -1)
    return x, df["labels"].to_list()


@pytest.mark.parametrize("name", DIAGNOSIS)
def test_simple_classifier_beats_chance(tables, name):
    out, _ = tables
    card = get_card(name)
    xtr, ytr = _xy(read_samples(out, name, "train"))
    xte, yte = _xy(read_samples(out, name, "test"))
    if card.task_type == "multilabel":
        mlb = MultiLabelBinarizer(classes=card.labels).fit([card.labels])
        ytr_b, yte_b = mlb.transform(ytr), mlb.transform(yte)
        cols = [j for j in range(ytr_b.shape[1]) if 0 < ytr_b[:, j].sum() < len(ytr_b)]
        pred = np.zeros_like(yte_b)
        for j in cols:
            pred[:, j] = LogisticRegression(max_iter=2000, C=0.5).fit(xtr, ytr_b[:, j]).predict(xte)
        majority = np.tile((ytr_b.mean(0) > 0.5).astype(int), (len(yte_b), 1))
        f1 = f1_score(yte_b[:, cols], pred[:, cols], average="macro", zero_division=0)
        base = f1_score(yte_b[:, cols], majority[:, cols], average="macro", zero_division=0)
        assert f1 >= base + 0.3, (f1, base)
    else:
        ytr1, yte1 = [y[0] for y in ytr], [y[0] for y in yte]
        acc = accuracy_score(yte1, LogisticRegression(max_iter=2000, C=0.5).fit(xtr, ytr1).predict(xte))
        majority = Counter(yte1).most_common(1)[0][1] / len(yte1)
        assert acc >= max(majority, 1 / len(set(ytr1))) + 0.2, (acc, majority)


def test_tiny_benchmark_shows_the_paper_data_warnings(tables, tiny_root):
    _, results = tables
    root = tiny_root.resolve()
    assert results["pneumoniamnist"].warnings == [
        f"pneumoniamnist: read pneumoniamnist.npz (28 px); the paper trains and tests at 224 px: place "
        f"pneumoniamnist_224.npz (MedMNIST+) in {root / 'medmnist'}"]
    assert results["iu_xray"].warnings == [
        f"iu_xray: no split file r2gen_annotation.json in {root / 'iu_xray'}, so rows are split at random (seeded "
        f"train 0.7 / val 0.1 / test 0.2, seed 0); the standard split is R2Gen's annotation.json (Chen et al. 2020, "
        f"github.com/zhjohnchan/R2Gen), the split the paper follows: place it there as r2gen_annotation.json"]
    assert results["ham10000"].warnings == []


# --- MedMNIST: the paper's 224-px file (MedMNIST+) before the smaller ones ----------------------------------------

def _npz(path, side: int, counts: tuple[int, int, int], level: int) -> None:
    """A MedMNIST-layout archive: `counts` train/val/test images of `side` px, all grey `level`, labels 0,1,0,..."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, k in zip(("train", "val", "test"), counts):
        arrays[f"{split}_images"] = np.full((k, side, side), level, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(k) % 2).reshape(k, 1).astype(np.uint8)
    np.savez(path, **arrays)


def _rows(card, root):
    from tasks.ingest.loaders import iter_dataset
    from tasks.ingest.loaders.common import collect_warnings

    with collect_warnings() as warnings:
        rows = list(iter_dataset(card, root))
    return rows, warnings


def test_medmnist_224_file_is_read_when_both_are_present(tmp_path):
    card = get_card("pneumoniamnist")
    _npz(tmp_path / "medmnist" / "pneumoniamnist.npz", 28, (3, 2, 2), level=10)
    _npz(tmp_path / "medmnist" / "pneumoniamnist_224.npz", 224, (2, 1, 1), level=200)
    rows, warnings = _rows(card, tmp_path)
    assert warnings == []
    assert Counter(r["split"] for r in rows) == {"train": 2, "val": 1, "test": 1}
    assert {(r["image_width"], r["image_height"]) for r in rows} == {(224, 224)}
    assert {r["source_path"].split("#")[0] for r in rows} == {"medmnist/pneumoniamnist_224.npz"}
    assert [r["labels"] for r in rows if r["split"] == "train"] == [["normal"], ["pneumonia"]]


def test_medmnist_largest_smaller_file_is_read_with_a_warning(tmp_path):
    card = get_card("pneumoniamnist")
    d = (tmp_path / "medmnist").resolve()
    _npz(d / "pneumoniamnist.npz", 28, (3, 2, 2), level=10)
    _npz(d / "pneumoniamnist_64.npz", 64, (1, 1, 1), level=90)
    rows, warnings = _rows(card, tmp_path)
    assert {r["image_width"] for r in rows} == {64} and len(rows) == 3
    assert warnings == [f"pneumoniamnist: read pneumoniamnist_64.npz (64 px); the paper trains and tests at 224 px: "
                        f"place pneumoniamnist_224.npz (MedMNIST+) in {d}"]


def test_medmnist_28px_warning_reaches_the_result_and_a_224_file_re_ingests(tmp_path, caplog):
    card = get_card("pneumoniamnist")
    raw, out = tmp_path / "raw", tmp_path / "tables"
    d = (raw / "medmnist").resolve()
    _npz(d / "pneumoniamnist.npz", 28, (3, 2, 2), level=10)
    expected = (f"pneumoniamnist: read pneumoniamnist.npz (28 px); the paper trains and tests at 224 px: place "
                f"pneumoniamnist_224.npz (MedMNIST+) in {d}")
    with caplog.at_level("WARNING", logger="gsco.ingest"):
        first = ingest_dataset(card, raw, out)
    assert first.status == "written" and first.warnings == [expected]
    assert [r.getMessage() for r in caplog.records if r.name == "gsco.ingest"] == [expected]
    assert read_manifest(out, "pneumoniamnist")["meta"]["warnings"] == [expected]
    assert first.to_dict()["warnings"] == [expected]
    again = ingest_dataset(card, raw, out)
    assert again.status == "cached" and again.cache_key == first.cache_key and again.warnings == [expected]

    _npz(d / "pneumoniamnist_224.npz", 224, (2, 1, 1), level=200)
    third = ingest_dataset(card, raw, out)
    assert third.status == "written" and third.cache_key != first.cache_key and third.warnings == []
    assert read_manifest(out, "pneumoniamnist")["meta"]["warnings"] == []
    test = read_samples(out, "pneumoniamnist", "test")
    assert test.height == 1 and test["image_width"].to_list() == [224]
