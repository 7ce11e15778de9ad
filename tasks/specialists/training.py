"""Train one specialist (dataset, architecture) job with early stopping, and predict with a trained one.

    OMP_NUM_THREADS=1 pytest -q tests/test_specialist.py
    python perf/specialist_throughput.py --tiny        # same data path and train step, timed

    result = train_specialist(data, arch_spec("resnet18", settings), Recipe(), Path("out/ham10000/resnet18"))
    probs, emb = predict(Path("out/ham10000/resnet18/best.safetensors"), arch, images)

A job writes, under its folder (data_contracts/layout.py `JobFiles`): `best.safetensors` (best-by-validation-loss
weights; its metadata holds the model card `predict` needs), test predictions and probabilities, pooled pre-logit
embeddings of every split with their sample ids, metrics, history, and `done.json` last. A rerun with the same
fingerprint (data digest, architecture, weights digest, recipe, and this package's code: tasks/cache.py) returns the
recorded result; a job killed mid-training resumes from `last.pt`, a per-epoch training state, or starts over when
its inputs changed. Batches are uint8 (tasks/specialists/data.py) normalised on the device; `train_step` runs with
bf16 autocast and channels_last on CUDA.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from data_contracts.files import atomic_write, file_sha256, write_json_atomic
from data_contracts.layout import SPLITS, JobFiles
from tasks.cache import stage_key
from tasks.logs import part_logger
from tasks.specialists.architectures import ArchSpec, arch_recipe
from tasks.specialists.data import EpochSampler, ImageDataset, SpecialistData, make_datasets, make_loader
from tasks.specialists.models import build_model, create_model, forward_embed, input_stats, weights_file
from tasks.specialists.complexity import model_complexity
from tasks.specialists.outputs import (JobResult, classification_metrics, classification_metrics_and_notes,
                                       load_result, probabilities, read_card, save_checkpoint, write_npy,
                                       write_predictions)
from tasks.specialists.settings import Recipe

# what a job runs: a change to any of these modules changes every job's fingerprint
SPECIALIST_CODE = ("tasks.specialists.architectures", "tasks.specialists.models", "tasks.specialists.data",
                   "tasks.specialists.training", "tasks.specialists.outputs", "tasks.specialists.settings",
                   "tasks.specialists.complexity")


class Runtime:
    """Device-side settings of one job: where batches go, how they are normalised, autocast dtype, memory format."""

    def __init__(self, device: str | torch.device, recipe: Recipe, mean, std):
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if (cuda and recipe.amp) else None
        self.channels_last = recipe.channels_last  # on a CPU too: oneDNN's convolutions are faster in NHWC
        self.pin = cuda
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) * 255.0

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Model input from a uint8 batch: to device, gray broadcast to RGB, normalised, channels_last on CUDA."""
        x = x.to(self.device, non_blocking=True)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def loss_fn_for(task_type: str):
    """BCE-with-logits for multi-label (multi-hot float targets), else cross-entropy (class-index targets)."""
    return F.binary_cross_entropy_with_logits if task_type == "multilabel" else F.cross_entropy


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, rt: Runtime, x_uint8: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
    """One optimisation step on a uint8 batch; returns the detached loss (no host sync)."""
    x = rt.prepare(x_uint8)
    with rt.autocast():
        logits = model(x)
    loss = loss_fn(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.inference_mode()
def evaluate(model: nn.Module, arch: ArchSpec, loader: DataLoader, rt: Runtime, n: int,
              with_embeddings: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits (N, C), embeddings (N, D) or None) in dataset order, float32."""
    model.eval()
    logits_out, emb_out = None, None
    for x, idx in loader:
        with rt.autocast():
            if with_embeddings:
                logits, emb = forward_embed(model, arch, rt.prepare(x))
            else:
                logits, emb = model(rt.prepare(x)), None
        lg = logits.float().cpu().numpy()
        if logits_out is None:
            logits_out = np.empty((n, lg.shape[1]), np.float32)
        logits_out[idx.cpu().numpy()] = lg
        if emb is not None:
            e = emb.float().cpu().numpy()
            if emb_out is None:
                emb_out = np.empty((n, e.shape[1]), np.float32)
            emb_out[idx.cpu().numpy()] = e
    return logits_out, emb_out


def _loss_value(task_type: str, logits: np.ndarray, targets: np.ndarray) -> float:
    return float(loss_fn_for(task_type)(torch.from_numpy(logits), torch.from_numpy(targets)))


def job_fingerprint(data: SpecialistData, arch: ArchSpec, recipe: Recipe, weights_sha256: str | None) -> str:
    """The job's cache key (32 hex): data digest, architecture, weights digest, recipe and the code that trains."""
    a = arch.to_dict()
    a.pop("weights_path")  # the file's digest identifies the weights, not where it lies
    return stage_key("specialist-job", {"data": data.content_digest(), "weights": weights_sha256},
                     {"arch": a, "recipe": recipe}, SPECIALIST_CODE)[:32]


def _clear_outputs(files: JobFiles, keep_resume: bool) -> None:
    # done.json goes first: from then on no reader treats the folder as finished. A resumed run keeps last.pt and the
    # best-so-far checkpoint: when no later epoch beats it, that file is the job's result
    for path in files.outputs:
        if keep_resume and path in (files.last, files.best):
            continue
        path.unlink(missing_ok=True)
    for tmp in files.dir.glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)


