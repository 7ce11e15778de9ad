"""The specialists stage: one (dataset x architecture) job from its spec -> train (or find finished) on a device slot
-> one MLflow run with the registered model; what callers need comes back in the job's summary.

    specs = job_specs(layout, datasets, profile.specialists)
    summary = run_and_record(spec, pool, isolation, tracking)    # {dataset, arch, status, fingerprint, run_id, ...}
    python -m recipes.specialist_job JOB.json                     # what a subprocess-isolated job runs

The flow (flows/specialists.py) fans these out as Prefect tasks; everything here is a plain function.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from data_contracts.files import write_json_atomic
from data_contracts.io import read_samples, split_digests
from data_contracts.layout import SPLITS, JobFiles, RunLayout
from tasks.logs import cache_hit, part_logger, summarised_warnings
from tasks.specialists.settings import SpecialistsSettings

log = part_logger("specialists")


def job_specs(layout: RunLayout, datasets: list[str], settings: SpecialistsSettings) -> list[dict]:
    """One JSON-able job spec per (dataset x architecture) of a profile's `specialists` section."""
    return [{"tables_root": str(layout.tables), "dataset": ds, "arch": arch,
             "arch_settings": settings.arch_settings[arch].model_dump(mode="json")
             if arch in settings.arch_settings else {},
             "recipe": settings.recipe.model_dump(mode="json"), "threads": settings.threads,
             "out_dir": str(layout.job(ds, arch).dir)}
            for ds in datasets for arch in settings.architectures]


def run_job(spec: dict) -> dict:
    """Train (or skip, when done.json matches) one job described by `spec`; returns the JobResult as a dict."""
    import dataclasses

    import torch

    from tasks.specialists.architectures import arch_spec
    from tasks.specialists.data import data_from_samples
    from tasks.specialists.settings import ArchSettings, Recipe
    from tasks.specialists.training import train_specialist

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    tables, ds = Path(spec["tables_root"]), spec["dataset"]
    digests = split_digests(tables, ds)
    data = data_from_samples(*[read_samples(tables, ds, s, validate=False) for s in SPLITS],
                             digest="|".join(digests[s] for s in SPLITS))
    arch = arch_spec(spec["arch"], ArchSettings.model_validate(spec.get("arch_settings") or {}))
    with summarised_warnings(log, f"specialist {ds}/{spec['arch']}"):
        result = train_specialist(data, arch, Recipe.model_validate(spec.get("recipe") or {}), Path(spec["out_dir"]),
                                  device=spec.get("device", "cpu"))
    return dataclasses.asdict(result)


class DevicePool:
    """Hands out one slot per job, exclusively across threads and processes: a GPU id, or (no GPUs) a CPU slot.

    Slots are lock files held with flock, so a killed job's slot is free the moment its process dies.
    """

    def __init__(self, lock_dir: Path, devices: list[int], cpu_slots: int = 1):
        self.lock_dir = Path(lock_dir)
        self.devices = list(devices)
        self.slots = [f"gpu-{d}" for d in self.devices] or [f"cpu-{i}" for i in range(max(1, cpu_slots))]
        self.lock_dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def acquire(self, poll_s: float = 0.2):
        while True:
            for i, slot in enumerate(self.slots):
                d = self.devices[i] if self.devices else None
                f = open(self.lock_dir / f"{slot}.lock", "w")
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.close()
                    continue
                try:
                    yield d
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
                    f.close()
                return
            time.sleep(poll_s)


