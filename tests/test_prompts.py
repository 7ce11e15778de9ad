"""The prompts equal SPEC §4 / the paper's Figs. 6, A3, A4 word for word, for every template and ablation arm.

    OMP_NUM_THREADS=1 pytest -q tests/test_prompts.py
"""
from __future__ import annotations

import re

import polars as pl
import pytest

from tasks import prompts
from tasks.generalist.corpus import template_expr

LABELS = ["malignant", "normal, benign"]
RAD = ["malignant", "malignant", "normal, benign"]
MOED = ["normal, benign", "malignant"]

# The expected strings are written out by hand from SPEC §4 (not built from the module's templates). The option list
# is joined by ", " (so "malignant, normal, benign" reads as the benchmark's two options); {RAD} and {MoED} by ",".
GSCO_SINGLE = {
    0: ("You are a helpful medical assistant. Your task is disease diagnosis. You are given a breast ultrasound image. "
        "The possible options are: malignant, normal, benign. "
        "The diagnoses of the most similar cases are malignant,malignant,normal, benign. "
        "The reference answers by other models are normal, benign,malignant. "
        "The response should only contain one option."),
    1: ("You are a helpful medical assistant. Your task is disease diagnosis. You are required to diagnose the breast "
        "ultrasound image. The reference diagnoses of the most similar cases are malignant,malignant,normal, benign. "
        "The reference answers by other models are normal, benign,malignant. "
        "The possible options are: malignant, normal, benign. The response should only contain one option."),
    2: ("You are a helpful medical assistant. You are required to classify the breast ultrasound Image. "
        "The reference diagnoses of the most similar cases are malignant,malignant,normal, benign. "
        "The reference answers by other models are normal, benign,malignant. "
        "The available options are: malignant, normal, benign. The response should only contain one option."),
    3: ("You are a helpful medical assistant. You are required to diagnose the breast ultrasound image. "
        "The reference diagnoses of the most similar cases are malignant,malignant,normal, benign. "
        "The reference answers by other models are normal, benign,malignant. "
        "The possible options are: malignant, normal, benign. The response should only contain one option."),
}


def test_dgb_synthesis_prompt_is_fig6():
    assert prompts.dgb_prompt("chest X-ray", "pneumonia") == (
        "You are a helpful medical assistant. Your task is medical report generation. You are given a chest X-ray "
        "image, and the diagnosis is pneumonia. You need to provide a medical report consisting of findings and "
        "impressions.")


def test_training_templates_are_fig_a3():
    assert prompts.vqa_prompt("Is there a fracture?") == (
        "You are a helpful medical assistant. You are required to answer the question based on the medical image. "
        "The question is Is there a fracture?.")
    assert prompts.mrg_prompt() == (
        "You are a helpful medical assistant. Your task is report generation. You are given a chest x-ray image, and "
        "you are required to generate a summary report about the image.")
    # CLS, DGB and DES instructions are rendered column-wise by the corpus (the same code that writes the shards)
    rows = pl.DataFrame({"modality": ["dermoscopy", "fundus", "CT"], "label_set": [["melanoma", "nevus"]] * 3})
    rendered = rows.select(
        cls=template_expr(prompts.CLS_TEMPLATE, modality=pl.col("modality"),
                          label_set=pl.col("label_set").list.join(prompts.OPTION_SEP)),
        dgb=template_expr(prompts.DGB_TEMPLATE, modality=pl.col("modality")),
        des=template_expr(prompts.DES_TEMPLATE, modality=pl.col("modality")))
    assert rendered["cls"][0] == (
        "You are a helpful medical assistant. Your task is disease diagnosis. You are given a dermoscopy image. "
        "The possible diagnoses are: melanoma, nevus.")
    assert rendered["dgb"][1] == (
        "You are a helpful medical assistant. Your task is report generation. You are given a fundus image. You need "
        "to provide a medical report consisting of findings and impressions. Findings list the observations and "
        "impressions outlines the final diagnosis.")
    assert rendered["des"][2] == (
        "You are a helpful medical assistant. Your task is report generation. You are given a CT image. You are "
        "required to generate a detailed description and analysis from a medical perspective based on the image.")


def test_templates_render_with_format_fields_used_by_table_code():
    # tasks/generalist/corpus.py renders these column-wise from their {field}s: the field names are a contract.
    def fields(t):
        return set(re.findall(r"\{(\w+)\}", t))
    assert fields(prompts.CLS_TEMPLATE) == {"modality", "label_set"}
    assert fields(prompts.VQA_TEMPLATE) == {"question"}
    assert fields(prompts.MRG_TEMPLATE) == set()
    assert fields(prompts.DGB_TEMPLATE) == {"modality"}
    assert fields(prompts.DES_TEMPLATE) == {"modality"}


@pytest.mark.parametrize("paraphrase", [0, 1, 2, 3])
def test_gsco_prompt_paraphrases_are_fig_a4(paraphrase):
    got = prompts.diagnosis_prompt("breast ultrasound", LABELS, multilabel=False, rad=RAD, moed=MOED,
                                   paraphrase=paraphrase)
    assert got == GSCO_SINGLE[paraphrase]


