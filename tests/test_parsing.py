"""Free-text answers map onto the label set: case, punctuation, extra words, several labels, none, overlapping names.

    OMP_NUM_THREADS=1 pytest -q tests/test_parsing.py
"""
from __future__ import annotations

import pytest

from tasks.evaluation.parsing import ParsedAnswer, normalise, parse_answer

BREAST = ["malignant", "normal, benign"]            # breastmnist INFO
CHEST = ["atelectasis", "effusion", "pleural", "pleural thickening", "mass", "No finding"]
MAMMO = ["Mass", "Suspicious Calcification", "Breast heterogeneously density", "density", "No Finding"]


def test_normalise():
    assert normalise("  Normal,  BENIGN!! ") == "normal benign"
    assert normalise("Birads-4 (suspicious)") == "birads 4 suspicious"


@pytest.mark.parametrize("text, expected", [
    ("malignant", ["malignant"]),
    ("MALIGNANT.", ["malignant"]),
    ("The lesion is most likely malignant, given its margins.", ["malignant"]),
    ("normal, benign", ["normal, benign"]),
    ("Normal benign", ["normal, benign"]),            # punctuation inside a label is not required
    ("Answer: normal,benign.", ["normal, benign"]),
])
def test_single_label_case_punctuation_extra_words(text, expected):
    assert parse_answer(text, BREAST, multilabel=False) == ParsedAnswer(expected, False)


def test_longest_label_wins_over_the_label_it_contains():
    # "benign" alone is not a label, but "normal, benign" must not also be read as something shorter.
    labels = ["benign", "normal, benign", "malignant"]
    assert parse_answer("normal, benign", labels, False).labels == ["normal, benign"]
    assert parse_answer("benign", labels, False).labels == ["benign"]
    # in multilabel mode the contained label is not reported a second time
    assert parse_answer("pleural thickening", CHEST, True).labels == ["pleural thickening"]
    assert parse_answer("pleural thickening and pleural effusion", CHEST, True).labels == \
        ["effusion", "pleural", "pleural thickening"]
    assert parse_answer("breast heterogeneously density", MAMMO, True).labels == ["Breast heterogeneously density"]


def test_single_label_takes_the_first_mentioned_label():
    assert parse_answer("pneumonia rather than normal", ["normal", "pneumonia"], False).labels == ["pneumonia"]
    assert parse_answer("normal; pneumonia is unlikely", ["normal", "pneumonia"], False).labels == ["normal"]


def test_multilabel_returns_all_mentioned_labels_in_label_set_order():
    assert parse_answer("Mass, atelectasis and EFFUSION.", CHEST, True) == \
        ParsedAnswer(["atelectasis", "effusion", "mass"], False)
    assert parse_answer("masses", CHEST, True).labels == ["mass"]            # plural
    assert parse_answer("effusions", CHEST, True).labels == ["effusion"]


def test_no_finding_only_when_nothing_else_matched():
    assert parse_answer("No finding.", CHEST, True) == ParsedAnswer(["No finding"], False)
    assert parse_answer("no findings", CHEST, True).labels == ["No finding"]
    assert parse_answer("No finding of effusion", CHEST, True).labels == ["effusion"]
    assert parse_answer("no finding", MAMMO, True).labels == ["No Finding"]   # the label set's own spelling


@pytest.mark.parametrize("text", ["", "   ", "I cannot tell.", "pneumothorax", "masseter muscle"])
def test_no_label_is_a_failure(text):
    assert parse_answer(text, CHEST, True) == ParsedAnswer([], True)
    assert parse_answer(text, CHEST, False) == ParsedAnswer([], True)


def test_word_boundaries():
    # "mass" must not match inside "massive" or "amass"; "normal" not inside "abnormal"
    assert parse_answer("massive effusion", CHEST, True).labels == ["effusion"]
    assert parse_answer("abnormal", ["normal", "pneumonia"], False).failed


def test_bad_label_sets_are_rejected():
    with pytest.raises(ValueError, match="cannot tell them apart"):
        parse_answer("x", ["No finding", "No Finding"], True)
    with pytest.raises(ValueError, match=r"label_set\[1\]"):
        parse_answer("x", ["a", "!!"], False)
    with pytest.raises(ValueError, match="at least one"):
        parse_answer("x", [], False)
    with pytest.raises(TypeError, match="answer"):
        parse_answer(None, ["a"], False)

