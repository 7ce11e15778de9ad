"""The samples contract: schema, validation messages, digest properties, atomic sharded writes."""
from __future__ import annotations

import io

import polars as pl
import pyarrow as pa
import pytest
from PIL import Image

from data_contracts.errors import ContractError
from data_contracts.io import DatasetWriter, read_manifest, read_samples, table_digest
from data_contracts.samples import SAMPLES_SCHEMA, find_problems


def _png(v: int, size=8) -> bytes:
    b = io.BytesIO()
    Image.new("L", (size, size), color=v).save(b, "PNG")
    return b.getvalue()


def _rows(n=6, split="train"):
    return [dict(sample_id=f"d:{split}:{i}", dataset="d", split=split, task_kind="diagnosis", task_type="binary",
                 modality="x-ray", image=_png(i), image_format="PNG", image_width=8, image_height=8,
                 labels=["a" if i % 2 else "b"], label_set=["a", "b"], question=None, answer=None, answer_type=None,
                 text=None, source_path=f"d/img{i}.png") for i in range(n)]


def _df(rows):
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA))


def test_digest_is_order_independent_and_content_sensitive():
    df = _df(_rows())
    assert table_digest(df) == table_digest(df.reverse())
    assert len(table_digest(df)) == 32
    changed = _rows()
    changed[3]["labels"] = ["b"] if changed[3]["labels"] == ["a"] else ["a"]
    assert table_digest(_df(changed)) != table_digest(df)
    changed = _rows()
    changed[0]["image"] = _png(200)
    assert table_digest(_df(changed)) != table_digest(df)


def test_problems_name_row_field_and_source():
    rows = _rows()
    rows[2]["labels"] = ["zebra"]
    rows[4]["split"] = "training"
    rows[5]["image"] = b"\x89PNG broken"
    problems = find_problems(_df(rows))
    by_field = {(p.field, p.row): p for p in problems}
    assert ("labels", 2) in by_field and by_field[("labels", 2)].source_path == "d/img2.png"
    assert ("split", 4) in by_field
    assert ("image", 5) in by_field
    assert "d/img5.png row 5" in str(by_field[("image", 5)])


def test_writer_shards_and_reads_back(tmp_path):
    df = _df(_rows(40))
    with DatasetWriter(tmp_path, "d", target_shard_bytes=500) as w:
        for i in range(0, 40, 10):
            w.add("train", df[i:i + 10])
    m = read_manifest(tmp_path, "d")
    assert m["splits"]["train"]["rows"] == 40 and len(m["splits"]["train"]["shards"]) > 1
    back = read_samples(tmp_path, "d", "train", verify_digest=True)
    assert back.height == 40 and m["splits"]["train"]["digest"] == table_digest(df)


def test_failed_write_leaves_previous_tables(tmp_path):
    with DatasetWriter(tmp_path, "d") as w:
        w.add("train", _df(_rows()))
    before = read_manifest(tmp_path, "d")
    bad = _rows()
    bad[1]["labels"] = ["zebra"]
    with pytest.raises(ContractError, match=r"d/img1.png row 1.*labels"):
        with DatasetWriter(tmp_path, "d") as w:
            w.add("val", _df(_rows(3, split="val")))
            w.add("train", _df(bad))
    assert read_manifest(tmp_path, "d") == before
    assert read_samples(tmp_path, "d", "train").height == 6
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".d.lock"]   # no temp folder left
