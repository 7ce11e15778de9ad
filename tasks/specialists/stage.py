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
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from data_contracts.files import write_json_atomic
from data_contracts.io import read_samples, split_digests
from data_contracts.layout import SPLITS, JobFiles, RunLayout
from tasks.specialists.settings import SpecialistsSettings


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

        proc = subprocess.run(dying_with_this_process([sys.executable, "-m", "recipes.specialist_job",
                                                       str(files.spec)]), env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"specialist job {spec['dataset']}/{spec['arch']} failed (exit {proc.returncode}):\n"
                               f"{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def record_job(result: dict, spec: dict, tracking) -> dict:
    """One MLflow run per job (reused when the job was skipped): params, metrics per epoch, inputs, registered model.
    Returns {run_id, model_id}."""
    import mlflow

    from tasks.tracking import log_params, log_split_input

    files = JobFiles(Path(result["out_dir"]))
    if result["status"] == "skipped" and files.mlflow_run.exists():
        rec = json.loads(files.mlflow_run.read_text())
        if rec.get("fingerprint") == result["fingerprint"] and rec.get("tracking_uri") == tracking.uri:
            return {"run_id": rec["run_id"], "model_id": rec["model_id"]}
    name = f"specialist-{result['dataset']}-{result['arch']}"
    tags = {**result.get("tags", {}), "gsco.specialist.fingerprint": result["fingerprint"],
            "gsco.specialist.init": result["init"]}
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
        model_id = _log_model(files, name)
        run_id = run.info.run_id
    write_json_atomic(files.mlflow_run, {"run_id": run_id, "model_id": model_id, "fingerprint": result["fingerprint"],
                                         "tracking_uri": tracking.uri})
    return {"run_id": run_id, "model_id": model_id}


def _log_model(files: JobFiles, registered_name: str) -> str:
    """Log the best checkpoint (safetensors + its model card) as an MLflow LoggedModel and register it.

    The checkpoint is what `tasks.specialists.training.predict` loads (weights only, no pickle); tracing every model
    into a pt2 program per job would cost more than training the tiny ones and fails for some architectures.
    """
    import mlflow

    from tasks.lineage import log_model_dir
    from tasks.specialists.outputs import read_card

    card = read_card(files.best)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(files.best, Path(tmp) / files.best.name)
        (Path(tmp) / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True))
        model_id = log_model_dir(registered_name, Path(tmp), weights_digest(files.best), "gsco-specialist",
                                 params={"arch": card["arch"]["name"], "num_classes": card["num_classes"],
                                         "img_size": card["img_size"], "init": card.get("init", "")},
                                 tags={"gsco.specialist.fingerprint": card["fingerprint"]})
    mlflow.register_model(f"models:/{model_id}", registered_name)
    return model_id


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
    return job_summary(result, record_job(result, spec, tracking))


def job_summary(result: dict, logged: dict) -> dict:
    """What the flow and later stages need of a finished job (RAD index, evaluation, lineage): no file re-reads."""
    files = JobFiles(Path(result["out_dir"]))
    return {"dataset": result["dataset"], "arch": result["arch"], "status": result["status"],
            "fingerprint": result["fingerprint"], "run_id": logged["run_id"], "model_id": logged["model_id"],
            "metrics": result["metrics"], "init": result["init"], "out_dir": result["out_dir"],
            "test_predictions": str(files.test_predictions),
            "predictions": {s: str(files.predictions(s)) for s in SPLITS},
            "embeddings": {s: str(files.embeddings(s)) for s in SPLITS}, "ids": {s: str(files.ids(s)) for s in SPLITS}}