def run_on_slot(spec: dict, pool: DevicePool, isolation: str) -> dict:
    """Run a job on a free device: in this process (CPU) or in a subprocess with CUDA_VISIBLE_DEVICES pinned."""
    with pool.acquire() as device:
        if isolation == "inprocess":
            if device is not None:
                raise ValueError("specialists.isolation=inprocess cannot pin a GPU: use subprocess with devices")
            return run_job(spec)
        files = JobFiles(Path(spec["out_dir"]))
        files.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(files.spec, {**spec, "device": "cuda:0" if device is not None else "cpu"})
        env = dict(os.environ)
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(device)
        from tasks.processes import dying_with_this_process

        with tempfile.TemporaryFile("w+") as stdout:   # the result line; stderr (the job's log) is read as it comes
            proc = subprocess.Popen(dying_with_this_process([sys.executable, "-m", "recipes.specialist_job",
                                                             str(files.spec)]), env=env, stdout=stdout,
                                    stderr=subprocess.PIPE, text=True)
            tail = _relay(proc.stderr)
            if proc.wait() != 0:
                raise RuntimeError(f"specialist job {spec['dataset']}/{spec['arch']} failed (exit {proc.returncode}):"
                                   f"\n{tail[-4000:]}")
            stdout.seek(0)
            return json.loads(stdout.read().strip().splitlines()[-1])


def _relay(lines) -> str:
    """Log a job process's stderr lines as they come (`LEVEL message`, recipes/specialist_job.py); its last lines."""
    import collections
    import logging

    tail = collections.deque(maxlen=60)
    for ln in lines:
        level, _, msg = ln.rstrip().partition(" ")
        known = level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        log.log(getattr(logging, level) if known else logging.INFO, "%s", msg if known else ln.rstrip())
        tail.append(ln)
    return "".join(tail)


def record_job(result: dict, spec: dict, tracking) -> dict:
    """One MLflow run per job (reused when the job was skipped): params, metrics per epoch, inputs, registered model.
    Returns {run_id, model_id, digest, registered: {name, version}}; the version gets the alias `latest-run`."""
    import mlflow

    from tasks.lineage import LATEST_RUN, registered_version, set_alias
    from tasks.tracking import log_params, log_split_input

    files = JobFiles(Path(result["out_dir"]))
    name = f"specialist-{result['dataset']}-{result['arch']}"
    if result["status"] == "skipped" and files.mlflow_run.exists():
        rec = json.loads(files.mlflow_run.read_text())
        if rec.get("fingerprint") == result["fingerprint"] and rec.get("tracking_uri") == tracking.uri \
                and rec.get("digest"):
            version = rec.get("version") or registered_version(tracking.uri, name, rec["model_id"])
            set_alias(tracking.uri, name, LATEST_RUN, version)
            return {"run_id": rec["run_id"], "model_id": rec["model_id"], "digest": rec["digest"],
                    "registered": {"name": name, "version": version}}
    tags = {**result.get("tags", {}), "gsco.specialist.fingerprint": result["fingerprint"],
            "gsco.specialist.init": result["init"], "gsco.specialist.dataset": result["dataset"],
            "gsco.specialist.arch": result["arch"]}
    with tracking.stage_run(name, stage="specialists", tags=tags) as run:
        log_params({**result["params"], "weights_note": result["weights_note"]})
        for h in result["history"]:
            mlflow.log_metrics({k: float(v) for k, v in h.items() if k != "epoch" and isinstance(v, (int, float))},
                               step=int(h.get("epoch", 0)))
        mlflow.log_metrics({k: float(v) for k, v in result["metrics"].items()})
        for split, digest in split_digests(Path(spec["tables_root"]), result["dataset"]).items():
            log_split_input(Path(spec["tables_root"]), result["dataset"], split, digest)
        for key in ("metrics", "history", "test_predictions"):
            if key in result["artifacts"]:
                mlflow.log_artifact(result["artifacts"][key], artifact_path="outputs")
        logged = _log_model(files, name)
        run_id = run.info.run_id
    set_alias(tracking.uri, name, LATEST_RUN, logged["registered"]["version"])
    write_json_atomic(files.mlflow_run, {"run_id": run_id, "model_id": logged["model_id"],
                                         "fingerprint": result["fingerprint"], "tracking_uri": tracking.uri,
                                         "digest": logged["digest"], "version": logged["registered"]["version"]})
    return {"run_id": run_id, **logged}