def test_ablation_arms_drop_the_missing_sentence():
    head = ("You are a helpful medical assistant. Your task is disease diagnosis. You are given a chest X-ray image. "
            "The possible options are: effusion, No finding.")
    rad = " The diagnoses of the most similar cases are effusion,effusion."
    moed = " The reference answers by other models are No finding."
    tail = (" The response should only contain one or more options. Only if no other options are available, "
            "you can choose 'No finding'.")
    kw = {"modality": "chest X-ray", "label_set": ["effusion", "No finding"], "multilabel": True}
    assert prompts.diagnosis_prompt(**kw, rad=None, moed=None) == head + tail                 # MedDr
    assert prompts.diagnosis_prompt(**kw, rad=None, moed=["No finding"]) == head + moed + tail  # MedDr + MoED
    assert prompts.diagnosis_prompt(**kw, rad=["effusion"] * 2, moed=None) == head + rad + tail  # MedDr + RAD
    assert prompts.diagnosis_prompt(**kw, rad=["effusion"] * 2, moed=["No finding"]) == head + rad + moed + tail


def test_ablation_arms_keep_paraphrase_order():
    got = prompts.diagnosis_prompt("CT", ["a", "b"], multilabel=False, rad=None, moed=["b"], paraphrase=2)
    assert got == ("You are a helpful medical assistant. You are required to classify the CT Image. "
                   "The reference answers by other models are b. The available options are: a, b. "
                   "The response should only contain one option.")


def test_diagnosis_prompt_rejects_bad_input():
    with pytest.raises(ValueError, match="paraphrase"):
        prompts.diagnosis_prompt("CT", ["a"], False, None, None, paraphrase=4)
    with pytest.raises(ValueError, match="rad"):
        prompts.diagnosis_prompt("CT", ["a"], False, rad=[], moed=None)
    with pytest.raises(ValueError, match="modality"):
        prompts.diagnosis_prompt(" ", ["a"], False, None, None)
    with pytest.raises(TypeError, match="label_set"):
        prompts.diagnosis_prompt("CT", "a,b", False, None, None)


def test_des_rewrite_prompt_carries_the_case_and_asks_to_drop_identifying_details():
    case = "Case 12: 54-year-old John Doe, 2011-03-02. Axial CT shows a hypodense liver lesion."
    got = prompts.des_rewrite_prompt(case)
    assert case in got
    assert got.startswith("You are a helpful medical assistant.")
    for must in ("description of what the image shows", "name", "age", "dates", "clinical history"):
        assert must in got


def test_option_list_and_reference_lists_have_their_own_separators():
    assert (prompts.OPTION_SEP, prompts.REFERENCE_SEP) == (", ", ",")
    got = prompts.diagnosis_prompt("breast ultrasound", LABELS, False, rad=["normal, benign"], moed=MOED)
    assert "The possible options are: malignant, normal, benign. " in got
    assert "The diagnoses of the most similar cases are normal, benign. " in got
    assert "The reference answers by other models are normal, benign,malignant. " in got


MC_OPTIONS = {"A": "Pneumonia", "B": "Normal, no acute findings", "C": "Pneumothorax", "D": "Pleural effusion"}


def test_multiple_choice_prompt_is_the_vqa_template_then_lettered_options():
    assert prompts.multiple_choice_prompt("What abnormality is shown in this chest X-ray?", MC_OPTIONS) == (
        "You are a helpful medical assistant. You are required to answer the question based on the medical image. "
        "The question is What abnormality is shown in this chest X-ray?.\n"
        "Options:\nA: Pneumonia\nB: Normal, no acute findings\nC: Pneumothorax\nD: Pleural effusion\n"
        "Answer with the letter of the correct option.")
    assert prompts.multiple_choice_prompt("Is this normal?", {"A": " yes ", "B": "no"}).endswith(
        "Options:\nA: yes\nB: no\nAnswer with the letter of the correct option.")


def test_multiple_choice_prompt_rejects_bad_options():
    with pytest.raises(ValueError, match=r"options: expected the letters \['A', 'B'\] in order, got \['A', 'C'\]"):
        prompts.multiple_choice_prompt("q?", {"A": "x", "C": "y"})
    with pytest.raises(ValueError, match=r"options: expected the letters \['A', 'B'\] in order, got \['B', 'A'\]"):
        prompts.multiple_choice_prompt("q?", {"B": "x", "A": "y"})
    with pytest.raises(ValueError, match="at least 2"):
        prompts.multiple_choice_prompt("q?", {"A": "x"})
    with pytest.raises(ValueError, match=r"options\['B'\]"):
        prompts.multiple_choice_prompt("q?", {"A": "x", "B": " "})
    with pytest.raises(TypeError, match="options"):
        prompts.multiple_choice_prompt("q?", ["x", "y"])
    with pytest.raises(ValueError, match="question"):
        prompts.multiple_choice_prompt(" ", MC_OPTIONS)
