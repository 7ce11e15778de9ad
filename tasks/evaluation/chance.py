"""The chance level of a diagnosis test set: what a model that ignores the image scores on the headline metric.

    level = chance_level(truth, label_set, "multiclass")      # max(best constant answer, uniform random guessing)

A model "above chance" must beat both ways of answering without looking: always giving the best single answer (the
majority class for accuracy; for multi-label sets, the best single label; naming every label is a parse failure, not
an answer), and guessing uniformly at random (each label with probability 1/2 on multi-label sets; the mean over
seeded draws). Both are scored with the report's own metric functions (tasks/evaluation/bootstrap.py), so the
comparison uses one convention.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tasks.evaluation.bootstrap import diagnosis_metrics
from tasks.evaluation.metrics import HEADLINE, label_indicator

DRAWS = 200


def chance_level(truth: Sequence[Sequence[str]], label_set: Sequence[str], task_type: str, draws: int = DRAWS,
                 seed: int = 0) -> float:
    """The higher of the best constant answer's and uniform random guessing's headline score on `truth`."""
    multilabel = task_type == "multilabel"
    metric = diagnosis_metrics(multilabel)[HEADLINE[task_type]]
    t = label_indicator(truth, label_set, multilabel, "truth")
    n, c = t.shape
    # every label at once is not a constant answer here: naming the whole label set is a parse failure (SPEC §7)
    constants = [np.eye(c, dtype=bool)[j] for j in range(c)]
    best_constant = max(metric(t, np.tile(row, (n, 1))) for row in constants)
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(draws):
        if multilabel:
            p = rng.random((n, c)) < 0.5
        else:
            p = np.eye(c, dtype=bool)[rng.integers(0, c, size=n)]
        scores.append(metric(t, p))
    return float(max(best_constant, float(np.mean(scores))))
