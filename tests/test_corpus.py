"""Corpus assembly: counts per source match the inputs, shards validate, test splits stay out, cache, InternVL export."""
from __future__ import annotations

import json

import polars as pl

from data_contracts.instructions import validate_instructions
from data_contracts.io import read_manifest, read_samples
from data_contracts.layout import CorpusFiles, SynthesisFiles
from tasks import prompts
from tasks.generalist.corpus import assemble_corpus, corpus_shards, export_internvl
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

    meta = json.loads(export_internvl(CorpusFiles(tmp_path / "corpus"), tmp_path / "internvl").read_text())
    entry = meta["gsco_corpus"]
    lines = open(entry["annotation"]).read().splitlines()
    assert entry["length"] == len(lines) == res.rows
    first = json.loads(lines[0])
    assert first["conversations"][0]["value"].startswith("<image>\n")


def test_duplicates_removed(tiny_tables, tmp_path):
    sources = corpus_sources(tiny_tables, ["ham10000"])
    doubled = sources + sources[:1]  # the same table twice: every row of it is a duplicate
    res = assemble_corpus(doubled, {}, CorpusFiles(tmp_path / "corpus"))
    train_rows = read_manifest(tiny_tables, "ham10000")["splits"]["train"]["rows"]
    assert res.duplicates_removed == train_rows
    assert res.rows == sum(read_manifest(tiny_tables, "ham10000")["splits"][s]["rows"] for s in ("train", "val"))
