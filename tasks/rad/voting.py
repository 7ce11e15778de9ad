"""Retrieval-label voting (paper Table A9's "voting" column): the diagnosis the k retrieved cases' labels agree on,
with no generalist involved.

    OMP_NUM_THREADS=1 pytest -q tests/test_rad_encoder.py
    pred = rad_vote([n.labels for n in neighbours[sid]], card.label_set, multilabel)   # nearest case first

Single-label: the label most cases carry; a tie goes to the tied label of the nearest case (the retriever's own
ranking breaks it, not label-set order as in the specialists' vote, tasks/evaluation/voting.py). Multilabel: every
label carried by more than half of the cases; when none is, the nearest case's labels. Output in label-set order.
For report generation the paper takes the top-1 retrieved report instead (no vote needed).
"""
from __future__ import annotations

from collections.abc import Sequence


def _cases(neighbour_labels: Sequence[str | Sequence[str]]) -> list[list[str]]:
    cases = []
    for i, labels in enumerate(neighbour_labels):
        if isinstance(labels, str):
            labels = [labels]
        if not isinstance(labels, Sequence) or not all(isinstance(s, str) for s in labels):
            raise TypeError(f"neighbour_labels[{i}]: expected a label name or a list of label names, got {labels!r}")
        cases.append(list(dict.fromkeys(labels)))
    return cases


def rad_vote(neighbour_labels: Sequence[str | Sequence[str]], label_set: Sequence[str],
             multilabel: bool) -> list[str]:
    """The voted label(s) over one sample's retrieved cases, given nearest first (each a label name or a list)."""
    label_set = list(label_set)
    cases = _cases(neighbour_labels)
    if not cases:
        raise ValueError("neighbour_labels: expected the labels of at least one retrieved case, got none")
    order = {label: i for i, label in enumerate(label_set)}
    counts = dict.fromkeys(label_set, 0)
    for i, labels in enumerate(cases):
        if not multilabel and len(labels) != 1:
            raise ValueError(f"neighbour_labels[{i}]: a single-label case carries one label, got {labels}")
        for label in labels:
            if label not in order:
                raise ValueError(f"neighbour_labels[{i}]: label {label!r} is not in the label set {label_set}")
            counts[label] += 1
    if not multilabel:
        best = max(counts.values())
        tied = {label for label, c in counts.items() if c == best}
        return [next(labels[0] for labels in cases if labels[0] in tied)]
    chosen = [label for label in label_set if 2 * counts[label] > len(cases)]
    return chosen or sorted(cases[0], key=order.__getitem__)
