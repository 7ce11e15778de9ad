"""RAD with the generalist's own vision encoder as the retriever (paper Table A9, SPEC §7): the train split's images
embedded by MedDr's vision tower + projector key a LanceDB table; a test image's embedding retrieves its k nearest.

    OMP_NUM_THREADS=1 pytest -q tests/test_rad_encoder.py

    info = build_encoder_index(generalist, "slake", train, "vqa", layout.lancedb, ann_min_rows=50_000, index_params={})
    refs = encoder_references(generalist, "slake", test, layout.lancedb, k=5)   # sample id -> k texts, nearest first

What a neighbour contributes (its value) depends on the task: diagnosis -> its label names (one entry per label, as
tasks/rad/stage.rad_references gives them); VQA -> "Q: <question> A: <answer>"; report -> the report text as the caller
gives it (findings only). `generalist` is a local (transformers) generalist: it needs `embed_images`, which a served
one does not have. The table is one per (dataset, generalist weights), so two generalists never read each other's keys;
an unchanged rebuild is found by build_index's content digest, which holds because embeddings are deterministic.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from data_contracts.errors import DataError
from tasks.rad.index import PUBLISHED_TAG, Neighbour, build_index, search

TASK_KINDS = ("diagnosis", "vqa", "report")
_VALUE_COLUMNS = {"diagnosis": ("labels",), "vqa": ("question", "answer"), "report": ("text",)}


def encoder_table_name(dataset: str, generalist_id: str) -> str:
    """The LanceDB table of `dataset` keyed by this generalist's encoder (its id names the weights)."""
    return f"{dataset}__encoder-{hashlib.sha256(generalist_id.encode()).hexdigest()[:12]}"


def _check_task_kind(task_kind: str) -> str:
    if task_kind not in TASK_KINDS:
        raise ValueError(f"task_kind: expected one of {TASK_KINDS}, got {task_kind!r}")
    return task_kind


def _check_frame(df: pl.DataFrame, dataset: str, split: str, columns: tuple[str, ...]) -> None:
    where = f"{dataset}/{split}"
    missing = [c for c in ("sample_id", "image", *columns) if c not in df.columns]
    if missing:
        raise DataError(where, f"columns {['sample_id', 'image', *columns]}, missing {missing}")
    if df.height == 0:
        raise DataError(where, "at least one row, got none")


def _embed(generalist: Any, images: list[bytes], where: str) -> np.ndarray:
    embed = getattr(generalist, "embed_images", None)
    if embed is None:
        raise TypeError(f"{where}: generalist {getattr(generalist, 'id', generalist)!r} has no embed_images; "
                        "RAD with the generalist's encoder needs a local (transformers) generalist")
    x = embed(images)
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[0] != len(images):
        raise RuntimeError(f"{where}: embed_images gave {getattr(x, 'shape', type(x).__name__)}; "
                           f"expected ({len(images)}, dim)")
    return x.astype(np.float32, copy=False)


def _values(train: pl.DataFrame, dataset: str, task_kind: str) -> tuple[list[list[str]], list[str]]:
    """(labels, texts) per train row: what a retrieved neighbour of this task contributes."""
    ids = train["sample_id"].to_list()
    if task_kind == "diagnosis":
        labels = [list(v) if v is not None else None for v in train["labels"].to_list()]
        for sid, lab in zip(ids, labels):
            if not lab:
                raise DataError(f"{dataset}/train", "a non-empty list of label names", row=sid, field="labels")
        return labels, [", ".join(lab) for lab in labels]
    if task_kind == "vqa":
        texts = []
        for sid, q, a in zip(ids, train["question"].to_list(), train["answer"].to_list()):
            for name, v in (("question", q), ("answer", a)):
                if not isinstance(v, str) or not v.strip():
                    raise DataError(f"{dataset}/train", f"a non-empty {name}", row=sid, field=name)
            texts.append(f"Q: {q.strip()} A: {a.strip()}")
    else:
        texts = train["text"].to_list()
        for sid, t in zip(ids, texts):
            if not isinstance(t, str) or not t.strip():
                raise DataError(f"{dataset}/train", "a non-empty report text", row=sid, field="text")
    labels = train["labels"].to_list() if "labels" in train.columns else [[]] * train.height
    return [list(v or []) for v in labels], texts


def build_encoder_index(generalist: Any, dataset: str, train: pl.DataFrame, task_kind: str, db_dir: Path, *,
                        ann_min_rows: int, index_params: Mapping[str, Any]) -> dict:
    """Embed the train split's images with the generalist's encoder and build (or find built) its RAD table.

    `train` holds `sample_id`, `image` and the task's values: `labels` (diagnosis), `question` + `answer` (VQA) or
    `text` (report; pass findings only). Returns tasks.rad.index.IndexInfo as a dict plus dataset, retriever, task kind
    and the generalist's id (record `tag` to search this exact build later).
    """
    _check_task_kind(task_kind)
    _check_frame(train, dataset, "train", _VALUE_COLUMNS[task_kind])
    labels, texts = _values(train, dataset, task_kind)
    name = encoder_table_name(dataset, generalist.id)
    emb = _embed(generalist, train["image"].to_list(), f"{dataset}/train")
    info = build_index(Path(db_dir), name, emb, train["sample_id"].to_list(), labels, texts,
                       ann_min_rows=ann_min_rows, index_params=index_params)
    return {"dataset": dataset, "retriever": "generalist-encoder", "task_kind": task_kind,
            "generalist_id": generalist.id, **info.as_dict()}


def encoder_neighbours(generalist: Any, dataset: str, test: pl.DataFrame, db_dir: Path, k: int, *,
                       version: int | str = PUBLISHED_TAG) -> dict[str, list[Neighbour]]:
    """Sample id -> its k nearest train cases (nearest first) in the generalist-encoder table of `dataset`."""
    _check_frame(test, dataset, "test", ())
    emb = _embed(generalist, test["image"].to_list(), f"{dataset}/test")
    hits = search(Path(db_dir), encoder_table_name(dataset, generalist.id), emb, k, version=version)
    return dict(zip(test["sample_id"].to_list(), hits))


def encoder_references(generalist: Any, dataset: str, test: pl.DataFrame, db_dir: Path, k: int, *,
                       task_kind: str | None = None, version: int | str = PUBLISHED_TAG) -> dict[str, list[str]]:
    """Sample id -> what its k nearest train cases contribute, nearest first: label names (diagnosis, one entry per
    case's label, as rad_references) or texts (VQA "Q: .. A: ..", report findings).

    `task_kind` defaults to the test frame's `task_kind` column (which must then hold one value).
    """
    if task_kind is None:
        kinds = test["task_kind"].unique().to_list() if "task_kind" in test.columns else []
        if len(kinds) != 1:
            raise DataError(f"{dataset}/test", f"one task_kind in the 'task_kind' column (or pass task_kind=), "
                                               f"got {sorted(map(str, kinds))}", field="task_kind")
        task_kind = kinds[0]
    _check_task_kind(task_kind)
    neighbours = encoder_neighbours(generalist, dataset, test, db_dir, k, version=version)
    if task_kind == "diagnosis":
        return {sid: [lab for n in nb for lab in n.labels] for sid, nb in neighbours.items()}
    return {sid: [n.text or "" for n in nb] for sid, nb in neighbours.items()}