def _best_checkpoint_usable(path, fingerprint: str, best_epoch: int) -> bool:
    """Whether `path` holds this job's best checkpoint of `best_epoch` or of a later epoch (trivially true before any
    epoch was kept).

    A later one is what a run killed after an improving epoch, but before its next resume state, leaves: the resumed
    run replays those epochs from the state (same data order, same steps) and writes that checkpoint again, so the
    state can still be resumed instead of training from epoch 0.
    """
    if best_epoch < 0:
        return True
    try:
        card = read_card(path)
    except Exception:  # missing, torn or foreign
        return False
    return card.get("fingerprint") == fingerprint and isinstance(card.get("epoch"), int) \
        and card["epoch"] >= best_epoch


def _resume_state(files: JobFiles, fingerprint: str) -> dict | None:
    """The training state a killed run of this job left (last.pt), if it can be resumed."""
    if not files.last.is_file():
        return None
    try:
        state = torch.load(files.last, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file: start over rather than trust it
        return None
    if state.get("fingerprint") != fingerprint:
        return None
    if not _best_checkpoint_usable(files.best, fingerprint, state["best_epoch"]):
        return None  # the best-so-far weights that the state refers to are gone: a resumed run could not return them
    return state


_INIT_LOCK = threading.Lock()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


@dataclass
class _Fit:
    """One job's training loop state: what the loop reads and what it has learnt so far (restored on resume)."""
    model: nn.Module
    arch: ArchSpec
    data: SpecialistData
    recipe: Recipe                     # this architecture's (arch_recipe)
    rt: "Runtime"
    optimizer: torch.optim.Optimizer
    scheduler: object
    sampler: EpochSampler
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    y_train: torch.Tensor
    placement: dict[str, str]
    decode_s: float
    history: list[dict] = field(default_factory=list)
    best_val: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    start_epoch: int = 0
    status: str = "trained"
    stopped_early: bool = False
    train_s: float = 0.0


def _prepare(model: nn.Module, arch: ArchSpec, data: SpecialistData, recipe: Recipe, device, img_size: int,
             resume: dict | None) -> _Fit:
    """Model on the device, optimizer, cosine schedule, decoded datasets and loaders; the resumed state applied."""
    rt = Runtime(device, recipe, *input_stats(model, arch))
    if rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    recipe = arch_recipe(arch, recipe)  # this architecture's lr and epochs (the fingerprint has its overrides)
    # the fused kernel does the whole update in one pass: on a CPU it is ~7x faster than the per-tensor loop, which
    # otherwise costs as much as forward + backward of a tiny model
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                  fused=rt.device.type in ("cpu", "cuda"))
    from timm.scheduler import CosineLRScheduler
    scheduler = CosineLRScheduler(optimizer, t_initial=recipe.max_epochs, lr_min=recipe.min_lr,
                                  cycle_limit=recipe.cycle_limit, warmup_t=recipe.warmup_epochs,
                                  warmup_lr_init=recipe.min_lr, t_in_epochs=True)
    t_decode = time.perf_counter()
    ds, placement = make_datasets(data, img_size, recipe, rt.device)
    t_decode = time.perf_counter() - t_decode
    n_train = len(data.train)
    sampler = EpochSampler(n_train, recipe.seed)
    # BatchNorm cannot train on a final batch of one sample
    train_loader = make_loader(ds["train"], recipe.batch_size, sampler, recipe.num_workers, rt.pin,
                               drop_last=n_train % recipe.batch_size == 1 and n_train > 1)
    eval_loaders = {s: make_loader(ds[s], recipe.eval_batch_size, None, recipe.num_workers, rt.pin) for s in SPLITS}
    fit = _Fit(model, arch, data, recipe, rt, optimizer, scheduler, sampler, train_loader, eval_loaders,
               torch.from_numpy(data.train.targets).to(rt.device), placement, t_decode)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        torch.set_rng_state(resume["rng_cpu"])
        fit.history, fit.best_val = json.loads(resume["history"]), resume["best_val"]
        fit.best_epoch, fit.bad_epochs, fit.start_epoch = resume["best_epoch"], resume["bad_epochs"], \
            resume["epoch"] + 1
        fit.status = "resumed"
    scheduler.step(fit.start_epoch)
    return fit


