"""The tiny profile's corpus options: CLS rows in the evaluation's words, in-domain stand-ins, and collaboration rows
built from training data only (never a test sample, never a sample's own label as its neighbour)."""
from __future__ import annotations

import polars as pl
import pytest

from data_contracts.instructions import validate_instructions
from data_contracts.io import read_samples
from data_contracts.layout import CorpusFiles
from tasks import prompts
from tasks.generalist.collaboration import collaboration_rows
from tasks.generalist.corpus import assemble_corpus, corpus_shards
from tasks.generalist.stage import corpus_sources
from tasks.ingest.tiny_benchmark import TINY_DATASETS


def _rows(tmp_path, tiny_tables, **kw):
    sources = corpus_sources(tiny_tables, ["ham10000", "chestmnist"], **kw)
    res = assemble_corpus(sources, {}, CorpusFiles(tmp_path / "corpus"), cls_prompt="evaluation")
    return pl.concat([pl.read_parquet(p) for p in corpus_shards(CorpusFiles(tmp_path / "corpus"))]), res


def test_cls_rows_in_the_evaluations_words_and_in_domain_stand_ins(tiny_tables, tmp_path):
    assert {s.dataset for s in corpus_sources(tiny_tables, list(TINY_DATASETS))} == \
        {"dermnet", "ham10000", "slake", "iu_xray"}
    assert {s.dataset for s in corpus_sources(tiny_tables, list(TINY_DATASETS), in_domain_train=True)} == \
        {"dermnet", "ham10000", "slake", "iu_xray", "chestmnist"}   # in-domain; pneumonia/breast are out-of-domain
    df, _ = _rows(tmp_path, tiny_tables, in_domain_train=True)
    ham = read_samples(tiny_tables, "ham10000", "train").row(0, named=True)
    row = df.filter(pl.col("sample_id") == f"diagnosis:{ham['sample_id']}").row(0, named=True)
    assert row["instruction"] == prompts.diagnosis_prompt("dermoscopy", ham["label_set"], False, None, None)
    chest = df.filter(pl.col("source_dataset") == "chestmnist").row(0, named=True)
    assert chest["instruction"].endswith(prompts.MULTILABEL_RESPONSE)


def test_collaboration_rows_use_the_samples_own_references_and_true_label(tiny_tables):
    train = read_samples(tiny_tables, "ham10000", "train").head(3)
    ids = train["sample_id"].to_list()
    moed = {s: ["Melanoma", "Dermatofibroma"] for s in ids}
    rad = {s: ["Vascular lesions"] * 5 for s in ids}
    df = collaboration_rows(train, moed, rad, ["MedDr+MoED", "GSCo"], paraphrase=0)
    validate_instructions(df, "collaboration")
    assert df.height == 6 and set(df["task_kind"]) == {"collaboration"}
    r = train.row(1, named=True)
    gsco = df.filter(pl.col("sample_id") == f"collaboration:GSCo:{r['sample_id']}").row(0, named=True)
    assert gsco["instruction"] == prompts.diagnosis_prompt(r["modality"], r["label_set"], False,
                                                           rad=rad[r["sample_id"]], moed=moed[r["sample_id"]])
    assert gsco["answer"] == r["labels"][0]
    moed_only = df.filter(pl.col("sample_id") == f"collaboration:MedDr+MoED:{r['sample_id']}")["instruction"][0]
    assert "most similar cases" not in moed_only and "Melanoma" in moed_only


def test_collaboration_rows_refuse_test_samples_and_missing_references(tiny_tables):
    test = read_samples(tiny_tables, "ham10000", "test").head(1)
    sid = test["sample_id"][0]
    with pytest.raises(ValueError, match="train/val samples only"):
        collaboration_rows(test, {sid: ["Melanoma"]}, {sid: ["Melanoma"]}, ["GSCo"])
    train = read_samples(tiny_tables, "ham10000", "train").head(1)
    with pytest.raises(ValueError, match="needs RAD references"):
        collaboration_rows(train, {train["sample_id"][0]: ["Melanoma"]}, {}, ["MedDr+RAD"])


def test_rotate_gives_every_sample_the_plain_prompt_and_one_reference_arm_in_turn(tiny_tables):
    train = read_samples(tiny_tables, "ham10000", "train").head(4)
    ids = train["sample_id"].to_list()
    refs = {s: ["Melanoma"] for s in ids}
    df = collaboration_rows(train, refs, refs, ["MedDr", "MedDr+MoED", "MedDr+RAD", "GSCo"], per_sample="rotate")
    arms = [sid.split(":")[1] for sid in df["sample_id"].to_list()]
    assert arms == ["MedDr", "MedDr+MoED", "MedDr", "MedDr+RAD", "MedDr", "GSCo", "MedDr", "MedDr+MoED"]
    plain = df.filter(pl.col("sample_id") == f"collaboration:MedDr:{ids[0]}")["instruction"][0]
    assert "reference answers" not in plain and "most similar cases" not in plain
