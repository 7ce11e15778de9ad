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
