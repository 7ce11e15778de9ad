"""Free-text answers map onto the label set: case, punctuation, extra words, several labels, none, overlapping names,
refusals and echoed option lists, negation, plurals and card synonyms; multiple-choice answers map onto one option.

    OMP_NUM_THREADS=1 pytest -q tests/test_parsing.py
"""
from __future__ import annotations

import pytest

from tasks.evaluation.parsing import ParsedAnswer, ParsedChoice, normalise, parse_answer, parse_choice

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



# ------------------------------------------------------------------------------------ rule 1: echoes and refusals
HAM = ["Actinic keratoses and intraepithelial carcinoma", "Basal cell carcinoma", "Benign keratosis-like lesions",
       "Dermatofibroma", "Melanoma", "Melanocytic nevi", "Vascular lesions"]
CXR = ["atelectasis", "effusion", "pneumothorax", "mass", "No finding"]


@pytest.mark.parametrize("multilabel", [False, True])
def test_echoing_the_whole_label_set_is_a_failure(multilabel):
    echo = "The possible options are: " + ", ".join(HAM) + "."
    assert parse_answer(echo, HAM, multilabel) == ParsedAnswer([], True)
    assert parse_answer("malignant or normal, benign", BREAST, multilabel) == ParsedAnswer([], True)
    # every disease of a multilabel set with "No finding" listed or not: still the option list
    assert parse_answer("atelectasis, effusion, pneumothorax, mass, No finding", CXR, multilabel).failed
    assert parse_answer("atelectasis, effusion, pneumothorax, mass", CXR, True).failed


def test_naming_some_but_not_all_labels_is_not_an_echo():
    assert parse_answer("atelectasis, effusion, pneumothorax", CXR, True) == \
        ParsedAnswer(["atelectasis", "effusion", "pneumothorax"], False)


@pytest.mark.parametrize("text", [
    "I cannot determine the diagnosis from this image.",
    "I am unable to diagnose this lesion; it could be melanoma or a nevus.",
    "Not sure. Possibly melanoma.",
    "The diagnosis cannot be determined from the image alone.",
    "I'm sorry, but I can't tell whether this is melanoma.",
])
def test_refusals_are_failures(text):
    assert parse_answer(text, HAM, False) == ParsedAnswer([], True)
    assert parse_answer(text, HAM, True) == ParsedAnswer([], True)


# ------------------------------------------------------------------------------------------- rule 2: negation
def test_negated_mention_is_not_the_single_label_prediction():
    assert parse_answer("This is not melanoma; it is a dermatofibroma.", HAM, False) == \
        ParsedAnswer(["Dermatofibroma"], False)
    assert parse_answer("Not melanoma, it is a dermatofibroma", HAM, False).labels == ["Dermatofibroma"]
    assert parse_answer("Negative for melanoma. Dermatofibroma.", HAM, False).labels == ["Dermatofibroma"]
    assert parse_answer("Melanoma is unlikely; basal cell carcinoma.", HAM, False).labels == ["Basal cell carcinoma"]
    assert parse_answer("Dermatofibroma rather than melanoma", HAM, False).labels == ["Dermatofibroma"]
    assert parse_answer("No melanoma, but a dermatofibroma", HAM, False).labels == ["Dermatofibroma"]


def test_negated_mentions_are_dropped_from_multilabel_answers():
    assert parse_answer("No pneumothorax. Small effusion.", CXR, True) == ParsedAnswer(["effusion"], False)
    assert parse_answer("Effusion without pneumothorax or atelectasis.", CXR, True).labels == ["effusion"]
    assert parse_answer("Free of pneumothorax; a mass and an effusion.", CXR, True).labels == ["effusion", "mass"]
    assert parse_answer("Pneumothorax ruled out. Atelectasis.", CXR, True).labels == ["atelectasis"]
    assert parse_answer("Absence of effusion, however there is a mass", CXR, True).labels == ["mass"]
    assert parse_answer("There is no pneumothorax and there is a small effusion.", CXR, True).labels == ["effusion"]


