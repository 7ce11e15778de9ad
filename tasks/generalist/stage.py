"""The generalist (MedDr) side as stages, each key -> run -> MLflow record: the base model, DGB/DES synthesis, the
instruction corpus, LoRA fine-tuning.

    base = prepare_base(profile.generalist, layout, datasets)          # {"status", "path", "digest", "name"}
    synth = run_synthesis("dgb", layout, datasets, generalist, profile.synthesis.dgb)
    corpus = build_corpus(layout, datasets, [synth, ...], profile.corpus)
    ft = run_finetune(base, corpus, profile.finetune, layout)

Each returns `status` ("built"/"written"/"trained", "external", "empty" or "cached"), digests and paths; the
`record_*` functions log one MLflow run per stage, linked by dataset digests (tables, synthesis, corpus) and model
digests (base, adapter, merged), and return what later stages need (model ids, digests).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl

from data_contracts.cards import get_card
from data_contracts.files import atomic_write, file_sha256, write_json_atomic
from data_contracts.io import digest_of_hashes, read_samples, row_hashes, split_digests
from data_contracts.layout import RunLayout
from infra.profiles import repo_path
from tasks import prompts
from tasks.cache import recorded_key, stage_key
from tasks.generalist.collaboration import collaboration_rows
from tasks.generalist.corpus import SampleSource, assemble_corpus, export_internvl
from tasks.generalist.synthesis import synthesize
from tasks.generalist.settings import (CollaborationSettings, CorpusSettings, FinetuneSettings, GeneralistSettings,
                                       GenerationSettings, SynthesisKindSettings)
from tasks.logs import cache_hit, follow_lines, part_logger

log = part_logger("generalist")

BASE_NAME, ADAPTER_NAME, MERGED_NAME = "generalist-base", "meddr-adapter", "meddr-merged"
FINETUNE_CODE = ("tasks.generalist.finetune", "tasks.generalist.chat", "recipes.finetune",
                 "data_contracts.instructions", "data_contracts.image_refs")


# ------------------------------------------------------------------------------------------------------ base model
def tokenizer_texts(tables_root: Path, datasets: list[str]) -> list[str]:
    """Texts the tiny tokenizer is trained on: every table's text fields plus the prompt templates."""
    texts = [getattr(prompts, n) for n in dir(prompts) if n.endswith("TEMPLATE") and isinstance(getattr(prompts, n),
                                                                                                  str)]
    texts += [prompts.diagnosis_prompt("x-ray", ["a", "b"], True, ["a"], ["b"], p) for p in range(4)]
    for ds in datasets:
        for split in sorted(split_digests(tables_root, ds)):
            df = read_samples(tables_root, ds, split, validate=False).select(
                "question", "answer", "text", "labels", "label_set", "modality")
            for col in ("question", "answer", "text", "modality"):
                texts += [t for t in df[col].to_list() if t]
            texts += [", ".join(x) for x in df["labels"].to_list() + df["label_set"].to_list()[:1] if x]
    return texts


def base_key(texts: list[str], config) -> str:
    """Cache key of the tiny base model: its tokenizer texts, its config and the code that builds it."""
    return stage_key("generalist-base", {"texts": stage_key("texts", {}, texts, ())}, config,
                     ["tasks.generalist.tiny_internvl", "tasks.generalist.chat"])


def prepare_base(settings: GeneralistSettings, layout: RunLayout, datasets: list[str]) -> dict:
    """The base generalist: a configured hub id / local folder, or the tiny model built from the profile's config."""
    from tasks.generalist.backends import resolve_checkpoint, weights_fingerprint
    from tasks.generalist.tiny_internvl import build_tiny_internvl

    if settings.model:
        _, local = resolve_checkpoint(settings.model, settings.local_files_only, settings.revision)
        return {"status": "external", "path": str(local), "digest": weights_fingerprint(local),
                "name": settings.model}
    texts = tokenizer_texts(layout.tables, datasets)
    key = base_key(texts, settings.tiny_model)
    path = layout.generalist_base
    marker = layout.generalist_base_key
    status = "cached"
    if recorded_key(marker) != key or not path.is_dir():
        build_tiny_internvl(path, texts, settings.tiny_model)
        write_json_atomic(marker, {"key": key})
        status = "built"
    else:
        cache_hit(log, "generalist-base", "tiny-internvl", key)
    return {"status": status, "path": str(path), "digest": weights_fingerprint(path), "name": "tiny-internvl"}