def _epoch(fit: _Fit, epoch: int) -> dict:
    """Train one epoch and validate; returns its history row."""
    t0 = time.perf_counter()
    fit.model.train()
    fit.sampler.set_epoch(epoch)
    loss_sum = torch.zeros((), device=fit.rt.device)
    seen = 0
    for x, idx in fit.train_loader:
        y = fit.y_train[idx.to(fit.rt.device, non_blocking=True)]
        loss_sum += train_step(fit.model, fit.optimizer, loss_fn_for(fit.data.task_type), fit.rt, x, y) * len(idx)
        seen += len(idx)
    train_loss = float(loss_sum) / max(seen, 1)
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"{fit.data.dataset}/{fit.arch.name}: training loss is {train_loss} at epoch "
                                 f"{epoch}; lower the recipe's lr ({fit.recipe.lr})")
    train_s = time.perf_counter() - t0
    val_logits, _ = evaluate(fit.model, fit.arch, fit.eval_loaders["val"], fit.rt, len(fit.data.val),
                             with_embeddings=False)
    val_loss = _loss_value(fit.data.task_type, val_logits, fit.data.val.targets)
    val_m = classification_metrics(fit.data.task_type, fit.data.val.targets,
                                   probabilities(fit.data.task_type, val_logits), fit.recipe.threshold)
    return {"epoch": epoch, "lr": fit.optimizer.param_groups[0]["lr"], "train_loss": train_loss, "val_loss": val_loss,
            "val_accuracy": val_m["accuracy"], "val_macro_f1": val_m["macro_f1"], "train_images": seen,
            "train_s": train_s, "epoch_s": time.perf_counter() - t0}


def _fit(fit: _Fit, files: JobFiles, card: dict, fingerprint: str) -> None:
    """Epochs until max_epochs or early stopping; keeps the best checkpoint and a resumable state (last.pt)."""
    last_resume_write = time.monotonic()
    t_train = time.perf_counter()
    for epoch in range(fit.start_epoch, fit.recipe.max_epochs):
        row = _epoch(fit, epoch)
        fit.history.append(row)
        part_logger("specialists").info(
            "%s/%s epoch %d/%d: train loss %.4f, val loss %.4f, val accuracy %.4f, val macro-F1 %.4f (%.1f s)",
            fit.data.dataset, fit.arch.name, epoch + 1, fit.recipe.max_epochs, row["train_loss"], row["val_loss"],
            row["val_accuracy"], row["val_macro_f1"], row["epoch_s"])
        if row["val_loss"] < fit.best_val - fit.recipe.min_delta:
            fit.best_val, fit.best_epoch, fit.bad_epochs = row["val_loss"], epoch, 0
            save_checkpoint(fit.model, files.best, {**card, "epoch": epoch, "val_loss": row["val_loss"]})
        else:
            fit.bad_epochs += 1
        fit.scheduler.step(epoch + 1)
        if fit.bad_epochs >= fit.recipe.patience:
            fit.stopped_early = epoch < fit.recipe.max_epochs - 1
            break
        if epoch < fit.recipe.max_epochs - 1 and time.monotonic() - last_resume_write >= fit.recipe.resume_every_s:
            state = {"fingerprint": fingerprint, "epoch": epoch, "model": fit.model.state_dict(),
                     "optimizer": fit.optimizer.state_dict(), "rng_cpu": torch.get_rng_state(),
                     "history": json.dumps(fit.history), "best_val": fit.best_val, "best_epoch": fit.best_epoch,
                     "bad_epochs": fit.bad_epochs}
            atomic_write(files.last, lambda f: torch.save(state, f))
            last_resume_write = time.monotonic()
    fit.train_s = time.perf_counter() - t_train
    if fit.best_epoch < 0:
        raise FloatingPointError(f"{fit.data.dataset}/{fit.arch.name}: no epoch produced a finite validation loss")