def test_only_negated_mentions_is_a_failure():
    assert parse_answer("No effusion, no pneumothorax.", CXR, True) == ParsedAnswer([], True)
    assert parse_answer("This is not melanoma.", HAM, False) == ParsedAnswer([], True)


def test_binary_answer_that_only_negates_one_label_names_the_other():
    # a binary label set is exhaustive: "no pneumonia" can only mean "normal"
    assert parse_answer("The chest X-ray shows no evidence of pneumonia.", ["normal", "pneumonia"], False) == \
        ParsedAnswer(["normal"], False)
    assert parse_answer("The X-ray is not normal.", ["normal", "pneumonia"], False).labels == ["pneumonia"]
    assert parse_answer("Neither normal nor pneumonia.", ["normal", "pneumonia"], False).failed
    # a negation leaves several candidates in a multiclass or multilabel set
    assert parse_answer("No effusion.", ["effusion", "No finding"], True).failed


def test_no_finding_is_a_label_not_a_negation_cue():
    assert parse_answer("No finding", CXR, True) == ParsedAnswer(["No finding"], False)
    assert parse_answer("No findings. Effusion not seen.", CXR, True) == ParsedAnswer(["No finding"], False)
    # "No finding" next to a disease still loses to the disease, and its "no" negates nothing
    assert parse_answer("No finding except a small effusion", CXR, True).labels == ["effusion"]
    assert parse_answer("Effusion. No finding otherwise.", CXR, True).labels == ["effusion"]


def test_cannot_rule_out_is_not_a_negation():
    assert parse_answer("Melanoma cannot be ruled out.", HAM, False).labels == ["Melanoma"]
    assert parse_answer("We cannot rule out melanoma", HAM, False).labels == ["Melanoma"]


# ------------------------------------------------------------------------------- rule 3: plurals and synonyms
@pytest.mark.parametrize("text, expected", [
    ("vascular lesion", "Vascular lesions"),
    ("a benign keratosis-like lesion", "Benign keratosis-like lesions"),
    ("actinic keratosis and intraepithelial carcinoma", "Actinic keratoses and intraepithelial carcinoma"),
    ("melanocytic nevus", "Melanocytic nevi"),
    ("dermatofibromas", "Dermatofibroma"),
])
def test_singular_and_plural_forms_map_to_the_label(text, expected):
    assert parse_answer(text, HAM, False) == ParsedAnswer([expected], False)


def test_plural_forms_in_multilabel_answers():
    assert parse_answer("effusions and masses", CXR, True).labels == ["effusion", "mass"]
    assert parse_answer("lung opacities", ["Lung Opacity", "No finding"], True).labels == ["Lung Opacity"]
    assert parse_answer("keratoses", ["seborrheic keratosis", "keratosis"], False).labels == ["keratosis"]


def test_short_acronyms_get_no_singular_form():
    # stripping the "s" of "MS" would make "m" a label name
    assert parse_answer("5 m away", ["MS", "CRS"], True).failed
    assert parse_answer("CRS", ["MS", "CRS"], True).labels == ["CRS"]


HAM_SYNONYMS = {"Melanocytic nevi": ["nevus", "naevus", "mole"],
                "Benign keratosis-like lesions": ["seborrheic keratosis", "benign keratosis"],
                "Actinic keratoses and intraepithelial carcinoma": ["actinic keratosis", "bowen's disease"]}


@pytest.mark.parametrize("text, expected", [
    ("nevus", "Melanocytic nevi"),
    ("Benign naevi.", "Melanocytic nevi"),
    ("A mole", "Melanocytic nevi"),
    ("Seborrheic keratoses", "Benign keratosis-like lesions"),
    ("actinic keratosis", "Actinic keratoses and intraepithelial carcinoma"),
    ("Bowen's disease", "Actinic keratoses and intraepithelial carcinoma"),
    ("Not a nevus: melanoma.", "Melanoma"),
])
def test_synonyms_map_to_their_label(text, expected):
    assert parse_answer(text, HAM, False, synonyms=HAM_SYNONYMS) == ParsedAnswer([expected], False)