def record_base(base: dict, tracking) -> str:
    """Record the base generalist as a LoggedModel (once per digest); returns its model id."""
    from tasks.lineage import find_model, log_model_dir, log_model_input
    from tasks.tracking import log_params

    existing = find_model(tracking.uri, tracking.experiment, BASE_NAME, base["digest"])
    with tracking.stage_run("generalist-base"):
        log_params({"name": base["name"], "digest": base["digest"], "status": base["status"]})
        if existing:
            log_model_input(existing)
            return existing
        return log_model_dir(BASE_NAME, Path(base["path"]), base["digest"], "internvl")


# ------------------------------------------------------------------------------------------------------- synthesis
def synthesis_sources(kind: str, layout: RunLayout, datasets: list[str],
                      settings: SynthesisKindSettings) -> pl.DataFrame:
    """The samples rows a synthesis kind reads: DGB = train images of DGB-source diagnosis sets; DES = case studies."""
    frames = []
    for ds in datasets:
        card = get_card(ds)
        if settings.datasets is not None and ds not in settings.datasets:
            continue
        if kind == "dgb" and not (card.dgb_source and card.task_kind == "diagnosis"):
            continue
        if kind == "des" and card.task_kind != "description":
            continue
        for split in settings.splits:
            if split in split_digests(layout.tables, ds):
                frames.append(read_samples(layout.tables, ds, split, validate=False))
    return pl.concat(frames) if frames else pl.DataFrame()


def run_synthesis(kind: str, layout: RunLayout, datasets: list[str], generalist,
                  settings: SynthesisKindSettings) -> dict:
    """Generate (or serve from cache) one synthesis kind; returns the result dict with its inputs and digests."""
    src = synthesis_sources(kind, layout, datasets, settings)
    if src.height == 0:
        return {"kind": kind, "status": "empty", "rows": 0, "inputs": []}
    res = synthesize(kind, src, generalist, settings.generation, layout.synthesis(kind),
                               batch_size=settings.batch_size)
    if res.status == "cached":
        cache_hit(log, "synthesis", kind, res.digest)
    else:
        log.info("synthesis %s: %d rows (%d generated)", kind, res.rows, res.generated)
    inputs = sorted({(ds, sp) for ds, sp in zip(src["dataset"].to_list(), src["split"].to_list())})
    digests = {ds: split_digests(layout.tables, ds) for ds, _ in inputs}
    return {**res.to_dict(), "inputs": [[ds, sp, digests[ds][sp]] for ds, sp in inputs]}


def record_synthesis(results: list[dict], base_model_id: str | None, generalist_id: str, layout: RunLayout,
                     tracking) -> str:
    """The synthesis run: the generalist and the table splits in, each kind's output table out."""
    import mlflow

    from tasks.lineage import log_model_input
    from tasks.tracking import log_params, log_split_input, log_table

    with tracking.stage_run("synthesis") as run:
        log_params({"generalist": generalist_id})
        if base_model_id:
            log_model_input(base_model_id)
        logged = set()
        for r in results:
            if r["status"] == "empty":
                continue
            for ds, sp, digest in r["inputs"]:
                if (ds, sp) not in logged:
                    log_split_input(layout.tables, ds, sp, digest)
                    logged.add((ds, sp))
            log_table(f"synthesis/{r['kind']}", r["digest"], Path(r["path"]), context="output")
            mlflow.log_metrics({f"{r['kind']}.rows": r["rows"], f"{r['kind']}.generated": r["generated"],
                                f"{r['kind']}.cached": float(r["status"] == "cached"),
                                **{f"{r['kind']}.removed.{k}": v for k, v in r["removals"].items()}})
        return run.info.run_id


