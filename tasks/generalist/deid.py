"""DES post-filter: remove what cannot be inferred from an image (names, ages, dates, identifiers) and count removals.

    clean, removed = deidentify("Mr. John Carter, a 54-year-old man, seen on 03/14/2019 ...")

Rule-based on purpose: the spans DES must drop (SPEC §4) follow a handful of surface patterns, the filter must run
offline on millions of rows, and every removal has to be countable and explainable. A model-based PHI tagger can be
added behind the same function where its weights are available.
"""
from __future__ import annotations

import re
from collections import Counter

_MONTHS = ("January|February|March|April|May|June|July|August|September|October|November|December|"
           "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec")
_NAME = r"[A-Z][a-z]+(?:[ -][A-Z][a-z]+){0,2}"
_ON = r"(?:\b(?:on|in|since|dated)\s+)?"

PATTERNS: list[tuple[str, re.Pattern]] = [
    ("identifier", re.compile(r"\b(?:MRN|medical record(?: number)?|record (?:no\.?|number)|patient ID|ID|"
                              r"case (?:no\.?|number)|accession(?: number)?)\s*[:#]?\s*[A-Z0-9-]{3,}\b", re.I)),
    ("date", re.compile(rf"{_ON}\b(?:{_MONTHS})\.? \d{{1,2}}(?:st|nd|rd|th)?,? \d{{4}}\b", re.I)),
    ("date", re.compile(rf"{_ON}\b\d{{1,2}}(?:st|nd|rd|th)? (?:of )?(?:{_MONTHS})\.?,? \d{{4}}\b", re.I)),
    ("date", re.compile(rf"{_ON}\b\d{{1,2}}[/.-]\d{{1,2}}[/.-]\d{{2,4}}\b", re.I)),
    ("date", re.compile(rf"{_ON}\b\d{{4}}-\d{{2}}-\d{{2}}\b", re.I)),
    ("date", re.compile(rf"\b(?:in|on|since) (?:{_MONTHS}) \d{{4}}\b")),
    ("age", re.compile(r"\b\d{1,3}[- ](?:year|yr|month|week|day)s?[- ]old\b", re.I)),
    ("age", re.compile(r"\b(?:aged?|age of)\s*:?\s*\d{1,3}(?:\s*(?:years?|yrs?|y/?o))?\b", re.I)),
    ("age", re.compile(r"\b\d{1,3}\s*(?:y/?o|yo|years? of age)\b", re.I)),
    ("name", re.compile(rf"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?\s+{_NAME}")),
    ("name", re.compile(rf"\b(?:patient|named|name is|name:)\s+{_NAME}(?=[\s,.;:)]|$)")),
]


def deidentify(text: str) -> tuple[str, Counter]:
    """The text with identifying spans removed (whitespace and punctuation tidied), and removal counts per kind."""
    removed: Counter = Counter()
    out = text
    for kind, pat in PATTERNS:
        def _drop(m: re.Match, kind=kind) -> str:
            removed[kind] += 1
            # keep the leading cue word for "patient X" so the sentence still reads
            head = m.group(0).split()[0]
            return f"{head} " if kind == "name" and head.lower() in ("patient",) else " "
        out = pat.sub(_drop, out)
    out = re.sub(r"\s+([,.;:])", r"\1", out)
    out = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", out)
    out = re.sub(r"\(\s*\)", "", out)
    out = re.sub(r"\.{2,}", ".", out)
    out = re.sub(r"[ \t]{2,}", " ", out).strip()
    out = re.sub(r"^[,;:.\s]+", "", out)
    return out, removed
