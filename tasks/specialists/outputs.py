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
    """The recorded result of a finished job, or None when its folder holds no done.json."""
    return JobResult.from_json(json.loads(files.done.read_text())) if files.done.is_file() else None


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


def classification_metrics(task_type: str, targets: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict:
    """accuracy (exact match for multi-label), macro-/micro-F1, and macro AUC (None where a class is absent)."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    pred = decisions(task_type, probs, threshold)
    labels = None if task_type == "multilabel" else list(range(probs.shape[1]))
    out = {
        "accuracy": float(accuracy_score(targets, pred)),
        "macro_f1": float(f1_score(targets, pred, average="macro", labels=labels, zero_division=0)),
        "micro_f1": float(f1_score(targets, pred, average="micro", labels=labels, zero_division=0)),
    }
    try:
        if task_type == "binary":
            out["auc"] = float(roc_auc_score(targets, probs[:, 1]))
        elif task_type == "multiclass":
            out["auc"] = float(roc_auc_score(targets, probs, multi_class="ovr", average="macro", labels=labels))
        else:
            out["auc"] = float(roc_auc_score(targets, probs, average="macro"))
    except ValueError:  # a class absent from the targets: AUC is undefined, so it is reported as missing, not 0
        out["auc"] = None
    return out


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


def write_predictions(path: Path, data: SpecialistData, probs: np.ndarray, threshold: float) -> None:
    """test_predictions.jsonl: per test sample its predicted and true label names and the probabilities."""
    pred = decisions(data.task_type, probs, threshold)
    names = data.label_names
    lines = []
    for i, sid in enumerate(data.test.ids):
        if data.task_type == "multilabel":
            p_names = [names[j] for j in np.flatnonzero(pred[i])]
            t_names = [names[j] for j in np.flatnonzero(data.test.targets[i])]
        else:
            p_names, t_names = [names[int(pred[i])]], [names[int(data.test.targets[i])]]
        lines.append(json.dumps({"sample_id": sid, "predicted": p_names, "target": t_names,
                                 "probabilities": [round(float(p), 6) for p in probs[i]]}))
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())