# ---------------------------------------------------------------------------------------------------------- corpus
def corpus_sources(tables_root: Path, datasets: list[str], in_domain_train: bool = False) -> list[SampleSource]:
    """Train and val splits of every training dataset with a corpus template (diagnosis, VQA, report); with
    `in_domain_train`, also of the in-domain diagnosis benchmark sets (standing in for their source training set)."""
    out = []
    for ds in datasets:
        card = get_card(ds)
        stand_in = in_domain_train and card.task_kind == "diagnosis" and card.domain == "in-domain"
        if ("training" not in card.roles and not stand_in) or card.task_kind not in ("diagnosis", "vqa", "report"):
            continue
        digests = split_digests(tables_root, ds)
        for split in ("train", "val"):
            if split in digests:
                out.append(SampleSource(Path(tables_root), ds, split, card.task_kind, digests[split]))
    return out


def specialist_sources(tables_root: Path, datasets: list[str]) -> list[SampleSource]:
    """Train and val splits of the diagnosis sets the specialists trained on (collaboration rows' datasets)."""
    out = []
    for ds in datasets:
        digests = split_digests(tables_root, ds)
        out += [SampleSource(Path(tables_root), ds, s, "diagnosis", digests[s])
                for s in ("train", "val") if s in digests]
    return out


COLLABORATION_CODE = ("tasks.generalist.collaboration", "tasks.prompts", "tasks.rad.stage", "tasks.rad.index",
                      "tasks.rad.ivf", "tasks.evaluation.arms", "data_contracts.instructions")


def collaboration_key(sources: list[SampleSource], settings: CollaborationSettings, jobs: dict[str, dict[str, dict]],
                      retriever_jobs: dict[str, dict]) -> str:
    """Cache key of the collaboration rows: the source splits, the specialists and retrievers they read, the
    settings and the code that renders them."""
    datasets = sorted({s.dataset for s in sources})
    inputs = {"splits": {f"{s.dataset}/{s.split}": s.digest for s in sources},
              "specialists": {d: {a: j["fingerprint"] for a, j in jobs.get(d, {}).items()} for d in datasets},
              "retrievers": {d: retriever_jobs[d]["fingerprint"] for d in datasets if d in retriever_jobs}}
    return stage_key("collaboration", inputs, settings, COLLABORATION_CODE)


def _collaboration_frames(layout: RunLayout, sources: list[SampleSource], settings: CollaborationSettings,
                          jobs: dict[str, dict[str, dict]], retriever_jobs: dict[str, dict]) -> list[pl.DataFrame]:
    from tasks.evaluation.arms import specialist_predictions
    from tasks.rad.stage import rad_references

    frames = []
    for s in sources:
        by_arch, retriever = jobs.get(s.dataset, {}), retriever_jobs.get(s.dataset)
        if not by_arch or retriever is None:
            raise ValueError(f"corpus.collaboration: {s.dataset} has no finished specialist jobs and RAD table to "
                             "draw references from (the specialists stage runs first when the option is on)")
        card = get_card(s.dataset)
        preds = [specialist_predictions(Path(j["predictions"][s.split]), card) for j in by_arch.values()]
        samples = read_samples(layout.tables, s.dataset, s.split, validate=False)
        moed = {sid: [lab for p in preds for lab in p[sid]] for sid in samples["sample_id"].to_list()}
        rad = rad_references(retriever, layout, settings.rad_k, s.split)
        frames.append(collaboration_rows(samples, moed, rad, settings.arms, settings.paraphrase, settings.per_sample))
    return frames


