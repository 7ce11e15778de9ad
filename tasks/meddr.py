"""The generalist (MedDr) side as stages: base model, DGB/DES synthesis, corpus, LoRA fine-tuning — cached and logged.

    base = prepare_base(settings["generalist"], tables_root, datasets, out_dir)
    synth = run_synthesis("dgb", ...); corpus = build_corpus(...); ft = run_finetune(...)

Each stage returns a dict with `status` ("written"/"built"/"trained" or "cached"), digests and paths; the `log_*`
functions record one MLflow run per stage, linked by dataset digests (tables, synthesis, corpus) and model digests
(base, adapter, merged).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import polars as pl

from data_contracts.cards import get_card
from data_contracts.io import read_manifest, read_samples, write_json_atomic
from tasks import corpus as corpus_mod
from tasks import prompts, synthesis
from tasks.lineage import find_model, log_model_dir, log_model_input
from tasks.tracking import log_split_input, log_table, standard_tags, start_run

BASE_NAME, ADAPTER_NAME, MERGED_NAME = "generalist-base", "meddr-adapter", "meddr-merged"


def _sha(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------------ base model
def tokenizer_texts(tables_root: Path, datasets: list[str]) -> list[str]:
    """Texts the tiny tokenizer is trained on: every table's text fields plus the prompt templates."""
    texts = [getattr(prompts, n) for n in dir(prompts) if n.endswith("TEMPLATE") and isinstance(getattr(prompts, n),
                                                                                                  str)]
    texts += [prompts.diagnosis_prompt("x-ray", ["a", "b"], True, ["a"], ["b"], p) for p in range(4)]
    for ds in datasets:
        m = read_manifest(tables_root, ds)
        for split in sorted(m["splits"]):
            df = read_samples(tables_root, ds, split, validate=False).select(
                "question", "answer", "text", "labels", "label_set", "modality")
            for col in ("question", "answer", "text", "modality"):
                texts += [t for t in df[col].to_list() if t]
            texts += [", ".join(x) for x in df["labels"].to_list() + df["label_set"].to_list()[:1] if x]
    return texts


def prepare_base(settings: dict, tables_root: Path, datasets: list[str], out_dir: Path) -> dict:
    """The base generalist: a configured hub id / local folder, or the tiny model built from the profile's config."""
    from tasks.generalist import build_tiny_internvl, resolve_checkpoint, weights_fingerprint

    if settings.get("model"):
        _, local = resolve_checkpoint(settings["model"], settings.get("local_files_only", True),
                                      settings.get("revision"))
        return {"status": "external", "path": str(local), "digest": weights_fingerprint(local),
                "name": settings["model"]}
    texts = tokenizer_texts(tables_root, datasets)
    key = _sha(json.dumps(settings.get("tiny_model", {}), sort_keys=True), _sha(*texts),
               inspect.getsource(build_tiny_internvl))
    path = Path(out_dir) / "models" / BASE_NAME
    marker = path / "_gsco_build.json"
    status = "cached"
    if not (marker.exists() and json.loads(marker.read_text()).get("key") == key):
        build_tiny_internvl(path, texts, settings.get("tiny_model") or {})
        write_json_atomic(marker, {"key": key})
        status = "built"
    return {"status": status, "path": str(path), "digest": weights_fingerprint(path), "name": "tiny-internvl"}


class LazyGeneralist:
    """A transformers generalist whose weights load on the first `generate` (cached stages never load them)."""

    def __init__(self, path: str, digest: str, settings: dict):
        self.path, self.settings = path, settings
        label = "local" if Path(path).is_dir() else path
        self.id = f"transformers:{label}@{digest}"
        self._g = None

    def generate(self, images, texts, settings):
        if self._g is None:
            from tasks.generalist import TransformersGeneralist
            self._g = TransformersGeneralist(self.path, batch_size=int(self.settings.get("batch_size", 8)),
                                             dtype=self.settings.get("dtype"),
                                             trust_remote_code=bool(self.settings.get("trust_remote_code", False)))
            if self._g.id != self.id:
                raise RuntimeError(f"{self.path}: weights changed while running ({self._g.id} != {self.id})")
        return self._g.generate(images, texts, settings)


def generator_for(base: dict, settings: dict):
    """The generator synthesis/evaluation use: an OpenAI-compatible endpoint if configured, else local weights."""
    from tasks.generalist import load_generalist

    if settings.get("backend") == "openai":
        spec = {k: v for k, v in settings.items() if k in ("backend", "base_url", "model", "api_key_env",
                                                            "timeout_s", "max_retries", "concurrency",
                                                            "model_revision")}
        return load_generalist(spec)
    return LazyGeneralist(base["path"], base["digest"], settings)


def log_base_run(base: dict, tracking: dict, parent_run_id: str | None) -> str:
    """Record the base generalist as a LoggedModel (once per digest); returns its model id."""
    existing = find_model(tracking["uri"], tracking["experiment"], BASE_NAME, base["digest"])
    with start_run(tracking["uri"], tracking["experiment"], "generalist-base", Path(tracking["out_dir"]),
                   tags=standard_tags(tracking.get("profile"), "generalist-base"), parent_run_id=parent_run_id):
        mlflow.log_params({"name": base["name"], "digest": base["digest"], "status": base["status"]})
        if existing:
            log_model_input(existing)
            return existing
        return log_model_dir(BASE_NAME, Path(base["path"]), base["digest"], "internvl")


