"""The reference text of a report-generation sample: one section of the ground-truth report (SPEC §8; MultiMedEval
scores generated reports against the FINDINGS section only).

    from tasks.evaluation.references import reference_section
    reference_section("Findings: The heart is enlarged.\\nImpression: Cardiomegaly.", "findings")
    # -> "The heart is enlarged."   (None when the report has no findings section: drop the sample, count it)

A data card's `reference_section` says which section a report set is scored on. Reports carry their sections under
headers such as "Findings:", "FINDINGS:", "Impression :" (the IU-Xray loader writes "Findings: ...\\nImpression: ...";
MIMIC-CXR reports have "FINDINGS:" / "IMPRESSION:" on their own line or inline). A section runs from its header to
the next known header or the end of the text.
"""
from __future__ import annotations

import re
from typing import Literal

Section = Literal["findings", "impression", "full"]
SECTIONS = ("findings", "impression", "full")

# Headers of radiology report sections; a section ends where the next one starts. A combined header counts as both.
_COMBINED = "findings and impression"
_HEADERS = (_COMBINED, "findings", "impression", "impressions", "indication", "indications", "comparison",
            "comparisons", "history", "clinical history", "clinical information", "clinical indication", "technique",
            "examination", "exam", "reason for examination", "reason for exam", "recommendation", "recommendations",
            "conclusion", "conclusions", "notification", "procedure", "wet read", "final report")
_HEADER = re.compile(r"(?<![A-Za-z])(" + "|".join(re.escape(h).replace(r"\ ", r"\s+") for h in _HEADERS)
                     + r")[ \t]*:", re.IGNORECASE)
_SENTENCE_END = ".!?;:"


def _is_header(text: str, m: re.Match) -> bool:
    """A header starts the text, a line or a sentence; an all-capitals one ("... IMPRESSION: ...") may stand anywhere.

    This keeps phrases such as "no acute findings: see below" inside their section.
    """
    if m.group(1).isupper():
        return True
    before = text[:m.start()].rstrip(" \t")
    return not before or before[-1] == "\n" or before[-1] in _SENTENCE_END


def _name(header: str) -> str:
    name = " ".join(header.lower().split())
    return {"impressions": "impression"}.get(name, name)


def reference_section(text: str, section: Section) -> str | None:
    """The `section` of a report with its header dropped and whitespace collapsed; None when the report has no such
    section or it is empty. "full": the whole report (whitespace collapsed), None when empty.

    A section given twice counts by its first non-empty occurrence.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected a report string, got {type(text).__name__}")
    if section not in SECTIONS:
        raise ValueError(f"section: expected one of {list(SECTIONS)}, got {section!r}")
    if section == "full":
        return " ".join(text.split()) or None
    headers = [m for m in _HEADER.finditer(text) if _is_header(text, m)]
    for i, m in enumerate(headers):
        if _name(m.group(1)) not in (section, _COMBINED):
            continue
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        body = " ".join(text[m.end():end].split())
        if body:
            return body
    return None