def collaboration_table(layout: RunLayout, sources: list[SampleSource], settings: CollaborationSettings,
                        jobs: dict[str, dict[str, dict]], retriever_jobs: dict[str, dict]) -> dict:
    """The collaboration instruction rows of every diagnosis source split, rebuilt only when an input changed;
    returns {"collaboration": (path, digest)} for assemble_corpus's `extra`."""
    sources = [s for s in sources if s.task_kind == "diagnosis"]
    if not sources:
        return {}
    key = collaboration_key(sources, settings, jobs, retriever_jobs)
    path, marker = layout.collaboration, layout.collaboration_key
    if path.exists() and recorded_key(marker) == key:
        return {"collaboration": (path, json.loads(marker.read_text())["digest"])}
    df = pl.concat(_collaboration_frames(layout, sources, settings, jobs, retriever_jobs))
    digest = digest_of_hashes(row_hashes(df, df.columns), "instructions")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, df.write_parquet)
    write_json_atomic(marker, {"key": key, "digest": digest})
    return {"collaboration": (path, digest)}


def build_corpus(layout: RunLayout, datasets: list[str], synth: list[dict], settings: CorpusSettings,
                 jobs: dict[str, dict[str, dict]] | None = None, retriever_jobs: dict[str, dict] | None = None) -> dict:
    """Assemble (or serve from cache) the instruction corpus from the tables and the synthesis outputs (and, with
    corpus.collaboration on, GSCo-format rows from the specialists' `jobs` and `retriever_jobs`)."""
    sources = corpus_sources(layout.tables, datasets, settings.in_domain_train)
    synth_dirs = {r["kind"]: (Path(r["path"]), r["digest"]) for r in synth if r["status"] != "empty"}
    extra = {}
    if settings.collaboration.enabled:
        collab = sources if settings.collaboration.datasets == "corpus" else \
            specialist_sources(layout.tables, list(jobs or {}))
        extra = collaboration_table(layout, collab, settings.collaboration, jobs or {}, retriever_jobs or {})
    res = assemble_corpus(sources, synth_dirs, layout.corpus, rows_per_shard=settings.rows_per_shard,
                          cls_prompt=settings.cls_prompt, extra=extra)
    if res.status == "cached":
        cache_hit(log, "corpus", "corpus", res.digest)
    else:
        log.info("corpus: %d rows in %s, %d duplicates removed", res.rows, layout.corpus.dir, res.duplicates_removed)
    out = {**res.to_dict(), "sources": [[s.dataset, s.split, s.digest] for s in sources],
           "synthesis": {k: {"digest": d, "path": str(p)} for k, (p, d) in synth_dirs.items()}}
    if settings.export_internvl:
        out["internvl_meta"] = str(export_internvl(layout.corpus, layout.corpus_internvl, layout.tables))
    return out


def record_corpus(c: dict, layout: RunLayout, tracking) -> str:
    """The corpus run: table splits and synthesis outputs in, the corpus out (counts and manifest as artifacts)."""
    import mlflow

    from tasks.tracking import log_split_input, log_table

    with tracking.stage_run("corpus") as run:
        for ds, sp, digest in c["sources"]:
            log_split_input(layout.tables, ds, sp, digest)
        for kind, s in c["synthesis"].items():
            log_table(f"synthesis/{kind}", s["digest"], Path(s["path"]), context="input")
        log_table("corpus", c["digest"], Path(c["path"]), context="output")
        mlflow.log_metrics({"rows": c["rows"], "duplicates_removed": c["duplicates_removed"],
                            "cached": float(c["status"] == "cached")})
        mlflow.log_dict(c["counts"], "counts.json")
        mlflow.log_artifact(str(layout.corpus.manifest))
        return run.info.run_id


# -------------------------------------------------------------------------------------------------------- finetune
def finetune_key(base_digest: str, corpus_digest: str, settings: FinetuneSettings) -> str:
    """Cache key of the fine-tuning stage: base and corpus digests, the DeepSpeed config's content, the recipe and
    GPU count, and the fine-tuning code (the launched recipe and the library it runs)."""
    inputs = {"base": base_digest, "corpus": corpus_digest,
              "deepspeed_config": file_sha256(repo_path(settings.deepspeed_config))}
    return stage_key("finetune", inputs, {"recipe": settings.recipe(), "num_gpus": settings.num_gpus},
                     FINETUNE_CODE)


