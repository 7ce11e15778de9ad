"""RAD with the generalist's own vision encoder (Table A9): tiny InternVL embeddings, the LanceDB table they key,
neighbours for diagnosis / VQA / reports, and retrieval-label voting.

    OMP_NUM_THREADS=1 pytest -q tests/test_rad_encoder.py
"""
from __future__ import annotations

import io

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from data_contracts.errors import DataError
from tasks.generalist.backends import LazyGeneralist, OpenAIGeneralist, TransformersGeneralist, weights_fingerprint
from tasks.generalist.settings import GeneralistSettings
from tasks.generalist.tiny_internvl import build_tiny_internvl
from tasks.rad.encoder import build_encoder_index, encoder_neighbours, encoder_references, encoder_table_name
from tasks.rad.voting import rad_vote

TEXTS = ["normal pneumonia effusion", "What is shown? A chest x-ray.", "No acute findings."]
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 200, 200), (10, 10, 10), (128, 0, 128)]
LABELS = [["normal"], ["pneumonia"], ["effusion"], ["normal"], ["pneumonia"], ["normal"]]
K = 5


def _png(colour, size=(40, 30)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, colour).save(b, "PNG")
    return b.getvalue()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_profile):
    out = tmp_path_factory.mktemp("rad-encoder") / "tiny"
    return build_tiny_internvl(out, TEXTS, tiny_profile.generalist.tiny_model)


@pytest.fixture(scope="module")
def generalist(tiny_dir):
    return TransformersGeneralist(str(tiny_dir), batch_size=4)   # 6 images: a full batch and a partial one


def _train() -> pl.DataFrame:
    return pl.DataFrame({
        "sample_id": [f"tr{i}" for i in range(6)],
        "image": [_png(c) for c in COLOURS],
        "labels": LABELS,
        "question": [f"What colour is image {i}?" for i in range(6)],
        "answer": [f"colour {i}" for i in range(6)],
        "text": [f"Findings of case {i}." for i in range(6)],
    }, schema_overrides={"image": pl.Binary})


def _test(task_kind: str) -> pl.DataFrame:
    # te0 is byte-identical to train row 3, te1 to train row 0
    return pl.DataFrame({"sample_id": ["te0", "te1"], "image": [_png(COLOURS[3]), _png(COLOURS[0])],
                         "task_kind": [task_kind, task_kind]}, schema_overrides={"image": pl.Binary})


def _ranking(generalist, query_rows: list[int]) -> list[list[int]]:
    """Train rows by cosine distance to the given train rows' embeddings, nearest first (the exact answer)."""
    x = generalist.embed_images([_png(c) for c in COLOURS]).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return [list(np.argsort(1.0 - x @ x[r], kind="stable")) for r in query_rows]


# --- embed_images -----------------------------------------------------------------------------------------------

def test_embeddings_shape_dtype_and_bit_identical(generalist, tiny_dir, tiny_profile):
    images = [_png(c) for c in COLOURS] + [_png(COLOURS[2])]
    x = generalist.embed_images(images)
    dim = tiny_profile.generalist.tiny_model.text_hidden_size   # the projector maps into the language model's width
    assert x.shape == (7, dim) and x.dtype == np.float32 and np.isfinite(x).all()
    assert np.array_equal(x[6], x[2])                                  # identical bytes, other batch position
    assert np.array_equal(generalist.embed_images(images), x)          # two calls
    again = TransformersGeneralist(str(tiny_dir), batch_size=4)        # a fresh load of the same weights
    assert np.array_equal(again.embed_images(images), x)
    assert len({row.tobytes() for row in x[:6]}) == 6                  # six colours, six vectors
    assert generalist.embed_images([]).shape == (0, dim)
    with pytest.raises(ValueError, match=r"images\[1\]: expected PNG/JPEG bytes that decode"):
        generalist.embed_images([images[0], b"not an image"])
    with pytest.raises(ValueError, match=r"embed_images: images\[0\]: expected encoded image bytes"):
        generalist.embed_images(["red"])


def test_embeddings_are_the_image_tokens_generate_sees(generalist):
    images = [_png(c) for c in COLOURS[:3]]
    inputs = generalist.processor_inputs(images, ["Describe the image."] * 3)   # generate()'s own preprocessing
    with torch.inference_mode():
        tokens = generalist.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    n_image_tokens = int((inputs["input_ids"] == generalist.model.config.image_token_id).sum(dim=1)[0])
    assert tokens.shape[1] == n_image_tokens                           # the pooled tokens are the prompt's image tokens
    assert np.array_equal(generalist.embed_images(images), tokens.float().mean(dim=1).numpy())


def test_lazy_delegates_and_served_generalist_refuses(generalist, tiny_dir, tmp_path):
    lazy = LazyGeneralist(str(tiny_dir), weights_fingerprint(tiny_dir),
                          GeneralistSettings(model=str(tiny_dir), batch_size=4))
    images = [_png(c) for c in COLOURS]
    assert np.array_equal(lazy.embed_images(images), generalist.embed_images(images))
    served = OpenAIGeneralist("http://127.0.0.1:9/v1", "MedDr", api_key_env=None)
    with pytest.raises(NotImplementedError, match="exposes no vision encoder"):
        served.embed_images(images)
    with pytest.raises(NotImplementedError, match="exposes no vision encoder"):
        build_encoder_index(served, "tiny", _train(), "diagnosis", tmp_path, ann_min_rows=50_000, index_params={})


# --- index and references ---------------------------------------------------------------------------------------

