"""Corpus assembly: counts per source match the inputs, shards validate, test splits stay out, cache, InternVL export;
rows refer to their images in the samples tables; a duplicate image is removed once; digests do not depend on batching.
"""
from __future__ import annotations

import json
import shutil

import polars as pl
import pyarrow as pa
import pytest

from data_contracts.errors import ContractError
from data_contracts.instructions import image_digest, validate_instructions
from data_contracts.io import DatasetWriter, read_manifest, read_samples
from data_contracts.layout import CorpusFiles, SynthesisFiles
from tasks import prompts
from tasks.generalist.collaboration import collaboration_rows
from tasks.generalist.corpus import TableDigest, assemble_corpus, corpus_shards, export_internvl
from tasks.generalist.stage import corpus_sources
from tasks.generalist.synthesis import synthesize
from tasks.ingest.tiny_benchmark import TINY_DATASETS
from tests.test_synthesis import SETTINGS, EchoCase


def _synth(tiny_tables, tmp_path):
    src = read_samples(tiny_tables, "openi_cases", "train")
    res = synthesize("des", src, EchoCase(), SETTINGS, SynthesisFiles(tmp_path / "synthesis" / "des"), batch_size=16)
    return {"des": (tmp_path / "synthesis" / "des", res.digest)}, res.rows


def test_corpus_counts_validate_and_cache(tiny_tables, tmp_path):
    sources = corpus_sources(tiny_tables, list(TINY_DATASETS))
    assert {s.dataset for s in sources} == {"dermnet", "ham10000", "slake", "iu_xray"}   # training-role sets only
    assert {s.split for s in sources} == {"train", "val"}
    synth, n_des = _synth(tiny_tables, tmp_path)
    res = assemble_corpus(sources, synth, CorpusFiles(tmp_path / "corpus"), rows_per_shard=100)
    assert res.status == "written" and res.duplicates_removed == 0
    expected = {f"{s.dataset}/{s.task_kind}/{s.split}": read_manifest(tiny_tables, s.dataset)["splits"][s.split]["rows"]
                for s in sources}
    expected["openi_cases/des/train"] = n_des
    assert res.counts == expected and res.rows == sum(expected.values())

    shards = corpus_shards(CorpusFiles(tmp_path / "corpus"))
    assert len(shards) > 1
    df = pl.concat([pl.read_parquet(p) for p in shards])
    validate_instructions(df, "corpus")
    assert df.height == res.rows and df["sample_id"].n_unique() == res.rows
    assert set(df["split"]) == {"train", "val"}
    ham = df.filter(pl.col("source_dataset") == "ham10000").row(0, named=True)
    assert ham["instruction"].startswith("You are a helpful medical assistant. Your task is disease diagnosis. "
                                         "You are given a dermoscopy image. The possible diagnoses are: ")
    vqa = df.filter(pl.col("task_kind") == "vqa").row(0, named=True)
    assert vqa["instruction"].startswith(prompts.VQA_TEMPLATE.split("{")[0])
    assert df.filter(pl.col("task_kind") == "report")["instruction"].unique().to_list() == [prompts.MRG_TEMPLATE]

    again = assemble_corpus(sources, synth, CorpusFiles(tmp_path / "corpus"), rows_per_shard=100)
    assert again.status == "cached" and again.digest == res.digest

    # rows refer to their images: no bytes in the corpus, each reference's digest is that of the samples table's image
    assert "image" not in df.columns and res.counts and (tmp_path / "corpus" / "images.parquet").exists()
    samples = pl.concat([read_samples(tiny_tables, d, sp).select("dataset", "split", "sample_id", "image")
                         for d, sp in {(s.dataset, s.split) for s in sources} | {("openi_cases", "train")}])
    truth = {(d, sp, i): image_digest(b) for d, sp, i, b in samples.iter_rows()}
    assert [truth[k] for k in zip(df["source_dataset"], df["split"], df["image_sample_id"])] == \
        df["image_digest"].to_list()

    meta = json.loads(export_internvl(CorpusFiles(tmp_path / "corpus"), tmp_path / "internvl", tiny_tables)
                      .read_text())
    entry = meta["gsco_corpus"]
    lines = open(entry["annotation"]).read().splitlines()
    assert entry["length"] == len(lines) == res.rows
    first = json.loads(lines[0])
    assert first["conversations"][0]["value"].startswith("<image>\n")
    assert first["conversations"][0]["value"] == "<image>\n" + df["instruction"][0]
    # each distinct image once, named by its digest, holding the samples table's bytes
    files = sorted(p.name for p in (tmp_path / "internvl" / "images").iterdir())
    assert [f.split(".")[0] for f in files] == sorted(set(df["image_digest"]))
    name = json.loads(lines[5])["image"]
    assert image_digest((tmp_path / "internvl" / "images" / name).read_bytes()) == df["image_digest"][5] == \
        name.split(".")[0]