def _write_outputs(fit: _Fit, files: JobFiles) -> tuple[dict, dict[str, dict]]:
    """Embeddings of every split, test predictions and metrics from the best checkpoint; (artifacts, split metrics)."""
    fit.model.load_state_dict(safetensors.torch.load_file(str(files.best), device=str(fit.rt.device)))
    artifacts = {"checkpoint": str(files.best)}
    split_metrics = {}
    for s in SPLITS:
        split = getattr(fit.data, s)
        logits, emb = evaluate(fit.model, fit.arch, fit.eval_loaders[s], fit.rt, len(split), with_embeddings=True)
        write_npy(files.embeddings(s), emb)
        write_json_atomic(files.ids(s), split.ids, indent=1)
        artifacts[f"emb_{s}"], artifacts[f"ids_{s}"] = str(files.embeddings(s)), str(files.ids(s))
        probs = probabilities(fit.data.task_type, logits)
        if s != "test":  # what a collaboration corpus shows the generalist as MoED on its training rows
            write_predictions(files.predictions(s), fit.data, probs, fit.recipe.threshold, split=s)
            artifacts[f"predictions_{s}"] = str(files.predictions(s))
        if s == "train":
            continue
        m, notes = classification_metrics_and_notes(fit.data.task_type, split.targets, probs, fit.recipe.threshold,
                                                    fit.data.label_names)
        split_metrics[s] = {"loss": _loss_value(fit.data.task_type, logits, split.targets), **m, "notes": notes}
        if s == "test":
            write_npy(files.probs_test, probs.astype(np.float32))
            write_predictions(files.test_predictions, fit.data, probs, fit.recipe.threshold)
            artifacts["probs_test"], artifacts["test_predictions"] = str(files.probs_test), str(files.test_predictions)
    write_json_atomic(files.history, fit.history, indent=1)
    artifacts["history"] = str(files.history)
    return artifacts, split_metrics


