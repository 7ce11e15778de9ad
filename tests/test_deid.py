"""The DES post-filter removes planted names, ages, dates and identifiers, and keeps the medical content."""
from __future__ import annotations

import json
import re

import pytest

from tasks.generalist.deid import deidentify


def test_planted_items_in_tiny_case_studies_are_removed(tiny_root):
    cases = [json.loads(x) for x in (tiny_root / "openi_cases" / "cases.jsonl").read_text().splitlines()]
    planted_total = 0
    for c in cases:
        text = f"{c['title']}. {c['caption']}"
        clean, removed = deidentify(text)
        for item in c["planted"]:
            assert item not in clean, (item, clean)
        planted_total += len(c["planted"])
        assert sum(removed.values()) >= len(c["planted"])
        # the medical content survives: most words that are not part of a planted item are kept
        planted_words = {w for item in c["planted"] for w in re.findall(r"[a-z0-9]+", item.lower())}
        words = [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in planted_words]
        kept = [w for w in words if w in re.findall(r"[a-z0-9]+", clean.lower())]
        assert len(kept) >= 0.8 * len(words), (text, clean)
        if not c["planted"]:
            assert sum(removed.values()) == 0 and clean.strip() == " ".join(text.split()).strip()
    assert planted_total > 20


@pytest.mark.parametrize("text,gone,kept,kinds", [
    ("Mr. John Carter, a 54-year-old man, was seen on 03/14/2019 with a 3 cm mass in the right upper lobe.",
     ["John Carter", "54-year-old", "03/14/2019"], ["3 cm mass", "right upper lobe"], {"name", "age", "date"}),
    ("On March 14, 2019, patient Mary Ann Smith (age 61) presented. Chest X-ray demonstrates cardiomegaly.",
     ["March 14, 2019", "Mary Ann Smith", "61"], ["cardiomegaly"], {"name", "age", "date"}),
    ("CT of a 7 yo boy (MRN: 4829173) on 2020-01-05 shows a 2 cm cyst.",
     ["7 yo", "4829173", "2020-01-05"], ["2 cm cyst"], {"age", "identifier", "date"}),
])
def test_patterns(text, gone, kept, kinds):
    clean, removed = deidentify(text)
    for g in gone:
        assert g not in clean
    for k in kept:
        assert k in clean
    assert set(removed) == kinds


def test_clean_text_untouched():
    text = "Axial CT shows a 2.5 cm hypodense lesion in segment 7 of the liver; no ascites."
    clean, removed = deidentify(text)
    assert clean == text and not removed