def test_synonyms_are_off_by_default():
    assert parse_answer("nevus", HAM, False) == ParsedAnswer([], True)


def test_synonym_that_names_another_label_is_rejected():
    with pytest.raises(ValueError, match=r"synonyms\['normal, benign'\]\[1\] 'Malignant'.*label 'malignant'"):
        parse_answer("x", BREAST, False, synonyms={"normal, benign": ["benign", "Malignant"]})
    with pytest.raises(ValueError, match=r"synonyms\['normal'\]: not in the label set"):
        parse_answer("x", BREAST, False, synonyms={"normal": ["healthy"]})
    with pytest.raises(ValueError, match="both"):
        parse_answer("x", ["a", "b"], False, synonyms={"a": ["c"], "b": ["c"]})


def test_every_card_synonym_maps_to_its_label():
    from data_contracts.cards import registry
    cards = [c for c in registry().values() if c.task_kind == "diagnosis"]
    for card in cards:
        multilabel = card.task_type == "multilabel"
        for label, names in card.synonyms.items():
            for name in names:
                got = parse_answer(name, card.labels, multilabel, synonyms=card.synonyms)
                assert got == ParsedAnswer([label], False), (card.name, name, got)
    with_synonyms = {c.name for c in cards if c.synonyms}
    assert {"breastmnist", "ham10000", "pneumoniamnist", "chestmnist", "dermnet"} <= with_synonyms


def test_card_synonyms_fix_awkward_label_names():
    from data_contracts.cards import registry
    cards = registry()

    def parse(name, text):
        card = cards[name]
        return parse_answer(text, card.labels, card.task_type == "multilabel", synonyms=card.synonyms).labels
    assert parse("breastmnist", "Benign.") == ["normal, benign"]
    assert parse("chestmnist", "Pleural thickening and cardiomegaly") == ["cardiomegaly", "pleural"]
    assert parse("chestmnist", "Pleural effusion") == ["effusion"]
    assert parse("dermnet", "Psoriasis") == ["Psoriasis pictures Lichen Planus and related diseases"]
    assert parse("ham10000", "Seborrheic keratosis") == ["Benign keratosis-like lesions"]


# ----------------------------------------------------------------------------- rule 5: multiple choice (OmniMedVQA)
OPTIONS = {"A": "Pneumonia", "B": "Mass", "C": "Pneumothorax", "D": "Viral pneumonia"}


@pytest.mark.parametrize("text, expected", [
    ("B", "B"), ("b", "B"), ("(C)", "C"), ("C.", "C"), ("B:", "B"), ("A) Pneumonia", "A"), ("Option B", "B"),
    ("The answer is D: Viral pneumonia.", "D"), ("Answer: (C)", "C"), ("The answer is b.", "B"),
    ("Pneumothorax is seen", "C"), ("viral pneumonia", "D"), ("a mass in the left lung", "B"),
    ("It is not pneumonia; there is a pneumothorax.", "C"), ("I think it's B.", "B"),
])
def test_parse_choice_reads_a_letter_or_an_option_text(text, expected):
    assert parse_choice(text, OPTIONS) == ParsedChoice(expected, False)


@pytest.mark.parametrize("text", [
    "", "I am not sure", "E", "Pneumonia or pneumothorax", "A or C", "B: Pneumothorax",
    "A: Pneumonia, B: Mass, C: Pneumothorax, D: Viral pneumonia", "I cannot determine the answer.",
])
def test_parse_choice_failures(text):
    assert parse_choice(text, OPTIONS) == ParsedChoice(None, True)


def test_parse_choice_rejects_bad_options():
    with pytest.raises(ValueError, match="options"):
        parse_choice("A", {})
    with pytest.raises(ValueError, match=r"options\['AB'\]"):
        parse_choice("A", {"AB": "x", "C": "y"})
    with pytest.raises(TypeError, match="answer"):
        parse_choice(None, OPTIONS)
