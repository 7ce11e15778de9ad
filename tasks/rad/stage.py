"""The RAD index stage: per (dataset, retriever) the retriever specialist's train-split embeddings + labels in
LanceDB (built, or found built with equal content), the test split's neighbours, and the MLflow record.

    info = build_rad_index(retriever_job, layout, profile.rad)      # retriever_job: the specialists stage's summary
    refs = rad_references(retriever_job, layout, k=5)               # test sample id -> neighbours' labels
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data_contracts.io import read_samples
from data_contracts.layout import RunLayout
from tasks.logs import cache_hit, part_logger
from tasks.rad.index import build_index, search
from tasks.rad.settings import RadSettings

log = part_logger("rad")


def table_name(dataset: str, retriever: str) -> str:
    return f"{dataset}__{retriever}"


def _embeddings(job: dict, split: str) -> tuple[list[str], np.ndarray]:
    """(sample ids, embeddings) of one split from a finished specialist job's summary."""
    return json.loads(Path(job["ids"][split]).read_text()), np.load(job["embeddings"][split])


def build_rad_index(job: dict, layout: RunLayout, settings: RadSettings) -> dict:
    """Build (or find already built) the RAD table of the retriever job's dataset; returns IndexInfo as a dict."""
    dataset, retriever = job["dataset"], job["arch"]
    ids, emb = _embeddings(job, "train")
    train = read_samples(layout.tables, dataset, "train", validate=False).select("sample_id", "labels")
    by_id = dict(zip(train["sample_id"].to_list(), train["labels"].to_list()))
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"{dataset}/{retriever}: embedding ids not in the train table, e.g. {missing[:3]}")
    labels = [by_id[i] for i in ids]
    texts = [", ".join(lab) for lab in labels]
    info = build_index(layout.lancedb, table_name(dataset, retriever), emb.astype(np.float32), ids, labels, texts,
                       ann_min_rows=settings.ann_min_rows, index_params=settings.index_params)
    if info.reused:
        cache_hit(log, "index", f"{dataset}/{retriever}", info.content_digest)
    else:
        log.info("rad index %s/%s: %d rows x %d, %s, LanceDB version %d", dataset, retriever, info.rows, info.dim,
                 info.index_type, info.version)
    return {"dataset": dataset, "retriever": retriever, "retriever_model_id": job["model_id"], **info.as_dict()}


def rad_references(job: dict, layout: RunLayout, k: int, split: str = "test") -> dict[str, list[str]]:
    """Sample id -> label names of its k nearest training cases (nearest first, one entry per case's label).

    A training-split query never retrieves itself: the table holds the training split, so the k nearest *other*
    cases are returned (what a collaboration corpus shows for a training sample)."""
    ids, emb = _embeddings(job, split)
    extra = 1 if split == "train" else 0
    hits = search(layout.lancedb, table_name(job["dataset"], job["arch"]), emb.astype(np.float32), k + extra)
    out = {}
    for sid, nb in zip(ids, hits):
        others = [n for n in nb if n.sample_id != sid][:k]
        out[sid] = [lab for n in others for lab in n.labels]
    return out


def record_indexes(infos: list[dict], tracking, choices: dict[str, dict] | None = None) -> str:
    """One MLflow run recording every index table (digest, version, tag, recall@k against exact search) and, per
    dataset, which retriever keys it and the validation scores it was chosen on."""
    import mlflow

    from tasks.lineage import log_model_input
    from tasks.tracking import log_params, log_table

    with tracking.stage_run("index") as run:
        for info in infos:
            log_model_input(info["retriever_model_id"])  # the specialist whose embeddings key this table
            key = f"{info['dataset']}.{info['retriever']}"
            log_params({f"{key}.version": info["version"], f"{key}.tag": info["tag"],
                        f"{key}.index_type": info["index_type"], f"{key}.rows": info["rows"]})
            if info["recall_at_k"] is not None:
                mlflow.log_metric(f"{key}.recall_at_{info['recall_k']}", info["recall_at_k"])
            log_table(f"index/{info['dataset']}/{info['retriever']}", info["content_digest"][:32],
                      Path(info["uri"]), context="output",
                      tags={"gsco.lancedb.version": str(info["version"]), "gsco.lancedb.tag": info["tag"][:250]})
        for dataset, choice in (choices or {}).items():
            log_params({f"{dataset}.retriever": choice["arch"], f"{dataset}.retriever_rule": choice["rule"],
                        f"{dataset}.retriever_metric": choice.get("metric") or ""})
            for arch, score in choice["scores"].items():
                mlflow.log_metric(f"{dataset}.retriever_val.{arch}", score)
        mlflow.log_dict(infos, "indexes.json")
        mlflow.log_dict(choices or {}, "retrievers.json")
        run_id = run.info.run_id
    _alias_retrievers(infos, choices or {}, tracking.uri)
    return run_id


def _alias_retrievers(infos: list[dict], choices: dict[str, dict], uri: str) -> None:
    """The registered specialist keying each dataset's RAD table gets the alias `rad-retriever` (the version this run
    indexed with); the dataset's other architectures lose it."""
    from tasks.lineage import RAD_RETRIEVER, drop_alias, registered_version, set_alias

    for info in infos:
        ds, chosen = info["dataset"], info["retriever"]
        for arch in {*choices.get(ds, {}).get("scores", {}), chosen}:
            name = f"specialist-{ds}-{arch}"
            if arch == chosen:
                set_alias(uri, name, RAD_RETRIEVER, registered_version(uri, name, info["retriever_model_id"]))
            else:
                drop_alias(uri, name, RAD_RETRIEVER)
