"""Majority voting over specialists on planted cases.

    OMP_NUM_THREADS=1 pytest -q tests/test_voting.py
"""
from __future__ import annotations

import pytest

from tasks.evaluation.voting import vote

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
CHEST = ["atelectasis", "effusion", "mass", "No finding"]


def test_single_label_plurality():
    assert vote([["mel"], ["nv"], ["mel"], ["bcc"], ["mel"]], False, CLASSES) == ["mel"]
    # a plurality is enough: 2 of 5
    assert vote([["mel"], ["nv"], ["mel"], ["bcc"], ["df"]], False, CLASSES) == ["mel"]


def test_single_label_tie_goes_to_label_set_order():
    assert vote([["nv"], ["mel"], ["nv"], ["mel"]], False, CLASSES) == ["mel"]
    assert vote([["vasc"], ["akiec"]], False, CLASSES) == ["akiec"]
    # order of specialists does not matter
    assert vote([["mel"], ["nv"], ["mel"], ["nv"]], False, CLASSES) == ["mel"]


def test_single_label_abstentions():
    assert vote([[], ["nv"], []], False, CLASSES) == ["nv"]
    assert vote([[], []], False, CLASSES) == []


def test_multilabel_per_label_strict_majority():
    preds = [["atelectasis", "effusion"], ["effusion"], ["effusion", "mass"], ["atelectasis", "mass"], ["mass"]]
    # atelectasis 2/5, effusion 3/5, mass 3/5
    assert vote(preds, True, CHEST) == ["effusion", "mass"]
    # exactly half is not a majority
    assert vote([["mass"], ["mass"], ["effusion"], ["No finding"]], True, CHEST) == ["No finding"]


def test_multilabel_no_finding_when_no_label_has_a_majority():
    assert vote([["atelectasis"], ["effusion"], ["mass"]], True, CHEST) == ["No finding"]
    assert vote([["No finding"], ["No finding"], ["mass"]], True, CHEST) == ["No finding"]
    assert vote([["x"], ["x"]], True, ["x", "y", "No Finding"]) == ["x"]
    assert vote([["x"], ["y"]], True, ["x", "y", "No Finding"]) == ["No Finding"]
    # a label set without "No finding" gets an empty prediction
    assert vote([["x"], ["y"]], True, ["x", "y"]) == []


def test_duplicate_labels_from_one_specialist_count_once():
    assert vote([["mass", "mass"], ["effusion"], ["atelectasis"]], True, CHEST) == ["No finding"]


def test_bad_input():
    with pytest.raises(ValueError, match="not in the label set"):
        vote([["mel"], ["melanoma"]], False, CLASSES)
    with pytest.raises(ValueError, match=r"predictions\[0\]"):
        vote([["mel", "nv"]], False, CLASSES)
    with pytest.raises(ValueError, match="none"):
        vote([], True, CHEST)
    with pytest.raises(TypeError, match="string"):
        vote(["mel"], False, CLASSES)