def _log_model(files: JobFiles, registered_name: str) -> dict:
    """Log the best checkpoint as a loadable MLflow pyfunc model (tasks/specialists/mlflow_model.py: models from
    code, the weights a safetensors artifact, no pickle) and register it as `registered_name`.

    Returns {model_id, digest, registered: {name, version}}. The checkpoint is what
    `tasks.specialists.training.predict` loads; tracing every model into a pt2 program per job would cost more than
    training the tiny ones and fails for some architectures.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from tasks.lineage import log_code_model, pinned
    from tasks.specialists import mlflow_model
    from tasks.specialists.outputs import read_card

    card = read_card(files.best)
    digest = weights_digest(files.best)
    signature = ModelSignature(
        inputs=Schema([ColSpec("binary", mlflow_model.IMAGE_COLUMN)]),
        outputs=Schema([ColSpec("double", label) for label in card["label_names"]]),
        params=ParamSchema([ParamSpec("output", "string", "probabilities"), ParamSpec("batch_size", "long", 256),
                            ParamSpec("device", "string", "cpu")]))
    with tempfile.TemporaryDirectory() as tmp:
        card_path = Path(tmp) / "model_card.json"
        card_path.write_text(json.dumps(card, indent=2, sort_keys=True))
        logged = log_code_model(
            registered_name, Path(mlflow_model.__file__), {"weights": str(files.best), "card": str(card_path)},
            digest, "gsco-specialist", registered_name=registered_name, signature=signature,
            requirements=pinned("torch", "torchvision", "timm", "safetensors", "numpy", "pillow", "pydantic",
                                "pandas", "pyyaml", "mlflow"),
            params={"arch": card["arch"]["name"], "num_classes": card["num_classes"], "img_size": card["img_size"],
                    "init": card.get("init", ""), "dataset": card.get("dataset", "")},
            tags={"gsco.specialist.fingerprint": card["fingerprint"]})
    return {**logged, "digest": digest}


def weights_digest(checkpoint: Path) -> str:
    """The model's digest (32 hex): a hash of its tensors (names, dtypes, shapes, values), not of the file (whose
    metadata holds the job fingerprint) nor of the job's inputs: two runs that trained the same weights agree."""
    import hashlib

    import safetensors.torch
    import torch

    h = hashlib.sha256()
    for name, t in sorted(safetensors.torch.load_file(str(checkpoint)).items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def run_and_record(spec: dict, pool: DevicePool, isolation: str, tracking) -> dict:
    """Run one job on a free slot, record it in MLflow; returns its `job_summary`."""
    result = run_on_slot(spec, pool, isolation)
    name = f"{result['dataset']}/{result['arch']}"
    if result["status"] == "skipped":
        cache_hit(log, "specialists", name, result["fingerprint"])
    else:
        log.info("specialist %s %s: %s", name, result["status"],
                 ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items()
                           if k in ("best_epoch", "test_accuracy", "test_macro_f1", "test_auc")
                           and isinstance(v, float)))
    return job_summary(result, record_job(result, spec, tracking))


def job_summary(result: dict, logged: dict) -> dict:
    """What the flow and later stages need of a finished job (RAD index, evaluation, lineage): no file re-reads."""
    files = JobFiles(Path(result["out_dir"]))
    return {"dataset": result["dataset"], "arch": result["arch"], "status": result["status"],
            "fingerprint": result["fingerprint"], "run_id": logged["run_id"], "model_id": logged["model_id"],
            "model_digest": logged.get("digest"), "registered": logged.get("registered"),
            "metrics": result["metrics"], "init": result["init"], "out_dir": result["out_dir"],
            "test_predictions": str(files.test_predictions),
            "predictions": {s: str(files.predictions(s)) for s in SPLITS},
            "embeddings": {s: str(files.embeddings(s)) for s in SPLITS}, "ids": {s: str(files.ids(s)) for s in SPLITS}}