# ------------------------------------------------------------------------------------------------------- synthesis
def synthesis_sources(kind: str, tables_root: Path, datasets: list[str], settings: dict) -> pl.DataFrame:
    """The samples rows a synthesis kind reads: DGB = train images of DGB-source diagnosis sets; DES = case studies."""
    wanted = settings.get("datasets")
    frames = []
    for ds in datasets:
        card = get_card(ds)
        if wanted is not None and ds not in wanted:
            continue
        if kind == "dgb" and not (card.dgb_source and card.task_kind == "diagnosis"):
            continue
        if kind == "des" and card.task_kind != "description":
            continue
        for split in settings.get("splits", ["train"]):
            if split in (read_manifest(tables_root, ds) or {}).get("splits", {}):
                frames.append(read_samples(tables_root, ds, split, validate=False))
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames)


def run_synthesis(kind: str, tables_root: Path, datasets: list[str], generator, settings: dict,
                  out_dir: Path) -> dict:
    """Generate (or serve from cache) one synthesis kind; returns the result dict with its inputs."""
    from tasks.generalist import GenerationSettings

    src = synthesis_sources(kind, tables_root, datasets, settings)
    if src.height == 0:
        return {"kind": kind, "status": "empty", "rows": 0, "inputs": []}
    gen = GenerationSettings.from_dict(settings.get("generation", {}))
    res = synthesis.synthesize(kind, src, generator, gen, Path(out_dir) / "synthesis" / kind,
                               batch_size=int(settings.get("batch_size", 8)))
    inputs = sorted({(ds, sp) for ds, sp in zip(src["dataset"].to_list(), src["split"].to_list())})
    return {**res.to_dict(), "inputs": [list(i) for i in inputs]}


def log_synthesis_run(results: list[dict], base_model_id: str | None, generator_id: str, tables_root: Path,
                      tracking: dict, parent_run_id: str | None) -> str:
    with start_run(tracking["uri"], tracking["experiment"], "synthesis", Path(tracking["out_dir"]),
                   tags=standard_tags(tracking.get("profile"), "synthesis"), parent_run_id=parent_run_id) as run:
        mlflow.log_param("generator", generator_id)
        if base_model_id:
            log_model_input(base_model_id)
        logged = set()
        for r in results:
            if r["status"] == "empty":
                continue
            for ds, sp in r["inputs"]:
                if (ds, sp) not in logged:
                    log_split_input(tables_root, ds, sp)
                    logged.add((ds, sp))
            log_table(f"synthesis/{r['kind']}", r["digest"], Path(r["path"]), context="output")
            mlflow.log_metrics({f"{r['kind']}.rows": r["rows"], f"{r['kind']}.generated": r["generated"],
                                f"{r['kind']}.cached": float(r["status"] == "cached"),
                                **{f"{r['kind']}.removed.{k}": v for k, v in r["removals"].items()}})
        return run.info.run_id


# ---------------------------------------------------------------------------------------------------------- corpus
def corpus_sources(tables_root: Path, datasets: list[str]) -> list[corpus_mod.SampleSource]:
    """Train and val splits of every training dataset with a corpus template (diagnosis, VQA, report)."""
    out = []
    for ds in datasets:
        card = get_card(ds)
        if "training" not in card.roles or card.task_kind not in ("diagnosis", "vqa", "report"):
            continue
        m = read_manifest(tables_root, ds)
        for split in ("train", "val"):
            if split in m["splits"]:
                out.append(corpus_mod.SampleSource(Path(tables_root), ds, split, card.task_kind,
                                                   m["splits"][split]["digest"]))
    return out


def build_corpus(tables_root: Path, datasets: list[str], synth: list[dict], settings: dict, out_dir: Path) -> dict:
    sources = corpus_sources(tables_root, datasets)
    synth_dirs = {r["kind"]: (Path(r["path"]), r["digest"]) for r in synth if r["status"] != "empty"}
    res = corpus_mod.assemble_corpus(sources, synth_dirs, Path(out_dir) / "corpus",
                                     rows_per_shard=int(settings.get("rows_per_shard", 50_000)))
    out = {**res.to_dict(), "sources": [[s.dataset, s.split, s.digest] for s in sources],
           "synthesis": {k: d for k, (_, d) in synth_dirs.items()}}
    if settings.get("export_internvl"):
        out["internvl_meta"] = str(corpus_mod.export_internvl(Path(res.path), Path(out_dir) / "corpus_internvl"))
    return out