def test_duplicates_removed(tiny_tables, tmp_path):
    sources = corpus_sources(tiny_tables, ["ham10000"])
    doubled = sources + sources[:1]  # the same table twice: every row of it is a duplicate
    res = assemble_corpus(doubled, {}, CorpusFiles(tmp_path / "corpus"))
    train_rows = read_manifest(tiny_tables, "ham10000")["splits"]["train"]["rows"]
    assert res.duplicates_removed == train_rows
    assert res.rows == sum(read_manifest(tiny_tables, "ham10000")["splits"][s]["rows"] for s in ("train", "val"))


def _planted(tiny_tables, tmp_path):
    """A copy of the tiny tables whose ham10000 train split holds one more sample: sample 3's image and labels under
    another id (the same image twice in one table, as VQA sets and re-releases have)."""
    tables = tmp_path / "tables"
    shutil.copytree(tiny_tables, tables)
    train = read_samples(tables, "ham10000", "train")
    copy = train[3].with_columns(sample_id=pl.lit("ham10000:planted-copy"), source_path=pl.lit("planted.jpg"))
    with DatasetWriter(tables, "ham10000") as w:
        for split in ("train", "val", "test"):
            w.write_split(split, pl.concat([train, copy]) if split == "train" else read_samples(tables, "ham10000",
                                                                                                split))
    return tables, train.row(3, named=True)


def test_a_planted_duplicate_image_is_removed_once(tiny_tables, tmp_path):
    """The same image bytes under two sample ids of one table, and again in a second source (a collaboration row
    asked in the CLS row's own words): exactly one row of that image, instruction and answer remains, the first."""
    tables, original = _planted(tiny_tables, tmp_path)
    sources = corpus_sources(tables, ["ham10000"])
    ham = read_samples(tables, "ham10000", "train").filter(pl.col("sample_id") == original["sample_id"])
    collaboration_rows(ham, {}, {}, ["MedDr"]).write_parquet(tmp_path / "collab.parquet")
    res = assemble_corpus(sources, {}, CorpusFiles(tmp_path / "corpus"), cls_prompt="evaluation",
                          extra={"collaboration": (tmp_path / "collab.parquet", "c")})
    df = pl.concat([pl.read_parquet(p) for p in corpus_shards(CorpusFiles(tmp_path / "corpus"))])
    digest = image_digest(original["image"])
    same = df.filter(pl.col("image_digest") == digest)
    assert same.height == 1 and same["sample_id"].to_list() == [f"diagnosis:{original['sample_id']}"]
    assert res.duplicates_removed == 2   # the planted copy's CLS row and the collaboration row
    rows_in = sum(read_manifest(tables, "ham10000")["splits"][s]["rows"] for s in ("train", "val")) + 1
    assert res.rows == df.height == rows_in - 2
    assert "diagnosis:ham10000:planted-copy" not in df["sample_id"].to_list()


def test_digests_do_not_depend_on_batching_and_a_missing_image_is_named(tiny_tables, tmp_path):
    sources = corpus_sources(tiny_tables, ["ham10000", "slake"])
    a = assemble_corpus(sources, {}, CorpusFiles(tmp_path / "a"), rows_per_shard=64)
    b = assemble_corpus(sources, {}, CorpusFiles(tmp_path / "b"), rows_per_shard=64)
    assert a.digest == b.digest and a.status == b.status == "written"
    shards = corpus_shards(CorpusFiles(tmp_path / "a"))
    table = pa.concat_tables([pl.read_parquet(p).to_arrow() for p in shards[:1]])
    whole, pieces = TableDigest(), TableDigest()
    whole.update(table)
    for start in (0, 1, 7, 30):
        pieces.update(table.slice(start, {0: 1, 1: 6, 7: 23, 30: table.num_rows}[start]))
    assert whole.hexdigest() == pieces.hexdigest() == read_manifest_digest(tmp_path / "a", 0)
    changed = table.set_column(3, "instruction", pa.array(["x" + t for t in table.column(3).to_pylist()]))
    other = TableDigest()
    other.update(changed)
    assert other.hexdigest() != whole.hexdigest()

    # a collaboration row that refers to a sample the tables do not hold fails, naming it
    ham = read_samples(tiny_tables, "ham10000", "train").head(1).with_columns(sample_id=pl.lit("ham10000:gone"))
    collaboration_rows(ham, {}, {}, ["MedDr"]).write_parquet(tmp_path / "collab.parquet")
    with pytest.raises(ContractError, match=r"corpus row collaboration:MedDr:ham10000:gone: its image, sample "
                                            r"'ham10000:gone' of ham10000/train, is not in the samples tables"):
        assemble_corpus(sources, {}, CorpusFiles(tmp_path / "c"),
                        extra={"collaboration": (tmp_path / "collab.parquet", "c")})
    assert not (tmp_path / "c").exists()


def read_manifest_digest(corpus_dir, shard: int) -> str:
    return json.loads((corpus_dir / "_corpus.json").read_text())["shards"][shard]["digest"]
