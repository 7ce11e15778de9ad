"""Tiny synthetic benchmark: card layouts, byte-identical regeneration, learnable classes, consistent text, planted PHI.

    cd /work/main && OMP_NUM_THREADS=1 pytest -q tests/test_tiny_benchmark.py

The raw files are read here directly (numpy, csv, json, PIL), not through tasks/ingest/loaders, so these tests pin the raw
formats themselves; tests/test_loaders.py covers the loaders on the same files.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from data_contracts.cards import get_card
from tasks.ingest.tiny_benchmark import DEFAULT_SIZES, DERMNET_CLASSES, MANIFEST, TINY_DATASETS, generate_tiny_benchmark

DIAGNOSIS = [n for n in TINY_DATASETS if get_card(n).task_kind == "diagnosis"]
MEDMNIST = [n for n in DIAGNOSIS if get_card(n).raw.format == "medmnist_npz"]
SLAKE_FIELDS = ["img_id", "img_name", "question", "answer", "q_lang", "location", "modality", "answer_type",
                "base_type", "content_type", "triple", "qid"]


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _csv_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames), list(r)


def _pixels(images, size: int = 16) -> np.ndarray:
    """Grayscale, downsampled, flattened pixels in [0, 1] of arrays or image files."""
    out = []
    for im in images:
        im = Image.fromarray(im) if isinstance(im, np.ndarray) else Image.open(im)
        out.append(np.asarray(im.convert("L").resize((size, size), Image.BILINEAR), dtype=np.float32).ravel() / 255)
    return np.stack(out)


def _diagnosis_split(root: Path, name: str, split: str) -> tuple[np.ndarray, list[frozenset]]:
    """Pixels and label-name sets of one split, read from the raw files the card describes."""
    card = get_card(name)
    raw, d = card.raw, root / card.raw.dir
    if raw.format == "medmnist_npz":
        z = np.load(d / raw.npz_file)
        labels = z[f"{split}_labels"]
        if card.task_type == "multilabel":
            ys = [frozenset(raw.label_map[str(j)] for j in np.flatnonzero(row)) or frozenset([raw.empty_means])
                  for row in labels]
        else:
            ys = [frozenset([raw.label_map[str(int(v))]]) for v in labels[:, 0]]
        return _pixels(z[f"{split}_images"]), ys
    if raw.format == "image_folder":
        folder = {v: k for k, v in raw.split_folders.items()}[split]
        files = sorted((d / folder).glob("*/*.jpg"))
        return _pixels(files), [frozenset([raw.label_map[p.parent.name]]) for p in files]
    _, rows = _csv_rows(d / raw.table)
    rows = [r for r in rows if r[raw.split.column] == split]
    files = [d / raw.image_dir / f"{r[raw.image_column]}{raw.image_suffix}" for r in rows]
    return _pixels(files), [frozenset([raw.label_map[r[raw.label_column]]]) for r in rows]


# ---------------------------------------------------------------------------------------------------------- layout

def test_every_dataset_has_its_card_raw_files(tiny_root):
    assert set(TINY_DATASETS) == {"chestmnist", "pneumoniamnist", "breastmnist", "dermnet", "ham10000", "slake",
                                  "iu_xray", "openi_cases"}
    for name in TINY_DATASETS:
        raw = get_card(name).raw
        d = tiny_root / raw.dir
        missing = [pattern for pattern in raw.files if not any(d.glob(pattern))]
        assert not missing, f"{name}: nothing matches raw.files {missing} under {d}"
    assert not [p for p in tiny_root.rglob(".*") if p.name != MANIFEST], "temporary files left behind"


@pytest.mark.parametrize("name", MEDMNIST)
def test_medmnist_npz_layout(tiny_root, name):
    card = get_card(name)
    z = np.load(tiny_root / card.raw.dir / card.raw.npz_file, allow_pickle=False)
    assert sorted(z.files) == sorted(f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels"))
    n_cols = len(card.raw.label_map) if card.task_type == "multilabel" else 1
    for split, n in DEFAULT_SIZES.items():
        imgs, labels = z[f"{split}_images"], z[f"{split}_labels"]
        assert imgs.dtype == np.uint8 and imgs.shape == (n, 28, 28)
        assert labels.shape == (n, n_cols) and np.issubdtype(labels.dtype, np.integer)
        if card.task_type == "multilabel":
            assert set(np.unique(labels)) == {0, 1}
            assert (labels.sum(1) == 0).any(), f"{split}: no all-zero ('{card.raw.empty_means}') rows"
            assert (labels.sum(0) > 0).all(), f"{split}: a label never occurs"
        else:
            assert {str(v) for v in np.unique(labels)} == set(card.raw.label_map)


def test_dermnet_class_folders(tiny_root):
    raw = get_card("dermnet").raw
    assert 4 <= len(DERMNET_CLASSES) <= 5
    for folder in raw.split_folders:
        classes = {p.name: len(list(p.glob("*.jpg"))) for p in (tiny_root / raw.dir / folder).iterdir()}
        assert set(classes) == set(DERMNET_CLASSES) and set(classes) <= set(raw.label_map)
        assert min(classes.values()) >= 5
    counts = {f: len(list((tiny_root / raw.dir / f).glob("*/*.jpg"))) for f in raw.split_folders}
    assert counts == {"train": DEFAULT_SIZES["train"] + DEFAULT_SIZES["val"], "test": DEFAULT_SIZES["test"]}
    with Image.open(next((tiny_root / raw.dir / "test").glob("*/*.jpg"))) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and 32 <= im.size[0] <= 48


def test_ham10000_metadata(tiny_root):
    raw = get_card("ham10000").raw
    d = tiny_root / raw.dir
    header, rows = _csv_rows(d / raw.table)
    assert header == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "split"]
    assert {raw.id_column, raw.image_column, raw.label_column, raw.split.column} <= set(header)
    assert len({r["image_id"] for r in rows}) == len(rows) == sum(DEFAULT_SIZES.values())
    for split in ("train", "val", "test"):
        assert {r["dx"] for r in rows if r["split"] == split} == set(raw.label_map), split
    assert len({r["lesion_id"] for r in rows}) < len(rows), "no lesion with several images"
    for r in rows:
        assert re.fullmatch(r"ISIC_\d{7}", r["image_id"]) and re.fullmatch(r"HAM_\d{7}", r["lesion_id"])
        assert (d / raw.image_dir / f"{r['image_id']}{raw.image_suffix}").is_file()
        assert r["sex"] in ("male", "female") and (r["age"] == "" or float(r["age"]) > 0)


def test_slake_json(tiny_root):
    raw = get_card("slake").raw
    d = tiny_root / raw.dir
    images_by_split, qids, langs = {}, [], Counter()
    for split, fname in raw.split.files.items():
        records = json.loads((d / fname).read_text(encoding="utf-8"))
        assert isinstance(records, list) and records
        for r in records:
            assert list(r) == SLAKE_FIELDS
            assert re.fullmatch(r"xmlab\d+/source\.jpg", r["img_name"]) and (d / raw.image_dir / r["img_name"]).is_file()
            assert r["answer_type"] in ("OPEN", "CLOSED") and r["base_type"] in ("vqa", "kg")
            assert isinstance(r["triple"], list) and len(r["triple"]) == 3
        qids += [r["qid"] for r in records]
        langs.update(r["q_lang"] for r in records)
        images_by_split[split] = {r["img_name"] for r in records}
    assert len(qids) == len(set(qids))
    assert 50 <= langs["en"] <= 70 and langs["zh"] > 0 and set(langs) == {"en", "zh"}
    assert not (images_by_split["train"] & images_by_split["test"]), "an image is in two splits"


def test_iu_xray_tables(tiny_root):
    raw = get_card("iu_xray").raw
    d = tiny_root / raw.dir
    header, reports = _csv_rows(d / raw.table)
    assert header == ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]
    jheader, projections = _csv_rows(d / raw.join_table)
    assert jheader == ["uid", "filename", "projection"]
    assert 50 <= len(reports) <= 70
    frontal = Counter(p["uid"] for p in projections if p["projection"] == "Frontal")
    lateral = Counter(p["uid"] for p in projections if p["projection"] == "Lateral")
    assert all(frontal[r["uid"]] == 1 and lateral[r["uid"]] == 1 for r in reports)
    for p in projections:
        with Image.open(d / raw.image_dir / p["filename"]) as im:
            assert im.format == "PNG" and 32 <= im.size[0] <= 48
    assert all(r["impression"].strip() for r in reports)
    assert any(not r["findings"] for r in reports), "no impression-only report (the real table has them)"


def test_openi_cases_layout(tiny_root):
    raw = get_card("openi_cases").raw
    d = tiny_root / raw.dir
    cases = [json.loads(line) for line in (d / raw.table).read_text().splitlines()]
    assert 35 <= len(cases) <= 45 and len({c["uid"] for c in cases}) == len(cases)
    for c in cases:
        assert {"uid", "title", "caption", "image", "planted"} <= set(c)
        assert (d / raw.image_dir / c["image"]).is_file()


# -------------------------------------------------------------------------------------------- determinism, files

def test_same_seed_is_byte_identical_and_regeneration_touches_nothing(tiny_root, tmp_path):
    out = tmp_path / "again"
    paths = generate_tiny_benchmark(out, seed=0)
    assert paths == {n: out / get_card(n).raw.dir for n in TINY_DATASETS}
    assert _tree(out) == _tree(tiny_root)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    generate_tiny_benchmark(out, seed=0)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes


def test_other_seed_differs(tiny_root, tmp_path):
    generate_tiny_benchmark(tmp_path / "s1", seed=1)
    a, b = _tree(tiny_root), _tree(tmp_path / "s1")
    for name in TINY_DATASETS:
        prefix = get_card(name).raw.dir + "/"
        changed = [k for k in a if k.startswith(prefix) and a[k] != b.get(k)]
        assert changed, f"{name}: seed 1 produced the same files as seed 0"


def test_rescale_sizes_and_foreign_files(tmp_path):
    d = tmp_path / "d"
    generate_tiny_benchmark(d, seed=3)
    generate_tiny_benchmark(d, seed=3, scale=0.5)
    generate_tiny_benchmark(tmp_path / "fresh", seed=3, scale=0.5)
    assert _tree(d) == _tree(tmp_path / "fresh"), "stale files of the larger run were left behind"
    z = np.load(d / "medmnist" / "breastmnist.npz")
    assert [len(z[f"{s}_images"]) for s in ("train", "val", "test")] == [48, 12, 24]

    generate_tiny_benchmark(tmp_path / "sized", sizes={"train": 30, "val": 10, "test": 20})
    z = np.load(tmp_path / "sized" / "medmnist" / "pneumoniamnist.npz")
    assert [len(z[f"{s}_images"]) for s in ("train", "val", "test")] == [30, 10, 20]

    user = tmp_path / "user"
    real = user / "medmnist" / "chestmnist.npz"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"a user's real download")
    with pytest.raises(FileExistsError, match=r"chestmnist\.npz.*not written by the tiny-benchmark generator"):
        generate_tiny_benchmark(user)
    assert real.read_bytes() == b"a user's real download"
    assert [p.name for p in user.rglob("*") if p.is_file()] == ["chestmnist.npz"]
    with pytest.raises(ValueError, match="scale"):
        generate_tiny_benchmark(tmp_path / "bad", scale=0)


# ------------------------------------------------------------------------------------------------- learnability

@pytest.mark.parametrize("name", DIAGNOSIS)
def test_linear_model_on_pixels_beats_chance(tiny_root, name):
    card = get_card(name)
    test_split = "test"
    xtr, ytr = _diagnosis_split(tiny_root, name, "train")
    xte, yte = _diagnosis_split(tiny_root, name, test_split)
    if card.task_type == "multilabel":
        labels = sorted({lab for s in ytr for lab in s})
        btr = np.array([[lab in s for lab in labels] for s in ytr], dtype=int)
        bte = np.array([[lab in s for lab in labels] for s in yte], dtype=int)
        pred = np.stack([LogisticRegression(max_iter=2000, C=0.5).fit(xtr, btr[:, j]).predict(xte)
                         for j in range(len(labels))], axis=1)
        f1 = f1_score(bte, pred, average="macro", zero_division=0)
        constant = max(f1_score(bte, np.zeros_like(bte), average="macro", zero_division=0),
                       f1_score(bte, np.ones_like(bte), average="macro", zero_division=0))
        assert f1 >= constant + 0.3, (f1, constant)
    else:
        ytr1, yte1 = [next(iter(s)) for s in ytr], [next(iter(s)) for s in yte]
        acc = np.mean(LogisticRegression(max_iter=2000, C=0.5).fit(xtr, ytr1).predict(xte) == np.array(yte1))
        chance = max(Counter(yte1).most_common(1)[0][1] / len(yte1), 1 / len(set(ytr1)))
        assert acc >= chance + 0.25, (acc, chance)


@pytest.mark.parametrize("name", DIAGNOSIS)
def test_nearest_neighbour_shares_the_label(tiny_root, name):
    xtr, ytr = _diagnosis_split(tiny_root, name, "train")
    xte, yte = _diagnosis_split(tiny_root, name, "test")
    d = ((xte[:, None, :] - xtr[None, :, :]) ** 2).sum(-1)
    share = np.array([[bool(a & b) for b in ytr] for a in yte])
    nn_rate = share[np.arange(len(yte)), d.argmin(1)].mean()
    chance = share.mean()   # a random training image instead of the nearest one
    assert nn_rate >= chance + 0.25, (nn_rate, chance)


# ------------------------------------------------------------------------------------ text agrees with the image

def test_iu_xray_report_class_is_visible_in_the_frontal_image(tiny_root):
    raw = get_card("iu_xray").raw
    d = tiny_root / raw.dir
    _, reports = _csv_rows(d / raw.table)
    _, projections = _csv_rows(d / raw.join_table)
    frontal = {p["uid"]: p["filename"] for p in projections if p["projection"] == "Frontal"}
    x = _pixels([d / raw.image_dir / frontal[r["uid"]] for r in reports], size=24)
    # the class as the report states it: "normal" or the first problem, with the side the findings name
    text = [f"{r['findings']} {r['impression']}".lower() for r in reports]
    normal = np.array([r["Problems"] == "normal" for r in reports])
    assert all(("no acute" in t or "normal chest" in t or "no active" in t) == n for t, n in zip(text, normal))
    y = np.array([r["Problems"].split(";")[0] for r in reports])
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    pred = cross_val_predict(LogisticRegression(max_iter=3000, C=1.0), x, y, cv=cv)
    majority = Counter(y).most_common(1)[0][1] / len(y)
    assert (pred == y).mean() >= majority + 0.2, ((pred == y).mean(), majority)


def test_slake_answers_agree_with_each_other_and_the_image_kind(tiny_root):
    raw = get_card("slake").raw
    d = tiny_root / raw.dir
    records = [r for f in raw.split.files.values() for r in json.loads((d / f).read_text(encoding="utf-8"))]
    en = [r for r in records if r["q_lang"] == "en"]
    closed = [r for r in en if r["answer_type"] == "CLOSED"]
    opened = [r for r in en if r["answer_type"] == "OPEN"]
    assert len(closed) >= 15 and len(opened) >= 15
    assert {r["answer"].lower() for r in closed} == {"yes", "no"}
    assert all(r["answer"].lower() not in ("yes", "no") and len(r["answer"].split()) <= 4 for r in opened)
    by_image: dict[str, dict[str, str]] = {}
    for r in en:
        by_image.setdefault(r["img_name"], {})[r["question"]] = r["answer"]
        if r["question"] == "What modality is used to take this image?":
            assert r["answer"] == r["modality"]
    for qa in by_image.values():
        if "Is this image normal?" in qa and "Is this image abnormal?" in qa:
            assert qa["Is this image normal?"] != qa["Is this image abnormal?"]
    # the modality the answers name is what the image looks like: a nearest-centroid rule on pixels recovers it
    first = {}
    for r in en:
        first.setdefault(r["img_name"], r["modality"])
    names = sorted(first)
    x, y = _pixels([d / raw.image_dir / n for n in names], size=24), np.array([first[n] for n in names])
    centroids = {m: x[y == m].mean(0) for m in set(y)}
    pred = [min(centroids, key=lambda m: ((xi - centroids[m]) ** 2).sum()) for xi in x]
    assert np.mean(np.array(pred) == y) >= 0.9


# ---------------------------------------------------------------------------------------------- planted PHI

def test_openi_cases_carry_the_planted_identifiers(tiny_root):
    raw = get_card("openi_cases").raw
    cases = [json.loads(line) for line in (tiny_root / raw.dir / raw.table).read_text().splitlines()]
    with_phi = [c for c in cases if c["planted"]]
    assert len(with_phi) >= 0.7 * len(cases) and len(with_phi) < len(cases)
    for c in cases:
        text = f"{c['title']}\n{c['caption']}"
        for item in c["planted"]:
            assert item in text, (c["uid"], item)
        assert len(c["planted"]) == len(c["planted_kinds"])
        if not c["planted"]:
            assert not re.search(r"\b(Mr|Mrs|Ms)\.|year-old|\d{2}/\d{2}/\d{4}|\d{4}-\d{2}-\d{2}|MRN|record|ID:",
                                 text), text
    kinds = Counter(k for c in cases for k in c["planted_kinds"])
    assert set(kinds) == {"name", "age", "date", "identifier"}
    dates = [p for c in cases for p, k in zip(c["planted"], c["planted_kinds"]) if k == "date"]
    assert any(re.fullmatch(r"\d{2}/\d{2}/\d{4}", s) for s in dates)
    assert any(re.fullmatch(r"[A-Z][a-z]+ \d{1,2}, \d{4}", s) for s in dates)
    names = [p for c in cases for p, k in zip(c["planted"], c["planted_kinds"]) if k == "name"]
    assert all(re.fullmatch(r"(Mr|Mrs|Ms)\. [A-Z][a-z]+ [A-Z][a-z]+", s) for s in names)
    # the caption describes what the image shows
    words = {"effusion": "effusion", "cardiomegaly": "cardiac", "nodule": "nodule", "liver_lesion": "liver",
             "brain_tumor": "mass", "melanoma": "pigmented"}
    assert all(words[c["finding"]] in c["caption"] for c in cases)
