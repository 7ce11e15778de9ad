"""Map a model's free-text answer onto a diagnosis label set.

    OMP_NUM_THREADS=1 pytest -q tests/test_parsing.py

Matching is on normalised text (case-folded, every run of non-alphanumerics one space) at word boundaries, with an
optional plural "s"/"es" on a label's last word. Longer labels claim their span first, so "normal, benign" is not
also read as "benign", and a label that contains another ("Breast heterogeneously density" / "density") is read once.
An answer that matches nothing is a parse failure: SPEC §8 counts it wrong and reports the failure rate.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

NO_FINDING = "no finding"   # normalised spelling; label sets write "No finding" or "No Finding"

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


@dataclass(frozen=True)
class ParsedAnswer:
    """Labels read from an answer, in label-set order; `failed` when none could be read."""
    labels: list[str] = field(default_factory=list)
    failed: bool = False


def normalise(text: str) -> str:
    """`text` case-folded with every run of characters other than a-z / 0-9 turned into one space, stripped."""
    return _NON_ALNUM.sub(" ", text.casefold()).strip()


@lru_cache(maxsize=256)
def _patterns(label_set: tuple[str, ...]) -> list[tuple[int, re.Pattern]]:
    """(label index, pattern) for each label, longest normalised label first (ties: label-set order)."""
    seen: dict[str, str] = {}
    out = []
    for i, label in enumerate(label_set):
        if not isinstance(label, str):
            raise TypeError(f"label_set[{i}]: expected a label name, got {label!r}")
        norm = normalise(label)
        if not norm:
            raise ValueError(f"label_set[{i}] {label!r}: has no letters or digits, so no answer can match it")
        if norm in seen:
            raise ValueError(f"label_set[{i}] {label!r}: same as {seen[norm]!r} once case and punctuation are "
                             "ignored, so answers cannot tell them apart")
        seen[norm] = label
        out.append((len(norm), i, re.compile(r"(?<![0-9a-z])" + re.escape(norm) + r"(?:e?s)?(?![0-9a-z])")))
    out.sort(key=lambda t: (-t[0], t[1]))
    return [(i, pattern) for _, i, pattern in out]


def find_labels(text: str, label_set: Sequence[str]) -> list[tuple[int, int]]:
    """(position, label index) of each label mentioned in `text`, in order of mention; overlaps go to the longer."""
    if not isinstance(text, str):
        raise TypeError(f"answer: expected a string, got {type(text).__name__}")
    norm = normalise(text)
    claimed = [False] * len(norm)
    mentions = []
    for i, pattern in _patterns(tuple(label_set)):
        for m in pattern.finditer(norm):
            if any(claimed[m.start():m.end()]):
                continue
            claimed[m.start():m.end()] = [True] * (m.end() - m.start())
            mentions.append((m.start(), i))
    mentions.sort()
    return mentions


def parse_answer(text: str, label_set: Sequence[str], multilabel: bool) -> ParsedAnswer:
    """The labels `text` names: single-label -> the first mentioned; multilabel -> all (No finding only alone)."""
    label_set = list(label_set)
    if not label_set:
        raise ValueError("label_set: expected at least one label")
    mentions = find_labels(text, label_set)
    if not mentions:
        return ParsedAnswer([], True)
    if not multilabel:
        return ParsedAnswer([label_set[mentions[0][1]]], False)
    found = sorted({i for _, i in mentions})
    # "No finding" next to a disease is the model hedging or negating ("no finding of effusion"): the disease wins.
    diseases = [i for i in found if normalise(label_set[i]) != NO_FINDING]
    return ParsedAnswer([label_set[i] for i in (diseases or found)], False)