def launch_command(launcher: str, num_gpus: int, cfg_path: Path) -> list[str]:
    """The command that runs recipes/finetune.py on this node: DeepSpeed's launcher or torchrun."""
    if launcher == "deepspeed":
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--no_local_rank", "--num_gpus",
                str(max(1, num_gpus)), "--module", "recipes.finetune", "--config", str(cfg_path)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(max(1, num_gpus)),
            "-m", "recipes.finetune", "--config", str(cfg_path)]


def run_finetune(base: dict, corpus: dict, settings: FinetuneSettings, layout: RunLayout) -> dict:
    """Launch LoRA fine-tuning unless a finished run has the same key; its result payload for MLflow."""
    from tasks.generalist.finetune.config import FinetuneConfig
    from tasks.processes import dying_with_this_process
    from tasks.generalist.finetune.training import result_payload

    files = layout.finetune
    key = finetune_key(base["digest"], corpus["digest"], settings)
    recorded = recorded_key(files.inputs)
    if files.result.exists() and recorded == key:
        cache_hit(log, "finetune", "meddr", key)
        return {"status": "cached", "key": key, "path": str(files.dir), "payload": result_payload(files)}
    if recorded is not None and recorded != key:
        shutil.rmtree(files.dir)  # another base, corpus, recipe or code: its checkpoints must not be resumed
    files.dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(files.inputs, {"key": key})
    cfg = FinetuneConfig(model_path=base["path"], data_dir=str(layout.corpus.shards), tables_dir=str(layout.tables),
                         output_dir=str(files.dir),
                         deepspeed_config=str(repo_path(settings.deepspeed_config)),
                         **settings.recipe().model_dump())
    write_json_atomic(files.run_config, cfg.model_dump())
    cmd = launch_command(settings.launcher, settings.num_gpus, files.run_config)
    # the launcher dies with this run, its workers with the launcher (recipes/finetune.py): a killed run leaves no
    # worker training on into the folder its rerun resumes
    # (the thread that starts the launcher waits on it, following its loss curve into the run's log as it grows)
    with open(files.launcher_log, "w") as launcher_log:
        proc = subprocess.Popen(dying_with_this_process(cmd), env={**os.environ, **settings.env},
                                stdout=launcher_log, stderr=subprocess.STDOUT)
        returncode = follow_lines(proc, files.loss_curve, _loss_logger(cfg.max_steps))
    if returncode != 0:
        raise RuntimeError(f"fine-tuning failed (exit {returncode}); log: {files.launcher_log}\n"
                           f"{files.launcher_log.read_text(errors='replace')[-3000:]}")
    return {"status": "trained", "key": key, "path": str(files.dir), "payload": result_payload(files)}


