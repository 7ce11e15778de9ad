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
from data_contracts.io import read_samples
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
