"""What one specialist job produces and how it is read back: the result record, the checkpoint with its model card,
test predictions, and the classification metrics every specialist number uses.

Every file is written atomically (data_contracts/files.py), so a reader that waits for `done.json` never sees a
half-written output. File names are in data_contracts/layout.py (`JobFiles`).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import nn

from data_contracts.files import atomic_write, write_bytes_atomic
from data_contracts.layout import JobFiles
from tasks.specialists.data import SpecialistData


@dataclass
class JobResult:
    """What one (dataset, architecture) job produced; `params`, `metrics`, `history`, `artifacts` are for MLflow."""
    status: str                 # "trained" | "resumed" | "skipped" (done.json matched)
    dataset: str
    arch: str
    out_dir: str
    fingerprint: str
    init: str                   # "pretrained" | "scratch"
    weights_note: str
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    params: dict[str, str]      # mlflow.log_params
    metrics: dict[str, float]   # mlflow.log_metrics (final, flat; undefined metrics are absent, never 0)
    history: list[dict]         # one dict per epoch: mlflow.log_metrics(..., step=epoch)
    artifacts: dict[str, str]   # name -> path under out_dir: mlflow.log_artifact
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "JobResult":
        """The JobResult recorded in a done.json."""
        return cls(**{f.name: d[f.name] for f in fields(cls)})


def load_result(files: JobFiles) -> JobResult | None:
    """The recorded result of a finished job, or None when its folder holds no done.json. Its paths are those of the
    folder it is read from: an outputs folder moved or copied elsewhere keeps its finished jobs."""
    if not files.done.is_file():
        return None
    result = JobResult.from_json(json.loads(files.done.read_text()))
    result.out_dir = str(files.dir)
    result.artifacts = {k: str(files.dir / Path(v).name) for k, v in result.artifacts.items()}
    return result


def write_json(path: Path, obj) -> None:
    """`obj` as indented, sorted-key JSON, atomically."""
    write_bytes_atomic(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def write_npy(path: Path, arr: np.ndarray) -> None:
    """`arr` as a .npy file (no pickle), atomically."""
    atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))


def constant_baseline(task_type: str, targets: np.ndarray, num_classes: int) -> float:
    """The best score a constant predictor gets on `targets`: accuracy max(majority share, 1/classes) for single-label
    tasks, macro-F1 for multi-label (per label, predicting 'positive' everywhere scores 2p/(1+p) at prevalence p)."""
    t = np.asarray(targets)
    if task_type == "multilabel":
        p = t.reshape(len(t), -1).astype(np.float64).mean(0)
        return float(np.mean(2 * p / (1 + p)))
    return float(max(np.bincount(t.astype(np.int64), minlength=num_classes).max() / len(t), 1.0 / num_classes))


def probabilities(task_type: str, logits: np.ndarray) -> np.ndarray:
    """Sigmoid outputs for multi-label, softmax otherwise."""
    t = torch.from_numpy(logits)
    return (torch.sigmoid(t) if task_type == "multilabel" else torch.softmax(t, dim=1)).numpy()


def decisions(task_type: str, probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Predicted multi-hot rows (multi-label: probs >= threshold) or class indices (argmax)."""
    return (probs >= threshold).astype(np.int64) if task_type == "multilabel" else probs.argmax(1)


def _auc_undefined(task_type: str, targets: np.ndarray, probs: np.ndarray, names: list[str]) -> str | None:
    """Why ROC AUC is undefined on these targets (a class with no positive or no negative), or None."""
    if not np.isfinite(probs).all():
        return "undefined: non-finite probabilities"
    if task_type == "multilabel":
        t = targets.reshape(len(targets), -1).astype(bool)
        no_pos = [names[j] for j in np.flatnonzero(~t.any(0))]
        no_neg = [names[j] for j in np.flatnonzero(t.all(0))]
    else:
        counts = np.bincount(targets.astype(np.int64), minlength=probs.shape[1])
        no_pos = [names[j] for j in np.flatnonzero(counts == 0)]
        no_neg = [names[j] for j in np.flatnonzero(counts == len(targets))] if task_type == "binary" else []
    why = []
    if no_pos:
        why.append(f"class {', '.join(map(repr, no_pos))} absent from the targets")
    if no_neg:
        why.append(f"class {', '.join(map(repr, no_neg))} present in every target")
    return "undefined: " + "; ".join(why) if why else None


