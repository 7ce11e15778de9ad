"""Generalist side: base model -> DGB/DES synthesis -> instruction corpus -> LoRA fine-tuning of MedDr.

    gsco run --profile tiny --stage generalist
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from data_contracts.layout import RunLayout
from flows.observe import as_state
from tasks.generalist import stage
from tasks.generalist.backends import generalist_for
from tasks.generalist.settings import (CorpusSettings, FinetuneSettings, GeneralistSettings, SynthesisKindSettings,
                                       SynthesisSettings)
from tasks.tracking import Tracking


@task(name="generalist-base")
def base_model(settings: GeneralistSettings, out_dir: str, datasets: list[str], tracking: Tracking) -> dict:
    base = stage.prepare_base(settings, RunLayout(Path(out_dir)), datasets)
    return as_state({**base, "model_id": stage.record_base(base, tracking)}, cached=base["status"] == "cached")


@task(name="synthesize", task_run_name="synthesize-{kind}")
def synthesize(kind: str, out_dir: str, datasets: list[str], base: dict, generalist: GeneralistSettings,
               settings: SynthesisKindSettings) -> dict:
    g = generalist_for(base, generalist)
    result = {**stage.run_synthesis(kind, RunLayout(Path(out_dir)), datasets, g, settings), "generalist": g.id}
    return as_state(result, cached=result["status"] == "cached")


@task(name="record-synthesis")
def record_synthesis(results: list[dict], base: dict, out_dir: str, tracking: Tracking) -> str:
    gid = next((r["generalist"] for r in results if "generalist" in r), "")
    return stage.record_synthesis(results, base.get("model_id"), gid, RunLayout(Path(out_dir)), tracking)


@flow(name="synthesis")
def synthesis(out_dir: str, datasets: list[str], base: dict, generalist: GeneralistSettings,
              settings: SynthesisSettings, tracking: Tracking) -> dict:
    """DGB reports and DES descriptions from the base generalist (batched, resumable, cached)."""
    # (submit + result: a task that returns its Cached state gives its data back this way, not the state)
    results = [synthesize.submit(kind, out_dir, datasets, base, generalist, getattr(settings, kind)).result()
               for kind in ("dgb", "des") if getattr(settings, kind) is not None]
    return {"results": results, "run_id": record_synthesis(results, base, out_dir, tracking)}


@task(name="assemble-corpus")
def assemble(out_dir: str, datasets: list[str], synth: list[dict], settings: CorpusSettings,
             tracking: Tracking, jobs: dict | None = None, retriever_jobs: dict | None = None) -> dict:
    layout = RunLayout(Path(out_dir))
    c = stage.build_corpus(layout, datasets, synth, settings, jobs, retriever_jobs)
    return as_state({**c, "run_id": stage.record_corpus(c, layout, tracking)}, cached=c["status"] == "cached")


@flow(name="corpus")
def corpus(out_dir: str, datasets: list[str], synth: list[dict], settings: CorpusSettings, tracking: Tracking,
           jobs: dict | None = None, retriever_jobs: dict | None = None) -> dict:
    """CLS + MRG + VQA + DGB + DES rows rendered with the Fig. A3 templates into Parquet shards + manifest (and the
    collaboration rows from the specialists' `jobs` / `retriever_jobs` when corpus.collaboration is on)."""
    return assemble.submit(out_dir, datasets, synth, settings, tracking, jobs, retriever_jobs).result()


@task(name="lora-finetune")
def lora_finetune(base: dict, corpus_result: dict, settings: FinetuneSettings, out_dir: str,
                  tracking: Tracking) -> dict:
    ft = stage.run_finetune(base, corpus_result, settings, RunLayout(Path(out_dir)))
    recorded = stage.record_finetune(ft, base.get("model_id"), corpus_result, tracking)
    return as_state({"status": ft["status"], "path": ft["path"], **recorded,
                     "final_loss": ft["payload"]["metrics"].get("final_loss"),
                     "first_loss": ft["payload"]["metrics"].get("first_loss")}, cached=ft["status"] == "cached")


@flow(name="finetune")
def finetune(base: dict, corpus_result: dict, settings: FinetuneSettings, out_dir: str, tracking: Tracking) -> dict:
    """MedDr = LoRA on the base generalist's language model under DeepSpeed; adapter saved and merged."""
    return lora_finetune.submit(base, corpus_result, settings, out_dir, tracking).result()
