"""`gsco datasets validate NAME PATH`: a user's local copy checked against its data card, nothing written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl

from data_contracts.cards import get_card
from tasks.ingest.validate import validate_local_copy

BIN = Path(sys.executable).parent


def test_a_good_copy_passes_with_its_row_counts(tiny_root):
    rep = validate_local_copy(get_card("ham10000"), tiny_root)          # the data root holding ham10000/
    assert rep.ok and not rep.missing and not rep.problems
    assert dict(rep.rows) == {"train": 96, "val": 24, "test": 48}
    same = validate_local_copy(get_card("ham10000"), tiny_root / "ham10000")   # or the dataset folder itself
    assert same.ok and same.rows == rep.rows


def test_a_bad_copy_lists_missing_files_and_bad_rows(tiny_copy):
    csv = tiny_copy / "ham10000" / "HAM10000_metadata.csv"
    df = pl.read_csv(csv, infer_schema=False)
    df.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(pl.lit("zebra")).otherwise(pl.col("dx"))
                    .alias("dx")).write_csv(csv)
    rep = validate_local_copy(get_card("ham10000"), tiny_copy)
    assert not rep.ok and len(rep.problems) == 1 and "zebra" in rep.problems[0]
    assert "NOT OK" in "\n".join(rep.lines())
    r = subprocess.run([str(BIN / "gsco"), "datasets", "validate", "ham10000", str(tiny_copy)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "zebra" in r.stdout and "NOT OK" in r.stdout
    (tiny_copy / "medmnist" / "breastmnist.npz").unlink()
    missing = validate_local_copy(get_card("breastmnist"), tiny_copy)
    assert not missing.ok and missing.missing == [f"{tiny_copy / 'medmnist'}/breastmnist*.npz (raw.files)"]


def test_validate_says_which_medmnist_file_and_which_iu_xray_split_it_uses(tiny_copy):
    import json

    import numpy as np

    mm, iu = (tiny_copy / "medmnist").resolve(), (tiny_copy / "iu_xray").resolve()
    small = (f"read pneumoniamnist.npz (28 px); the paper trains and tests at 224 px: place pneumoniamnist_224.npz "
             f"(MedMNIST+) in {mm}")
    rep = validate_local_copy(get_card("pneumoniamnist"), tiny_copy)
    assert rep.ok and rep.notes == [f"MedMNIST file: {small}"] and rep.warnings == [f"pneumoniamnist: {small}"]
    assert f"  NOTE     MedMNIST file: {small}" in rep.lines()
    assert not [line for line in rep.lines() if "WARNING" in line]     # the warning only repeats the note
    no_split = (f"no split file r2gen_annotation.json in {iu}, so rows are split at random (seeded train 0.7 / val "
                "0.1 / test 0.2, seed 0); the standard split is R2Gen's annotation.json (Chen et al. 2020, "
                "github.com/zhjohnchan/R2Gen), the split the paper follows: place it there as r2gen_annotation.json")
    rep = validate_local_copy(get_card("iu_xray"), tiny_copy)
    assert rep.ok and rep.notes == [f"split file: {no_split}"] and rep.warnings == [f"iu_xray: {no_split}"]
    for name, note in (("pneumoniamnist", f"MedMNIST file: {small}"), ("iu_xray", f"split file: {no_split}")):
        r = subprocess.run([str(BIN / "gsco"), "datasets", "validate", name, str(tiny_copy)], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and f"  NOTE     {note}\n" in r.stdout, r.stdout + r.stderr

    arrays = {}
    for split, k in (("train", 2), ("val", 1), ("test", 1)):
        arrays[f"{split}_images"] = np.zeros((k, 224, 224), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.zeros((k, 1), dtype=np.uint8)
    np.savez(mm / "pneumoniamnist_224.npz", **arrays)
    rep = validate_local_copy(get_card("pneumoniamnist"), tiny_copy)
    assert rep.ok and rep.warnings == [] and dict(rep.rows) == {"train": 2, "val": 1, "test": 1}
    assert rep.notes == ["MedMNIST file: read pneumoniamnist_224.npz (224 px, MedMNIST+), the size the paper trains "
                         "and tests at"]
    ann = {"train": [{"id": f"CXR{u}_IM-{u:04d}"} for u in range(1, 11)], "val": [{"id": "CXR11_IM-0011"}],
           "test": [{"id": f"CXR{u}_IM-{u:04d}"} for u in (12, 13, 14)]}
    (iu / "r2gen_annotation.json").write_text(json.dumps(ann))
    rep = validate_local_copy(get_card("iu_xray"), tiny_copy)
    assert rep.ok and rep.warnings == [] and dict(rep.rows) == {"train": 10, "val": 1, "test": 3}
    assert rep.notes == ["split file: r2gen_annotation.json found; rows follow it, rows it does not list are left out"]