def _result(fit: _Fit, files: JobFiles, init, img_size: int, fingerprint: str) -> JobResult:
    """The job's JobResult (MLflow params, metrics, history, artifacts); writes metrics.json and done.json."""
    artifacts, split_metrics = _write_outputs(fit, files)
    # numbers only (an undefined AUC is None, its reason in the split's "notes" of metrics.json)
    metrics = {f"{s}_{k}": v for s, m in split_metrics.items() for k, v in m.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics.update(best_val_loss=fit.best_val, best_epoch=float(fit.best_epoch), epochs_run=float(len(fit.history)),
                   train_s=fit.train_s, decode_s=fit.decode_s)
    step_s = sum(h["train_s"] for h in fit.history)
    if step_s > 0:  # data loading + steps, excluding validation
        metrics["train_images_per_s"] = sum(h["train_images"] for h in fit.history) / step_s
    metrics.update(model_complexity(fit.model, img_size))   # params_m, gmacs (Table A12)
    data, arch, rt = fit.data, fit.arch, fit.rt
    write_json_atomic(files.metrics, {"metrics": metrics, "splits": split_metrics, "label_names": data.label_names,
                                      "task_type": data.task_type}, indent=1)
    artifacts["metrics"] = str(files.metrics)
    params = {"dataset": data.dataset, "arch": arch.name, "model": arch.full_name, "source": arch.source,
              "overrides": json.dumps(dict(arch.overrides), sort_keys=True), "img_size": str(img_size),
              "num_classes": str(data.num_classes), "task_type": data.task_type,
              "loss": "bce_with_logits" if data.task_type == "multilabel" else "cross_entropy",
              "init": init.init, "weights_sha256": init.weights_sha256 or "", "lr": str(fit.recipe.lr),
              "data_digest": data.content_digest(), "n_train": str(len(data.train)), "n_val": str(len(data.val)),
              "n_test": str(len(data.test)), "device": str(rt.device),
              **{f"data_place.{s}": p for s, p in fit.placement.items()},
              "amp": str(rt.amp_dtype).replace("torch.", "") if rt.amp_dtype else "none",
              **{f"recipe.{k}": str(v) for k, v in fit.recipe.model_dump().items()}}
    result = JobResult(status=fit.status, dataset=data.dataset, arch=arch.name, out_dir=str(files.dir),
                       fingerprint=fingerprint, init=init.init, weights_note=init.note, best_epoch=fit.best_epoch,
                       epochs_run=len(fit.history), stopped_early=fit.stopped_early, params=params, metrics=metrics,
                       history=fit.history, artifacts=artifacts, tags={"gsco.weights": init.note})
    write_json_atomic(files.done, dataclasses.asdict(result), indent=1)
    files.last.unlink(missing_ok=True)
    return result


def train_specialist(data: SpecialistData, arch: ArchSpec, recipe: Recipe, out_dir: Path,
                     device: str | torch.device = "cpu") -> JobResult:
    """Train one specialist with early stopping into `out_dir`; writes checkpoint, predictions, embeddings, metrics,
    done.json (names: JobFiles)."""
    files = JobFiles(Path(out_dir))
    files.dir.mkdir(parents=True, exist_ok=True)
    img_size = arch.img_size or recipe.img_size
    wf = weights_file(arch)
    weights_sha = file_sha256(wf) if wf is not None else None
    fp = job_fingerprint(data, arch, recipe, weights_sha)
    done = load_result(files)
    if done is not None and done.fingerprint == fp:
        return dataclasses.replace(done, status="skipped")
    with _INIT_LOCK:  # in-process jobs on parallel threads share torch's global RNG: seed and draw the init at once
        _seed_all(recipe.seed)
        model, init = build_model(arch, data.num_classes, img_size, weights_sha256=weights_sha)
    resume = _resume_state(files, fp)
    _clear_outputs(files, keep_resume=resume is not None)
    fit = _prepare(model, arch, data, recipe, device, img_size, resume)
    card = {"arch": arch.to_dict(), "num_classes": data.num_classes, "img_size": img_size,
            "task_type": data.task_type, "label_names": data.label_names, "threshold": fit.recipe.threshold,
            "fingerprint": fp, "dataset": data.dataset, "init": init.init}
    _fit(fit, files, card, fp)
    return _result(fit, files, init, img_size, fp)


def predict(checkpoint, arch: ArchSpec, images, device: str | torch.device = "cpu", batch_size: int = 256,
            num_workers: int = 0, ids: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, C), pooled pre-logit embeddings (N, D)) of `images` under a trained specialist checkpoint."""
    card = read_card(checkpoint)
    if card["arch"]["model_name"] != arch.model_name or card["arch"]["overrides"] != arch.to_dict()["overrides"]:
        raise ValueError(f"{checkpoint}: trained as {card['arch']['model_name']} {card['arch']['overrides']}, "
                         f"not as arch {arch.name!r} ({arch.model_name} {dict(arch.overrides)})")
    model = create_model(arch, card["num_classes"], card["img_size"])
    model.load_state_dict(safetensors.torch.load_file(str(checkpoint)))
    rt = Runtime(device, Recipe(), *input_stats(model, arch))
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    ds = ImageDataset(images, card["img_size"], ids, where=str(checkpoint))
    loader = make_loader(ds, batch_size, None, num_workers, rt.pin)
    logits, emb = evaluate(model, arch, loader, rt, len(ds), with_embeddings=True)
    return probabilities(card["task_type"], logits), emb
