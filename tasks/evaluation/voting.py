"""The "Voting" baseline (SPEC §7): majority over the specialists' predicted labels for one sample.

    OMP_NUM_THREADS=1 pytest -q tests/test_voting.py

Single-label: the label most specialists predict (a plurality), ties broken by label-set order. Multilabel: each label
that more than half of the specialists predict; when none does, "No finding" (the label set's own spelling). Both
rules are deterministic, so a rerun of the baseline gives the same numbers.
"""
from __future__ import annotations

from collections.abc import Sequence

from tasks.evaluation.parsing import NO_FINDING, normalise


def _no_finding(label_set: Sequence[str]) -> str | None:
    return next((label for label in label_set if normalise(label) == NO_FINDING), None)


def vote(predictions: Sequence[Sequence[str]], multilabel: bool, label_set: Sequence[str]) -> list[str]:
    """The majority label(s) over specialists' predictions (one list of label names per specialist), label-set order."""
    label_set = list(label_set)
    if not predictions:
        raise ValueError("predictions: expected one list of labels per specialist, got none")
    index = {label: i for i, label in enumerate(label_set)}
    counts = [0] * len(label_set)
    for s, labels in enumerate(predictions):
        if isinstance(labels, str):
            raise TypeError(f"predictions[{s}]: expected a list of label names, got the string {labels!r}")
        if not multilabel and len(labels) > 1:
            raise ValueError(f"predictions[{s}]: a single-label specialist predicts one label, got {list(labels)}")
        for label in set(labels):
            if label not in index:
                raise ValueError(f"predictions[{s}]: label {label!r} is not in the label set {label_set}")
            counts[index[label]] += 1
    if not multilabel:
        best = max(counts)
        # every specialist abstained: nothing to vote for (counted as a wrong answer downstream)
        return [label_set[counts.index(best)]] if best > 0 else []
    no_finding = _no_finding(label_set)
    chosen = [label for label, c in zip(label_set, counts) if 2 * c > len(predictions) and label != no_finding]
    if chosen:
        return chosen
    return [no_finding] if no_finding is not None else []