def _loss_logger(max_steps: int | None, lines: int = 20):
    """on_line for the loss curve (one JSON line per step): about `lines` log lines over the run, and its last step."""
    every = max(1, (max_steps or 0) // lines)

    def on_line(line: str) -> None:
        try:
            row = json.loads(line)
        except ValueError:
            return   # a torn line of a killed worker; the curve is cut back on resume
        if row["step"] % every == 0 or row["step"] == 1 or row["step"] == max_steps:
            log.info("finetune step %d/%s: loss %.4f, lr %.3g", row["step"], max_steps or "?", row["loss"],
                     row.get("lr", float("nan")))
    return on_line


def record_finetune(ft: dict, base_model_id: str | None, corpus: dict, tracking) -> dict:
    """The fine-tuning run: params, loss curve, corpus and base model in, adapter + merged model out (loadable pyfunc
    models, registered as `meddr-adapter` and `meddr`, alias `latest-run`).
    Returns {run_id, model_ids, registered, merged_path, merged_digest, adapter_digest}."""
    import mlflow
    from mlflow.entities import LoggedModelOutput

    from tasks.generalist.backends import weights_fingerprint
    from tasks.lineage import LATEST_RUN, find_model, log_model_input, registered_version, set_alias
    from tasks.tracking import log_params, log_table

    p = ft["payload"]
    adapter_digest = p["tags"]["adapter_digest"][:32]
    merged = p["artifacts"].get("merged")
    merged_digest = weights_fingerprint(merged) if merged else None
    with tracking.stage_run("finetune", tags={f"gsco.{k}": v for k, v in p["tags"].items()}) as run:
        log_params(p["params"])
        mlflow.log_metrics({k: float(v) for k, v in p["metrics"].items()})
        mlflow.log_metric("cached", float(ft["status"] == "cached"))
        if ft["status"] != "cached":
            for h in p["metric_history"]:
                mlflow.log_metric(h["key"], float(h["value"]), step=int(h["step"]))
        log_table("corpus", corpus["digest"], Path(corpus["path"]), context="input")
        if base_model_id:
            log_model_input(base_model_id)
        for a in ("loss_curve", "deepspeed_config", "result"):
            if Path(p["artifacts"][a]).exists():
                mlflow.log_artifact(p["artifacts"][a])
        ids, registered = {}, {}
        for name, path, digest in ((ADAPTER_NAME, p["artifacts"]["adapter"], adapter_digest),
                                   (MERGED_NAME, merged, merged_digest)):
            if not path or (name == ADAPTER_NAME and not base_model_id):
                continue
            reg_name = REGISTERED_NAMES[name]
            existing = find_model(tracking.uri, tracking.experiment, name, digest, loadable=True)
            if existing:
                mlflow.log_outputs([LoggedModelOutput(existing, step=0)])
                ids[name] = existing
                registered[reg_name] = registered_version(tracking.uri, reg_name, existing)
            else:
                logged = log_generalist_model(name, Path(path), digest, base_model_id)
                ids[name], registered[reg_name] = logged["model_id"], logged["registered"]["version"]
        run_id = run.info.run_id
    for reg_name, version in registered.items():
        set_alias(tracking.uri, reg_name, LATEST_RUN, version)
    return {"run_id": run_id, "model_ids": ids, "registered": registered, "merged_path": merged,
            "merged_digest": merged_digest, "adapter_digest": adapter_digest}


# the registered model of each LoggedModel name (tasks/lineage.py lists names and aliases)
REGISTERED_NAMES = {MERGED_NAME: "meddr", ADAPTER_NAME: "meddr-adapter"}


def log_generalist_model(name: str, path: Path, digest: str, base_model_id: str | None = None) -> dict:
    """Log MedDr (`meddr-merged`: the merged folder) or its adapter (`meddr-adapter`: the peft folder over the base
    LoggedModel `base_model_id`) as a loadable pyfunc model (tasks/generalist/mlflow_model.py) on the active run and
    register it; returns {model_id, registered: {name, version}}."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from tasks.generalist import mlflow_model
    from tasks.lineage import log_code_model, pinned

    gen = GenerationSettings()
    signature = ModelSignature(
        inputs=Schema([ColSpec("binary", mlflow_model.IMAGE_COLUMN), ColSpec("string", mlflow_model.PROMPT_COLUMN)]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", gen.max_new_tokens),
                            ParamSpec("do_sample", "boolean", gen.do_sample),
                            ParamSpec("temperature", "double", gen.temperature),
                            ParamSpec("top_p", "double", gen.top_p), ParamSpec("num_beams", "long", gen.num_beams),
                            ParamSpec("seed", "long", gen.seed)]))
    adapter = name == ADAPTER_NAME
    requirements = pinned("torch", "transformers", "tokenizers", "safetensors", "numpy", "pillow", "pydantic",
                          "pandas", "pyyaml", "mlflow", *(("peft", "accelerate") if adapter else ()))
    return log_code_model(name, Path(mlflow_model.__file__), {"adapter" if adapter else "model": str(path)}, digest,
                          "peft-lora" if adapter else "internvl", registered_name=REGISTERED_NAMES[name],
                          requirements=requirements, signature=signature,
                          model_config={"base_model_uri": f"models:/{base_model_id}"} if adapter else None,
                          tags={"gsco.base_model_id": base_model_id} if adapter else None)
