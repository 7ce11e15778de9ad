"""The arms beyond the ablation: OmniMedVQA multiple choice (options shown, letter or text mapped, modality kept) and
Table A9's RAD variants (MedDr's encoder as retriever; voting on the retrieved labels; top-1 retrieved report).

A scripted generalist stands in for the model: what is under test is what the arms ask and how they read answers."""
from __future__ import annotations

import numpy as np
import polars as pl

from data_contracts.cards import get_card
from tasks import prompts
from tasks.evaluation.arms import multiple_choice_predictions
from tasks.evaluation.settings import ENCODER_RAD_ARM, RAD_VOTING_ARM
from tasks.evaluation.variants import variant_arms, variant_predictions


class Scripted:
    """Answers from the prompt; embeds an image as a one-hot of its first byte (so equal bytes retrieve each other)."""
    id = "scripted@1"

    def __init__(self, answers):
        self.answers, self.prompts = answers, []

    def generate(self, images, texts, settings):
        self.prompts += texts
        return [self.answers(t) for t in texts]

    def embed_images(self, images):
        out = np.zeros((len(images), 8), dtype=np.float32)
        for i, b in enumerate(images):
            out[i, b[0] % 8] = 1.0
            out[i, (b[0] + 1) % 8] = 0.1 * (b[0] // 8)    # tie-break neighbours of one class by a second byte
        return out


def test_multiple_choice_shows_the_options_and_maps_letter_or_text():
    card = get_card("omnimedvqa")
    test = pl.DataFrame({"sample_id": ["q1", "q2", "q3", "q4"], "image": [b"\x01"] * 4,
                         "question": ["Which disease?"] * 4, "answer": ["glaucoma", "normal", "cataract", "normal"],
                         "label_set": [["normal", "glaucoma", "cataract"]] * 3 + [["normal", "myopia"]],
                         "answer_type": ["multiple-choice"] * 4,
                         "modality": ["Fundus Photography"] * 3 + ["OCT"]}, schema_overrides={"image": pl.Binary})
    replies = iter(["B", "The answer is cataract.", "I cannot tell.", "A: normal"])
    g = Scripted(lambda t: next(replies))
    preds = multiple_choice_predictions(test, card, g, None, batch_size=2)
    assert g.prompts[0] == prompts.multiple_choice_prompt("Which disease?", {"A": "normal", "B": "glaucoma",
                                                                              "C": "cataract"})
    assert "B: glaucoma" in g.prompts[0]
    assert preds["truth"].to_list() == [["B"], ["A"], ["C"], ["A"]]
    assert preds["prediction"].to_list() == [["B"], ["C"], [], ["A"]]
    assert preds["parse_failed"].to_list() == [False, False, True, False]
    assert preds["group"].to_list() == ["Fundus Photography"] * 3 + ["OCT"]


def _frames():
    # train: first byte picks the class colour; tests are byte-identical to a train image of their class
    train = pl.DataFrame({"sample_id": [f"tr{i}" for i in range(6)],
                          "image": [bytes([c, i]) for i, c in enumerate([1, 1, 1, 2, 2, 3])],
                          "labels": [["pneumonia"]] * 3 + [["normal"]] * 2 + [["normal"]],
                          "text": ["Left effusion."] * 3 + ["Clear lungs."] * 3},
                         schema_overrides={"image": pl.Binary})
    test = pl.DataFrame({"sample_id": ["te0", "te1"], "image": [bytes([1, 9]), bytes([2, 9])],
                         "labels": [["pneumonia"], ["normal"]], "text": ["Small effusion.", "Normal lungs."],
                         "answer_type": [None, None]}, schema_overrides={"image": pl.Binary})
    return train, test


def test_encoder_rad_and_voting_on_diagnosis(tmp_path):
    card = get_card("pneumoniamnist")
    train, test = _frames()
    g = Scripted(lambda t: t.split("most similar cases are ")[1].split(",")[0])   # follows the nearest case
    preds = variant_predictions(test, train, card, g, None, [ENCODER_RAD_ARM, RAD_VOTING_ARM], tmp_path, k=3)
    enc = preds.filter(pl.col("method") == ENCODER_RAD_ARM)
    assert enc["prediction"].to_list() == [["pneumonia"], ["normal"]]
    assert "The diagnoses of the most similar cases are pneumonia,pneumonia,pneumonia." in enc["prompt"][0]
    vote = preds.filter(pl.col("method") == RAD_VOTING_ARM)
    assert vote["prediction"].to_list() == [["pneumonia"], ["normal"]] and vote["answer_text"][0] is None


def test_encoder_rad_on_reports_and_top1_voting(tmp_path):
    card = get_card("iu_xray")
    train, test = _frames()
    g = Scripted(lambda t: "generated")
    preds = variant_predictions(test, train, card, g, None, [ENCODER_RAD_ARM, RAD_VOTING_ARM], tmp_path, k=2)
    enc = preds.filter(pl.col("method") == ENCODER_RAD_ARM)
    assert enc["prompt"][0] == prompts.mrg_rad_prompt(["Left effusion.", "Left effusion."])
    assert preds.filter(pl.col("method") == RAD_VOTING_ARM)["prediction"].to_list() == [["Left effusion."],
                                                                                       ["Clear lungs."]]
    assert enc["truth"].to_list() == [["Small effusion."], ["Normal lungs."]]


def test_which_variants_apply():
    arms = ["MedDr", ENCODER_RAD_ARM, RAD_VOTING_ARM]
    assert variant_arms(get_card("ham10000"), arms) == [ENCODER_RAD_ARM, RAD_VOTING_ARM]
    assert variant_arms(get_card("slake"), arms) == [ENCODER_RAD_ARM]        # no voting defined for VQA
    assert variant_arms(get_card("omnimedvqa"), arms) == []
    assert variant_arms(get_card("ham10000"), ["MedDr"]) == []
