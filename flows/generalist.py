"""Generalist side: base model -> DGB/DES synthesis -> instruction corpus -> LoRA fine-tuning of MedDr.

    gsco run --profile tiny --stage generalist
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from tasks import meddr


@task(name="generalist-base")
def base_model(settings: dict, tables_root: str, datasets: list[str], out_dir: str, tracking: dict,
               parent_run_id: str | None) -> dict:
    base = meddr.prepare_base(settings, Path(tables_root), datasets, Path(out_dir))
    base["model_id"] = meddr.log_base_run(base, tracking, parent_run_id)
    return base


@task(name="synthesize", task_run_name="synthesize-{kind}")
def synthesize(kind: str, tables_root: str, datasets: list[str], base: dict, generalist: dict, settings: dict,
               out_dir: str) -> dict:
    generator = meddr.generator_for(base, generalist)
    return {**meddr.run_synthesis(kind, Path(tables_root), datasets, generator, settings, Path(out_dir)),
            "generator": generator.id}


@task(name="log-synthesis")
def log_synthesis(results: list[dict], base: dict, tables_root: str, tracking: dict, parent_run_id: str | None) -> str:
    gen = next((r["generator"] for r in results if "generator" in r), "")
    return meddr.log_synthesis_run(results, base.get("model_id"), gen, Path(tables_root), tracking, parent_run_id)


@flow(name="synthesis")
def synthesis(tables_root: str, out_dir: str, datasets: list[str], base: dict, generalist: dict, settings: dict,
              tracking: dict, parent_run_id: str | None = None) -> dict:
    """DGB reports and DES descriptions from the base generalist (batched, resumable, cached)."""
    results = [synthesize(kind, tables_root, datasets, base, generalist, settings[kind], out_dir)
               for kind in ("dgb", "des") if settings.get(kind) is not None]
    run_id = log_synthesis(results, base, tables_root, tracking, parent_run_id)
    return {"results": results, "run_id": run_id}


@task(name="assemble-corpus")
def assemble(tables_root: str, datasets: list[str], synth: list[dict], settings: dict, out_dir: str,
             tracking: dict, parent_run_id: str | None) -> dict:
    c = meddr.build_corpus(Path(tables_root), datasets, synth, settings, Path(out_dir))
    c["run_id"] = meddr.log_corpus_run(c, Path(tables_root), tracking, parent_run_id)
    return c


@flow(name="corpus")
def corpus(tables_root: str, out_dir: str, datasets: list[str], synth: list[dict], settings: dict, tracking: dict,
           parent_run_id: str | None = None) -> dict:
    """CLS + MRG + VQA + DGB + DES rows rendered with the Fig. A3 templates into Parquet shards + manifest."""
    return assemble(tables_root, datasets, synth, settings, out_dir, tracking, parent_run_id)


@task(name="lora-finetune")
def lora_finetune(base: dict, corpus_result: dict, settings: dict, out_dir: str, tracking: dict,
                  parent_run_id: str | None) -> dict:
    ft = meddr.run_finetune(base, corpus_result, settings, Path(out_dir))
    logged = meddr.log_finetune_run(ft, base.get("model_id"), corpus_result, tracking, parent_run_id)
    return {"status": ft["status"], "path": ft["path"], **logged,
            "final_loss": ft["payload"]["metrics"].get("final_loss"),
            "first_loss": ft["payload"]["metrics"].get("first_loss")}


@flow(name="finetune")
def finetune(base: dict, corpus_result: dict, settings: dict, out_dir: str, tracking: dict,
             parent_run_id: str | None = None) -> dict:
    """MedDr = LoRA on the base generalist's language model under DeepSpeed ZeRO-3; adapter saved and merged."""
    return lora_finetune(base, corpus_result, settings, out_dir, tracking, parent_run_id)