def test_diagnosis_references_are_the_nearest_cases_labels(generalist, tmp_path):
    info = build_encoder_index(generalist, "tinydx", _train(), "diagnosis", tmp_path, ann_min_rows=50_000,
                               index_params={})
    assert (info["rows"], info["index_type"], info["reused"]) == (6, "FLAT", False)
    assert info["table_name"] == encoder_table_name("tinydx", generalist.id) != encoder_table_name("tinydx", "other")
    assert info["generalist_id"] == generalist.id and info["task_kind"] == "diagnosis"
    again = build_encoder_index(generalist, "tinydx", _train(), "diagnosis", tmp_path, ann_min_rows=50_000,
                                index_params={})
    assert again["reused"] and (again["version"], again["content_digest"]) == (info["version"], info["content_digest"])

    refs = encoder_references(generalist, "tinydx", _test("diagnosis"), tmp_path, K)
    r0, r1 = _ranking(generalist, [3, 0])
    assert r0[0] == 3 and r1[0] == 0                                   # the identical train image comes first
    assert refs == {"te0": [LABELS[i][0] for i in r0[:K]], "te1": [LABELS[i][0] for i in r1[:K]]}
    nb = encoder_neighbours(generalist, "tinydx", _test("diagnosis"), tmp_path, K)
    assert [n.sample_id for n in nb["te0"]] == [f"tr{i}" for i in r0[:K]]
    assert nb["te0"][0].distance == pytest.approx(0.0, abs=1e-6)
    assert nb["te0"][1].distance > 1e-3


@pytest.mark.parametrize("task_kind", ["vqa", "report"])
def test_text_references_are_the_nearest_cases_annotations(generalist, tmp_path, task_kind):
    train = _train()
    build_encoder_index(generalist, "tinytext", train, task_kind, tmp_path, ann_min_rows=50_000, index_params={})
    refs = encoder_references(generalist, "tinytext", _test(task_kind), tmp_path, 3)
    r0, r1 = _ranking(generalist, [3, 0])
    if task_kind == "vqa":
        value = [f"Q: What colour is image {i}? A: colour {i}" for i in range(6)]
    else:
        value = [f"Findings of case {i}." for i in range(6)]
    assert refs == {"te0": [value[i] for i in r0[:3]], "te1": [value[i] for i in r1[:3]]}
    assert refs["te0"][0] == value[3] and refs["te1"][0] == value[0]


def test_bad_frames_name_what_is_missing(generalist, tmp_path):
    with pytest.raises(DataError, match=r"tinyq/train: expected columns .*missing \['question'\]"):
        build_encoder_index(generalist, "tinyq", _train().drop("question"), "vqa", tmp_path, ann_min_rows=50_000,
                            index_params={})
    blank = _train().with_columns(pl.when(pl.col("sample_id") == "tr2").then(pl.lit(" ")).otherwise("text")
                                  .alias("text"))
    with pytest.raises(DataError, match=r"tinyr/train row tr2 field 'text': expected a non-empty report text"):
        build_encoder_index(generalist, "tinyr", blank, "report", tmp_path, ann_min_rows=50_000, index_params={})
    with pytest.raises(ValueError, match=r"task_kind: expected one of \('diagnosis', 'vqa', 'report'\)"):
        build_encoder_index(generalist, "tinyq", _train(), "description", tmp_path, ann_min_rows=50_000,
                            index_params={})
    mixed = pl.concat([_test("vqa").head(1), _test("report").tail(1)])
    with pytest.raises(DataError, match=r"tinyq/test field 'task_kind': expected one task_kind"):
        encoder_references(generalist, "tinyq", mixed, tmp_path, 3)


# --- retrieval-label voting -------------------------------------------------------------------------------------

LABEL_SET = ["normal", "pneumonia", "effusion"]


def test_single_label_vote_majority_and_nearest_case_tie_break():
    assert rad_vote(["pneumonia", "normal", "normal", "effusion", "normal"], LABEL_SET, False) == ["normal"]
    # 2-2-1 tie between effusion and pneumonia: the nearest case holding a tied label decides
    assert rad_vote(["normal", "effusion", "pneumonia", "pneumonia", "effusion"], LABEL_SET, False) == ["effusion"]
    assert rad_vote([["pneumonia"], ["normal"]], LABEL_SET, False) == ["pneumonia"]
    assert rad_vote(["effusion"], LABEL_SET, False) == ["effusion"]
    with pytest.raises(ValueError, match=r"neighbour_labels\[1\]: a single-label case carries one label"):
        rad_vote(["normal", ["normal", "effusion"]], LABEL_SET, False)
    with pytest.raises(ValueError, match=r"neighbour_labels\[0\]: label 'cat' is not in the label set"):
        rad_vote(["cat"], LABEL_SET, False)
    with pytest.raises(ValueError, match="at least one retrieved case"):
        rad_vote([], LABEL_SET, False)


def test_multilabel_vote_more_than_half_else_nearest_case():
    cases = [["effusion", "pneumonia"], ["pneumonia"], ["effusion", "pneumonia"], ["normal"], ["effusion"]]
    assert rad_vote(cases, LABEL_SET, True) == ["pneumonia", "effusion"]        # 3/5 each, label-set order
    # effusion in exactly half of four cases is not more than half: the nearest case's labels, label-set order
    assert rad_vote([["effusion", "pneumonia"], ["effusion"], ["normal"], ["normal"]], LABEL_SET, True) == \
        ["pneumonia", "effusion"]
    assert rad_vote([["normal"], ["normal"], ["effusion"]], LABEL_SET, True) == ["normal"]
    assert rad_vote([[], ["normal"]], LABEL_SET, True) == []
    with pytest.raises(TypeError, match=r"neighbour_labels\[0\]: expected a label name or a list of label names"):
        rad_vote([[1]], LABEL_SET, True)