def classification_metrics_and_notes(task_type: str, targets: np.ndarray, probs: np.ndarray, threshold: float = 0.5,
                                     label_names: list[str] | None = None) -> tuple[dict, dict[str, str]]:
    """({accuracy, macro_f1, micro_f1, auc}, {metric: why it is None}): no value is ever NaN.

    accuracy is exact match for multi-label (torchmetrics MultilabelExactMatch), micro accuracy otherwise; F1 is
    torchmetrics' Multilabel/MulticlassF1Score, the one convention of SPEC §8 (binary tasks as two classes).
    AUC (scikit-learn; one-vs-rest macro for multiclass, macro over labels for multi-label) is None with a note when
    a class has no positive (or, binary / multi-label, no negative) in `targets`, where it is undefined.
    """
    from sklearn.metrics import roc_auc_score
    from torchmetrics.functional.classification import (multiclass_accuracy, multiclass_f1_score,
                                                        multilabel_exact_match, multilabel_f1_score)
    if len(targets) == 0:
        raise ValueError("classification_metrics: no samples to score")
    n_classes = probs.shape[1]
    names = list(label_names) if label_names is not None else [str(j) for j in range(n_classes)]
    pred = torch.from_numpy(np.asarray(decisions(task_type, probs, threshold), dtype=np.int64))
    target = torch.from_numpy(np.asarray(targets).astype(np.int64))
    if task_type == "multilabel":
        kw = {"num_labels": n_classes}
        out = {"accuracy": multilabel_exact_match(pred, target, **kw),
               "macro_f1": multilabel_f1_score(pred, target, average="macro", **kw),
               "micro_f1": multilabel_f1_score(pred, target, average="micro", **kw)}
    else:
        kw = {"num_classes": n_classes}
        out = {"accuracy": multiclass_accuracy(pred, target, average="micro", **kw),
               "macro_f1": multiclass_f1_score(pred, target, average="macro", **kw),
               "micro_f1": multiclass_f1_score(pred, target, average="micro", **kw)}
    out = {k: float(v) for k, v in out.items()}
    notes = {}
    why = _auc_undefined(task_type, np.asarray(targets), probs, names)
    if why is not None:
        out["auc"], notes["auc"] = None, why
    elif task_type == "binary":
        out["auc"] = float(roc_auc_score(targets, probs[:, 1]))
    elif task_type == "multiclass":
        out["auc"] = float(roc_auc_score(targets, probs, multi_class="ovr", average="macro",
                                         labels=list(range(n_classes))))
    else:
        out["auc"] = float(roc_auc_score(targets, probs, average="macro"))
    for k, v in out.items():    # a metric left undefined by a library is recorded as missing with why, never NaN
        if v is not None and not np.isfinite(v):
            out[k], notes[k] = None, f"undefined: {k} is {v} on these targets"
    return out, notes


def classification_metrics(task_type: str, targets: np.ndarray, probs: np.ndarray, threshold: float = 0.5,
                           label_names: list[str] | None = None) -> dict:
    """accuracy, macro-/micro-F1 and macro AUC (None where undefined; the reason: classification_metrics_and_notes)."""
    return classification_metrics_and_notes(task_type, targets, probs, threshold, label_names)[0]


def save_checkpoint(model: nn.Module, path: Path, card: Mapping[str, Any]) -> None:
    """Write the model's weights as safetensors (atomically), with `card` (JSON) in the file's metadata."""
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    data = safetensors.torch.save(sd, metadata={"gsco.card": json.dumps(card, sort_keys=True)})
    write_bytes_atomic(Path(path), data)


def read_card(checkpoint: Path) -> dict:
    """The model card stored in a specialist checkpoint's metadata."""
    with safetensors.safe_open(str(checkpoint), framework="pt") as f:
        meta = f.metadata() or {}
    if "gsco.card" not in meta:
        raise ValueError(f"{checkpoint}: not a specialist checkpoint (no 'gsco.card' metadata)")
    return json.loads(meta["gsco.card"])


def write_predictions(path: Path, data: SpecialistData, probs: np.ndarray, threshold: float,
                      split: str = "test") -> None:
    """<split> predictions (jsonl): per sample its predicted and true label names and the probabilities."""
    pred = decisions(data.task_type, probs, threshold)
    names = data.label_names
    rows = getattr(data, split)
    lines = []
    for i, sid in enumerate(rows.ids):
        if data.task_type == "multilabel":
            p_names = [names[j] for j in np.flatnonzero(pred[i])]
            t_names = [names[j] for j in np.flatnonzero(rows.targets[i])]
        else:
            p_names, t_names = [names[int(pred[i])]], [names[int(rows.targets[i])]]
        lines.append(json.dumps({"sample_id": sid, "predicted": p_names, "target": t_names,
                                 "probabilities": [round(float(p), 6) for p in probs[i]]}))
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())
