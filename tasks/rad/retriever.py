"""Which specialist keys a dataset's RAD table: the best one on the validation split (Fig. 5/A1, SPEC §7).

    choice = choose_retriever(jobs_by_arch, "multiclass", "best-validation")   # {"arch", "metric", "scores", ...}

The paper retrieves with "the best specialist model". Choosing it on the test split would leak the test labels into
the method, so the choice reads each finished job's validation headline metric (binary: accuracy; otherwise macro-F1,
SPEC §8), ties broken by the lower validation loss, then by the profile's architecture order. A profile may instead
name one architecture for every dataset.
"""
from __future__ import annotations

from collections.abc import Mapping

BEST_VALIDATION = "best-validation"
VAL_HEADLINE = {"binary": "val_accuracy", "multiclass": "val_macro_f1", "multilabel": "val_macro_f1"}


def choose_retriever(jobs: Mapping[str, dict], task_type: str, setting: str) -> dict | None:
    """The retriever of one dataset from its finished jobs (arch -> job summary with "metrics"); None: no job.

    Returns {"arch", "metric", "scores" (arch -> validation headline), "rule"}."""
    if not jobs:
        return None
    if setting != BEST_VALIDATION:
        if setting not in jobs:
            raise ValueError(f"rad.retriever {setting!r}: no finished specialist job of that architecture "
                             f"(finished: {sorted(jobs)})")
        return {"arch": setting, "metric": None, "scores": {}, "rule": f"fixed by the profile ({setting})"}
    if task_type not in VAL_HEADLINE:
        raise ValueError(f"no validation headline metric for task type {task_type!r}")
    metric = VAL_HEADLINE[task_type]
    scores, ranked = {}, []
    for order, (arch, job) in enumerate(jobs.items()):
        m = job.get("metrics") or {}
        if m.get(metric) is None:
            raise ValueError(f"specialist job {job.get('dataset')}/{arch}: metrics lack {metric!r} "
                             "(the validation headline the retriever is chosen on)")
        scores[arch] = float(m[metric])
        ranked.append((-scores[arch], float(m.get("best_val_loss", float("inf"))), order, arch))
    best = min(ranked)[3]
    return {"arch": best, "metric": metric, "scores": scores,
            "rule": f"best validation {metric.removeprefix('val_')} of {len(scores)} specialists"}
