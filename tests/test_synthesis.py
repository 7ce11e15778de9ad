"""DGB/DES synthesis: prompts, post-filter, resumable batches, cache on (inputs, generalist, settings)."""
from __future__ import annotations

import polars as pl
import pytest

from data_contracts.io import read_samples
from tasks import prompts
from data_contracts.layout import SynthesisFiles
from tasks.generalist.backends import TransformersGeneralist
from tasks.generalist.settings import GenerationSettings
from tasks.generalist.synthesis import read_synthesis, synthesize

SETTINGS = GenerationSettings(max_new_tokens=8, do_sample=False, num_beams=1, seed=0)


class Counting:
    """Wraps a real generalist and counts the prompts it was asked to answer."""

    def __init__(self, inner):
        self.inner, self.id, self.calls = inner, inner.id, 0

    def generate(self, images, texts, settings):
        self.calls += len(texts)
        return self.inner.generate(images, texts, settings)


class EchoCase:
    """A generalist that leaks the case text back (what a model that ignored the DES instruction would do)."""

    id = "echo-case@1"

    def generate(self, images, texts, settings):
        return [t.split("Case:", 1)[-1].strip() if "Case:" in t else t for t in texts]


@pytest.fixture(scope="module")
def generalist(tiny_generalist_dir):
    return TransformersGeneralist(str(tiny_generalist_dir), batch_size=8)


def _dgb_source(tiny_tables) -> pl.DataFrame:
    return read_samples(tiny_tables, "dermnet", "train").head(20)


def test_dgb_prompts_and_outputs_recorded(tiny_tables, generalist, tmp_path):
    src = _dgb_source(tiny_tables)
    res = synthesize("dgb", src, generalist, SETTINGS, SynthesisFiles(tmp_path / "dgb"), batch_size=8)
    assert res.status == "written" and res.rows == 20 and res.generated == 20
    df = read_synthesis(SynthesisFiles(tmp_path / "dgb"))
    row = df.filter(pl.col("source_sample_id") == src["sample_id"][0]).row(0, named=True)
    assert row["prompt"] == prompts.dgb_prompt(src["modality"][0], ", ".join(src["labels"][0]))
    assert row["prompt"].startswith("You are a helpful medical assistant. Your task is medical report generation. "
                                    "You are given a dermatology photograph image, and the diagnosis is ")
    assert row["generalist"] == generalist.id and '"max_new_tokens": 8' in row["settings"]
    assert set(df["kind"]) == {"dgb"} and df["sample_id"].n_unique() == 20


def test_killed_synthesis_resumes_without_regenerating(tiny_tables, generalist, tmp_path):
    src = _dgb_source(tiny_tables)
    g = Counting(generalist)
    with pytest.raises(InterruptedError):
        synthesize("dgb", src, g, SETTINGS, SynthesisFiles(tmp_path / "dgb"), batch_size=8, stop_after_batches=1)
    assert g.calls == 8
    assert len(list((tmp_path / "dgb" / "parts").glob("part-*.parquet"))) == 1
    res = synthesize("dgb", src, g, SETTINGS, SynthesisFiles(tmp_path / "dgb"), batch_size=8)
    assert res.status == "written" and res.generated == 12 and res.rows == 20 and g.calls == 20
    again = synthesize("dgb", src, g, SETTINGS, SynthesisFiles(tmp_path / "dgb"), batch_size=8)
    assert again.status == "cached" and again.generated == 0 and g.calls == 20 and again.digest == res.digest
    # other settings are another cache entry: everything is generated again
    other = synthesize("dgb", src, g, GenerationSettings(max_new_tokens=4, do_sample=False, num_beams=1, seed=0),
                       SynthesisFiles(tmp_path / "dgb"), batch_size=8)
    assert other.status == "written" and other.generated == 20 and g.calls == 40


def test_des_postfilter_removes_planted_identifiers(tiny_tables, tiny_root, tmp_path):
    import json
    cases = {c["uid"]: c for c in map(json.loads, (tiny_root / "openi_cases" / "cases.jsonl").read_text()
                                      .splitlines())}
    src = read_samples(tiny_tables, "openi_cases", "train")
    res = synthesize("des", src, EchoCase(), SETTINGS, SynthesisFiles(tmp_path / "des"), batch_size=16)
    df = read_synthesis(SynthesisFiles(tmp_path / "des"))
    planted = 0
    for r in df.iter_rows(named=True):
        case = cases[r["source_sample_id"].split(":", 1)[1]]
        assert r["prompt"] == prompts.des_rewrite_prompt(src.filter(pl.col("sample_id") == r["source_sample_id"])
                                                          ["text"][0])
        for item in case["planted"]:
            assert item in r["raw_output"] and item not in r["output"]
        planted += len(case["planted"])
        assert r["removals"] >= len(case["planted"])
    assert sum(res.removals.values()) >= planted > 10