def log_corpus_run(c: dict, tables_root: Path, tracking: dict, parent_run_id: str | None) -> str:
    with start_run(tracking["uri"], tracking["experiment"], "corpus", Path(tracking["out_dir"]),
                   tags=standard_tags(tracking.get("profile"), "corpus"), parent_run_id=parent_run_id) as run:
        for ds, sp, digest in c["sources"]:
            log_split_input(tables_root, ds, sp, digest)
        for kind, digest in c["synthesis"].items():
            log_table(f"synthesis/{kind}", digest, Path(c["path"]).parent / "synthesis" / kind, context="input")
        log_table("corpus", c["digest"], Path(c["path"]), context="output")
        mlflow.log_metrics({"rows": c["rows"], "duplicates_removed": c["duplicates_removed"],
                            "cached": float(c["status"] == "cached")})
        mlflow.log_dict(c["counts"], "counts.json")
        mlflow.log_artifact(str(Path(c["path"]) / corpus_mod.MANIFEST))
        return run.info.run_id


# -------------------------------------------------------------------------------------------------------- finetune
def run_finetune(base: dict, corpus: dict, settings: dict, out_dir: Path) -> dict:
    """Launch LoRA fine-tuning (DeepSpeed launcher or torchrun) unless a finished run has the same inputs."""
    from tasks.finetune import FinetuneConfig, mlflow_payload

    out = Path(out_dir) / "finetune"
    train_cfg = {k: v for k, v in settings.items() if k not in ("launcher", "num_gpus", "env")}
    key = _sha(base["digest"], corpus["digest"], json.dumps(train_cfg, sort_keys=True))
    marker = out / "_gsco_inputs.json"
    if (out / "finetune_result.json").exists() and marker.exists() and json.loads(marker.read_text())["key"] == key:
        return {"status": "cached", "key": key, "path": str(out), "payload": mlflow_payload(out)}
    if marker.exists() and json.loads(marker.read_text())["key"] != key:
        shutil.rmtree(out)  # another base, corpus or recipe: its checkpoints must not be resumed
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"key": key})
    ds_config = train_cfg.pop("deepspeed_config", None)
    cfg = FinetuneConfig(model_path=base["path"], data_dir=str(Path(corpus["path"]) / "shards"), output_dir=str(out),
                         **({"deepspeed_config": str(_repo_path(ds_config))} if ds_config else {}), **train_cfg)
    cfg_path = out / "run.json"
    write_json_atomic(cfg_path, cfg.to_dict())
    cmd = launch_command(settings.get("launcher", "torchrun"), int(settings.get("num_gpus", 0)), cfg_path)
    env = {**os.environ, **{k: str(v) for k, v in (settings.get("env") or {}).items()}}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    (out / "launcher.log").write_text(proc.stdout[-200_000:] + "\n--- stderr ---\n" + proc.stderr[-200_000:])
    if proc.returncode != 0:
        raise RuntimeError(f"fine-tuning failed (exit {proc.returncode}); log: {out / 'launcher.log'}\n"
                           f"{proc.stderr[-3000:]}")
    return {"status": "trained", "key": key, "path": str(out), "payload": mlflow_payload(out)}


def _repo_path(p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else Path(__file__).resolve().parents[1] / q


def launch_command(launcher: str, num_gpus: int, cfg_path: Path) -> list[str]:
    """The command that runs tasks/finetune.py on this node: DeepSpeed's launcher or torchrun."""
    script = str(Path(__file__).resolve().parent / "finetune.py")
    if launcher == "deepspeed":
        n = ["--num_gpus", str(num_gpus)] if num_gpus else ["--num_gpus", "1"]
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--no_local_rank", *n, script, "--config",
                str(cfg_path)]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                str(max(1, num_gpus)), script, "--config", str(cfg_path)]
    raise ValueError(f"finetune.launcher must be 'deepspeed' or 'torchrun', got {launcher!r}")


def log_finetune_run(ft: dict, base_model_id: str | None, corpus: dict, tracking: dict,
                     parent_run_id: str | None) -> dict:
    """The fine-tuning run: params, loss curve, corpus input, base model input, adapter + merged model outputs."""
    p = ft["payload"]
    adapter_digest = p["tags"]["adapter_digest"][:32]
    merged = p["artifacts"].get("merged")
    from tasks.generalist import weights_fingerprint
    merged_digest = weights_fingerprint(merged) if merged else None
    with start_run(tracking["uri"], tracking["experiment"], "finetune", Path(tracking["out_dir"]),
                   tags={**standard_tags(tracking.get("profile"), "finetune"),
                         **{f"gsco.{k}": v for k, v in p["tags"].items()}},
                   parent_run_id=parent_run_id) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in p["params"].items()})
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
        ids = {}
        for name, path, digest in ((ADAPTER_NAME, p["artifacts"]["adapter"], adapter_digest),
                                   (MERGED_NAME, merged, merged_digest)):
            if not path:
                continue
            existing = find_model(tracking["uri"], tracking["experiment"], name, digest)
            if existing:
                from mlflow.entities import LoggedModelOutput
                mlflow.log_outputs([LoggedModelOutput(existing, step=0)])
                ids[name] = existing
            else:
                ids[name] = log_model_dir(name, Path(path), digest, "peft-lora" if name == ADAPTER_NAME else "internvl")
        return {"run_id": run.info.run_id, "model_ids": ids, "merged_path": merged, "merged_digest": merged_digest,
                "adapter_digest": adapter_digest}
