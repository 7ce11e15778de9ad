"""One specialist job end to end: samples tables -> train_specialist on a device slot -> MLflow run + registered model.

    python -m tasks.specialist_jobs JOB.json        # what a subprocess-isolated job runs (CUDA_VISIBLE_DEVICES set)

The flow (`flows/specialists.py`) fans these out; everything here is a plain function.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from data_contracts.io import read_manifest, read_samples, write_json_atomic


def arch_spec(name: str, settings: dict):
    """The ArchSpec of `name` with the profile's settings (overrides, img_size, weights, allow_scratch) applied."""
    from tasks.specialist import ARCHS

    if name not in ARCHS:
        raise KeyError(f"unknown specialist architecture {name!r}; known: {sorted(ARCHS)}")
    base = ARCHS[name]
    s = dict(settings or {})
    return dataclasses.replace(
        base, overrides={**base.overrides, **s.get("overrides", {})}, img_size=s.get("img_size", base.img_size),
        weights_path=s.get("weights_path", base.weights_path), allow_scratch=s.get("allow_scratch", base.allow_scratch),
        pretrained_tag=s.get("pretrained_tag", base.pretrained_tag))


def job_dir(out_root: Path, dataset: str, arch: str) -> Path:
    return Path(out_root) / "specialists" / dataset / arch


def job_specs(tables_root: str, out_dir: str, datasets: list[str], settings: dict) -> list[dict]:
    """One job spec per (dataset x architecture) of a profile's `specialists` settings, as `run_job` takes them."""
    return [{"tables_root": tables_root, "out_root": out_dir, "dataset": ds, "arch": arch,
             "arch_settings": (settings.get("arch_settings") or {}).get(arch) or {},
             "recipe": settings.get("recipe", {}), "threads": settings.get("threads"),
             "out_dir": str(job_dir(Path(out_dir), ds, arch))}
            for ds in datasets for arch in settings["architectures"]]


def run_job(spec: dict) -> dict:
    """Train (or skip, when done.json matches) one job described by `spec`; returns the JobResult as a dict."""
    import torch

    from tasks.specialist import Recipe, data_from_samples, train_specialist

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    tables, ds = Path(spec["tables_root"]), spec["dataset"]
    manifest = read_manifest(tables, ds)
    if manifest is None:
        raise FileNotFoundError(f"{tables / ds}: no canonical tables for {ds}; run ingest first")
    digest = "|".join(manifest["splits"][s]["digest"] for s in ("train", "val", "test"))
    data = data_from_samples(*[read_samples(tables, ds, s, validate=False) for s in ("train", "val", "test")],
                             digest=digest)
    result = train_specialist(data, arch_spec(spec["arch"], spec.get("arch_settings", {})),
                              Recipe.from_dict(spec.get("recipe", {})), Path(spec["out_dir"]),
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
        job = Path(spec["out_dir"]) / "job.json"
        job.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(job, {**spec, "device": "cuda:0" if device is not None else "cpu"})
        env = dict(os.environ)
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(device)
        proc = subprocess.run([sys.executable, "-m", "tasks.specialist_jobs", str(job)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"specialist job {spec['dataset']}/{spec['arch']} failed (exit {proc.returncode}):\n"
                               f"{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def log_job(result: dict, spec: dict, tracking: dict, parent_run_id: str | None = None) -> str:
    """One MLflow run per job (reused when the job was skipped): params, metrics per epoch, inputs, registered model."""
    import mlflow

    from tasks.tracking import log_split_input, standard_tags, start_run

    out_dir = Path(result["out_dir"])
    marker = out_dir / "mlflow_run.json"
    if result["status"] == "skipped" and marker.exists():
        rec = json.loads(marker.read_text())
        if rec.get("fingerprint") == result["fingerprint"] and rec.get("tracking_uri") == tracking["uri"]:
            return rec["run_id"]
    name = f"specialist-{result['dataset']}-{result['arch']}"
    tags = {**standard_tags(tracking.get("profile"), "specialists"), **result.get("tags", {}),
            "gsco.specialist.fingerprint": result["fingerprint"], "gsco.specialist.init": result["init"]}
    with start_run(tracking["uri"], tracking["experiment"], name, Path(tracking["out_dir"]), tags=tags,
                   parent_run_id=parent_run_id) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in result["params"].items()})
        mlflow.log_param("weights_note", result["weights_note"][:500])
        for h in result["history"]:
            step = int(h.get("epoch", 0))
            mlflow.log_metrics({k: float(v) for k, v in h.items() if k != "epoch" and isinstance(v, (int, float))},
                               step=step)
        mlflow.log_metrics({k: float(v) for k, v in result["metrics"].items()})
        manifest = read_manifest(Path(spec["tables_root"]), result["dataset"])
        for split, e in manifest["splits"].items():
            log_split_input(Path(spec["tables_root"]), result["dataset"], split, e["digest"])
        for key in ("metrics", "history", "test_predictions"):
            if key in result["artifacts"]:
                mlflow.log_artifact(result["artifacts"][key], artifact_path="outputs")
        model_id = _log_model(out_dir, spec, name)
        run_id = run.info.run_id
    write_json_atomic(marker, {"run_id": run_id, "model_id": model_id, "fingerprint": result["fingerprint"],
                               "tracking_uri": tracking["uri"]})
    return run_id


def logged_job(out_dir: Path) -> dict:
    """{run_id, model_id, fingerprint} MLflow recorded for a finished job."""
    return json.loads((Path(out_dir) / "mlflow_run.json").read_text())


def _log_model(out_dir: Path, spec: dict, registered_name: str) -> str:
    """Log the best checkpoint (safetensors + its model card) as an MLflow LoggedModel and register it.

    The checkpoint is what `tasks.specialist.predict` loads (weights only, no pickle); tracing every model into a
    pt2 program per job would cost more than training the tiny ones and fails for some architectures.
    """
    import tempfile

    import mlflow

    from tasks.lineage import log_model_dir
    from tasks.specialist import read_card

    ckpt = out_dir / "best.safetensors"
    card = read_card(ckpt)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(ckpt, Path(tmp) / "best.safetensors")
        (Path(tmp) / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True))
        model_id = log_model_dir(registered_name, Path(tmp), card["fingerprint"][:32], "gsco-specialist",
                                 params={"arch": card["arch"]["name"], "num_classes": card["num_classes"],
                                         "img_size": card["img_size"], "init": card.get("init", "")})
    mlflow.register_model(f"models:/{model_id}", registered_name)
    return model_id


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = run_job(spec)
    print(json.dumps(out))
