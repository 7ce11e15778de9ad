"""RAD database per (dataset, retriever): the retriever specialist's train-split embeddings + labels in LanceDB.

    info = build_rad_index("ham10000", "resnet18", tables_root, out_dir, settings)
    refs = rad_references("ham10000", "resnet18", out_dir, k=10)     # test sample id -> neighbours' labels
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data_contracts.io import read_samples
from tasks.index import build_index, search
from tasks.specialist_jobs import job_dir


def table_name(dataset: str, retriever: str) -> str:
    return f"{dataset}__{retriever}"


def lancedb_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "lancedb"


def _embeddings(out_dir: Path, dataset: str, retriever: str, split: str) -> tuple[list[str], np.ndarray]:
    d = job_dir(out_dir, dataset, retriever)
    if not (d / "done.json").exists():
        raise FileNotFoundError(f"{d}: the retriever specialist {retriever} on {dataset} has not finished")
    return json.loads((d / f"ids_{split}.json").read_text()), np.load(d / f"emb_{split}.npy")


def build_rad_index(dataset: str, retriever: str, tables_root: Path, out_dir: Path, settings: dict) -> dict:
    """Build (or find already built) the RAD table of one dataset and retriever; returns IndexInfo as a dict."""
    ids, emb = _embeddings(out_dir, dataset, retriever, "train")
    train = read_samples(tables_root, dataset, "train", validate=False).select("sample_id", "labels")
    by_id = dict(zip(train["sample_id"].to_list(), train["labels"].to_list()))
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"{dataset}/{retriever}: embedding ids not in the train table, e.g. {missing[:3]}")
    labels = [by_id[i] for i in ids]
    texts = [", ".join(lab) for lab in labels]
    info = build_index(lancedb_dir(out_dir), table_name(dataset, retriever), emb.astype(np.float32), ids, labels,
                       texts, ann_min_rows=int(settings.get("ann_min_rows", 50_000)),
                       index_params=settings.get("index_params") or {})
    return {"dataset": dataset, "retriever": retriever, **info.as_dict()}


def rad_references(dataset: str, retriever: str, out_dir: Path, k: int, split: str = "test") -> dict[str, list[str]]:
    """Test sample id -> label names of its k nearest training cases (nearest first, one entry per case's label)."""
    ids, emb = _embeddings(out_dir, dataset, retriever, split)
    hits = search(lancedb_dir(out_dir), table_name(dataset, retriever), emb.astype(np.float32), k)
    return {sid: [lab for n in nb for lab in n.labels] for sid, nb in zip(ids, hits)}


def log_index_run(infos: list[dict], tracking: dict, parent_run_id: str | None = None) -> str:
    """One MLflow run recording every index table: digest, version, tag, recall@k against exact search."""
    import mlflow

    from tasks.lineage import log_model_input
    from tasks.specialist_jobs import logged_job
    from tasks.tracking import log_table, standard_tags, start_run

    with start_run(tracking["uri"], tracking["experiment"], "index", Path(tracking["out_dir"]),
                   tags=standard_tags(tracking.get("profile"), "index"), parent_run_id=parent_run_id) as run:
        for info in infos:
            retriever_model = logged_job(job_dir(Path(tracking["out_dir"]), info["dataset"], info["retriever"]))
            log_model_input(retriever_model["model_id"])  # the specialist whose embeddings key this table
            key = f"{info['dataset']}.{info['retriever']}"
            mlflow.log_params({f"{key}.version": info["version"], f"{key}.tag": info["tag"][:250],
                               f"{key}.index_type": info["index_type"], f"{key}.rows": info["rows"]})
            if info["recall_at_k"] is not None:
                mlflow.log_metric(f"{key}.recall_at_{info['recall_k']}", info["recall_at_k"])
            log_table(f"index/{info['dataset']}/{info['retriever']}", info["content_digest"][:32],
                      Path(info["uri"]), context="output",
                      tags={"gsco.lancedb.version": str(info["version"]), "gsco.lancedb.tag": info["tag"][:250]})
        mlflow.log_dict(infos, "indexes.json")
        return run.info.run_id
