"""MedDr fine-tuning (SPEC §5): LoRA on an InternVL-family model's language model under DeepSpeed, one rank of it.
recipes/finetune.py is the script every rank runs; the generalist stage launches it (torchrun or DeepSpeed's launcher).

    OMP_NUM_THREADS=1 pytest -q tests/test_finetune.py

A run reads instruction-row Parquet shards, checks every training sample's answer survives tokenisation (data.py),
trains with loss on answer tokens only, and writes into its output folder (data_contracts/layout.py `FinetuneFiles`):

    checkpoints/step-000040/     DeepSpeed checkpoint (trainable params + optimizer + scheduler + client state)
    checkpoints/latest.json      atomic marker of the newest complete checkpoint; a rerun resumes from it
    loss.jsonl                   one line per optimizer step: step, loss, lr, tokens, answer_tokens, elapsed_s
    adapter/                     peft adapter (ZeRO-3 partitions gathered; checked not to be empty or all zero)
    merged/                      base + adapter merged (merge_and_unload) with the processor: a plain checkpoint
    finetune_result.json         what MLflow logs (`result_payload`)
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_contracts.errors import ContractError
from data_contracts.files import file_sha256, temporary_sibling, write_json_atomic
from data_contracts.layout import FinetuneFiles
from tasks.generalist.finetune.adapter import check_adapter, gather_trainable_state, merge_adapter, save_adapter
from tasks.generalist.finetune.config import FinetuneConfig, lora_config, resolve_deepspeed_config
from tasks.generalist.finetune.data import (IGNORE_INDEX, Batches, InstructionData, SampleEncoder, collate,
                                            pixel_values_for)


def load_processor(cfg: FinetuneConfig):
    """The checkpoint's processor (tokenizer, image processor, chat template)."""
    from transformers import AutoProcessor

    from tasks.generalist.backends import resolve_checkpoint

    source, _ = resolve_checkpoint(cfg.model_path, cfg.local_files_only, None)
    return AutoProcessor.from_pretrained(source, trust_remote_code=cfg.trust_remote_code,
                                         local_files_only=cfg.local_files_only)


def load_training_model(cfg: FinetuneConfig):
    """(peft model with LoRA on the language model only, processor, trainable / total parameter counts)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForImageTextToText, InternVLForConditionalGeneration

    from tasks.generalist.backends import resolve_checkpoint

    source, _ = resolve_checkpoint(cfg.model_path, cfg.local_files_only, None)
    kw = dict(trust_remote_code=cfg.trust_remote_code, local_files_only=cfg.local_files_only)
    mconf = AutoConfig.from_pretrained(source, **kw)
    cls = InternVLForConditionalGeneration if mconf.model_type == "internvl" else AutoModelForImageTextToText
    model = cls.from_pretrained(source, config=mconf, dtype=torch.bfloat16 if cfg.bf16 else torch.float32, **kw)
    model.config.use_cache = False
    processor = load_processor(cfg)
    model.requires_grad_(False)
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing needs no grad on the (frozen) inputs and works with ZeRO-3 parameter fetching.
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, lora_config(cfg))
    outside = [n for n, p in model.named_parameters() if p.requires_grad
               and ("lora_" not in n or "language_model" not in n)]
    if outside:
        raise RuntimeError(f"trainable parameters outside the language model's LoRA layers: {outside[:5]}")
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise RuntimeError(f"LoRA matched no module of {cfg.model_path} with targets {cfg.lora_target_modules}")
    total = sum(_numel(p) for p in model.parameters())
    return model, processor, trainable, total


def _numel(p) -> int:
    return int(getattr(p, "ds_numel", 0) or p.numel())


def _dist_env() -> tuple[int, int, int]:
    """(rank, local rank, world size); a plain `python -m recipes.finetune` is a world of one."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"])


@dataclass
class _Rank:
    """What one rank of the run holds besides the model: its place, the data and the encoder."""
    cfg: FinetuneConfig
    files: FinetuneFiles
    rank: int
    world: int
    ds_config: dict
    data: InstructionData
    train_idx: list[int]
    val_idx: list[int]
    processor: Any
    encoder: SampleEncoder
    data_check: dict
    pad_id: int
    t_start: float


def _prepare(cfg: FinetuneConfig) -> _Rank:
    """Distributed environment, DeepSpeed config and data; a bad corpus or a masked answer fails here, in seconds,
    before any model is loaded or partitioned."""
    import torch

    t_start = time.time()
    rank, local_rank, world = _dist_env()
    ds_config = resolve_deepspeed_config(cfg.deepspeed_config, cfg, world)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    torch.manual_seed(cfg.seed)
    data = InstructionData(cfg.data_dir, cfg.tables_dir, cfg.image_cache_row_groups)
    train_idx, val_idx = data.indices("train"), data.indices("val")
    if not train_idx:
        raise ContractError(f"{cfg.data_dir}: no rows with split 'train'")
    processor = load_processor(cfg)
    encoder = SampleEncoder(processor, cfg.max_length)
    data_check = encoder.check_all(data, train_idx + val_idx[:cfg.eval_max_samples])
    pad_id = processor.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = processor.tokenizer.eos_token_id
    return _Rank(cfg, FinetuneFiles(Path(cfg.output_dir)), rank, world, ds_config, data, train_idx, val_idx,
                 processor, encoder, data_check, pad_id, t_start)


def _engine(r: _Rank):
    """(DeepSpeed engine, lr scheduler, HfDeepSpeedConfig or None, trainable / total params, batches, total, warmup)."""
    import deepspeed
    import torch
    from transformers import get_cosine_schedule_with_warmup
    from transformers.integrations import HfDeepSpeedConfig

    if not torch.cuda.is_available() and r.world == 1:
        # DeepSpeed's shared-memory op only speeds up all-reduce between CPU processes; a world of one has nothing
        # to reduce, and building the op is a C++ compile of about a minute on first use.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    # With ZeRO-3 this makes from_pretrained partition weights while loading (no full copy per rank in host RAM).
    hf_ds = HfDeepSpeedConfig(r.ds_config) if r.ds_config.get("zero_optimization", {}).get("stage") == 3 else None
    model, _, n_trainable, n_total = load_training_model(r.cfg)
    cfg = r.cfg
    batches = Batches(len(r.train_idx), cfg.per_device_batch_size, cfg.gradient_accumulation_steps, r.world, cfg.seed)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.num_epochs * batches.steps_per_epoch))
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=r.ds_config,
        lr_scheduler=lambda opt: get_cosine_schedule_with_warmup(opt, warmup, total_steps))
    return engine, scheduler, hf_ds, n_trainable, n_total, batches, total_steps, warmup


def read_marker(files: FinetuneFiles) -> dict | None:
    """The newest complete checkpoint {"tag", "step", "training_digest", "world_size", "files"} (files: sha256 per
    file of the checkpoint folder), or None."""
    return json.loads(files.latest.read_text()) if files.latest.exists() else None


def _resume(r: _Rank, engine) -> int | None:
    """The step the run resumes from (its newest complete checkpoint loaded), or None for a fresh run."""
    marker = read_marker(r.files)
    if marker is None:
        return None
    digest = r.cfg.training_digest()
    if marker.get("training_digest") != digest:
        raise RuntimeError(f"{r.files.dir}: holds checkpoints of a different training config "
                           f"({marker.get('training_digest')} != {digest}); use a new output_dir")
    if marker.get("world_size") != r.world:
        # ZeRO partitions and the per-rank batch order both depend on the number of ranks.
        raise RuntimeError(f"{r.files.dir}: checkpoint was written by {marker.get('world_size')} ranks, this run has "
                           f"{r.world}; resume with the same number of ranks")
    # DeepSpeed unpickles its checkpoint files (torch.load with weights_only=False): only files this run's own
    # marker vouches for, byte for byte, are loaded
    _verify_checkpoint(r.files.checkpoints / marker["tag"], marker.get("files"))
    _, client = engine.load_checkpoint(str(r.files.checkpoints), tag=marker["tag"], load_module_strict=False)
    if client is None or client.get("step") != marker["step"]:
        raise RuntimeError(f"{r.files.checkpoints / marker['tag']}: checkpoint does not load as step {marker['step']}")
    return marker["step"]


def _prepare_outputs(r: _Rank, start_step: int) -> None:
    """Rank 0: output folders, the resolved DeepSpeed config, the loss curve cut back to the resumed step."""
    import torch.distributed as dist

    if r.rank == 0:
        r.files.checkpoints.mkdir(parents=True, exist_ok=True)
        write_json_atomic(r.files.deepspeed_config, r.ds_config)
        curve = r.files.loss_curve
        kept = [ln for ln in curve.read_text().splitlines() if _step_of(ln) <= start_step] if curve.exists() else []
        tmp = temporary_sibling(curve)
        tmp.write_text("".join(ln + "\n" for ln in kept))
        os.replace(tmp, curve)  # steps after the last checkpoint are retrained, so their lines go
    dist.barrier()


def _step_of(line: str) -> float:
    """The step of a loss-curve line; a torn line (a process killed while writing it) sorts after every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _batch(r: _Rank, idx: list[int], device, dtype) -> dict:
    rows = [r.data.text(i) for i in idx]
    pix = pixel_values_for(r.processor, [r.data.image(i) for i in idx], [row["sample_id"] for row in rows])
    batch = {k: v.to(device) for k, v in collate(r.encoder.encode_many(rows), pix, r.pad_id).items()}
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    return batch


def _train_steps(r: _Rank, engine, scheduler, batches: Batches, start_step: int, total_steps: int) -> tuple[int, float]:
    """Optimizer steps start_step..total_steps with the loss curve and periodic checkpoints; (tokens, seconds)."""
    import torch
    import torch.distributed as dist

    cfg, device = r.cfg, engine.device
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    tokens_total, train_time = 0, 0.0
    engine.train()
    for step in range(start_step, total_steps):
        t0 = time.time()
        lr = scheduler.get_last_lr()[0]  # the rate this step's update uses
        loss_sum = torch.zeros(3, dtype=torch.float64)  # loss sum, tokens, answer tokens
        for micro in range(cfg.gradient_accumulation_steps):
            batch = _batch(r, [r.train_idx[i] for i in batches.rows(step, micro, r.rank)], device, dtype)
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
            loss_sum += torch.tensor([float(loss.detach()), float(batch["attention_mask"].sum()),
                                      float((batch["labels"] != IGNORE_INDEX).sum())], dtype=torch.float64)
        reduced = loss_sum.to(device)
        dist.all_reduce(reduced)
        reduced = reduced.cpu()
        step_loss = float(reduced[0]) / (cfg.gradient_accumulation_steps * r.world)
        tokens_total += int(reduced[1])
        train_time += time.time() - t0
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"step {step + 1}: loss is {step_loss}")
        if r.rank == 0:
            with open(r.files.loss_curve, "a") as f:
                f.write(json.dumps({"step": step + 1, "loss": step_loss, "lr": lr, "tokens": int(reduced[1]),
                                    "answer_tokens": int(reduced[2]),
                                    "elapsed_s": round(time.time() - r.t_start, 3)}) + "\n")
        done = step + 1
        if done % cfg.save_steps == 0 and done < total_steps:
            _save_checkpoint(engine, r.files, done, cfg.training_digest(), r.rank, cfg.save_total_limit)
        if cfg.stop_after_steps is not None and done >= cfg.stop_after_steps:
            dist.barrier()
            os.kill(os.getpid(), signal.SIGKILL)  # a crash, not a clean exit: nothing after this step is written
    return tokens_total, train_time


def _checkpoint_digests(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file of a checkpoint folder (as this rank sees it)."""
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _verify_checkpoint(folder: Path, recorded: dict[str, str] | None) -> None:
    """Raise unless every file of `folder` is one the marker recorded, unchanged (files another node wrote and this
    one cannot see are not required)."""
    if recorded is None:
        raise RuntimeError(f"{folder}: the checkpoint marker records no file digests (written by an older version): "
                           "refusing to unpickle it; delete the checkpoints folder to start over")
    for rel, sha in _checkpoint_digests(folder).items():
        if recorded.get(rel) != sha:
            why = "is not one this run wrote" if rel not in recorded else "changed since this run wrote it"
            raise RuntimeError(f"{folder / rel}: {why}; refusing to unpickle it (delete the checkpoints folder to "
                               "start over)")


def _save_checkpoint(engine, files: FinetuneFiles, step: int, digest: str, rank: int, keep: int) -> None:
    """Save a DeepSpeed checkpoint tagged by step, then (after every rank finished) move the marker atomically."""
    import torch.distributed as dist

    tag = f"step-{step:06d}"
    engine.save_checkpoint(str(files.checkpoints), tag=tag, client_state={"step": step, "training_digest": digest},
                           save_latest=False, exclude_frozen_parameters=True)
    dist.barrier()  # a marker must never point at a checkpoint some rank is still writing
    if rank == 0:
        write_json_atomic(files.latest, {"tag": tag, "step": step, "training_digest": digest,
                                         "world_size": dist.get_world_size(),
                                         "files": _checkpoint_digests(files.checkpoints / tag)})
        tags = sorted(d.name for d in files.checkpoints.iterdir() if d.is_dir() and d.name.startswith("step-"))
        for t in tags[:-keep] if keep > 0 else []:
            if t != tag:
                shutil.rmtree(files.checkpoints / t, ignore_errors=True)
    dist.barrier()


def _evaluate(r: _Rank, engine) -> float | None:
    """Mean answer-token loss over up to `eval_max_samples` val rows (every rank runs the same number of batches)."""
    import torch
    import torch.distributed as dist

    cfg, device = r.cfg, engine.device
    per = cfg.per_device_batch_size * r.world
    n = min(len(r.val_idx), cfg.eval_max_samples) // per * per
    if n == 0:
        return None
    engine.eval()
    acc = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, n, per):
            lo = start + r.rank * cfg.per_device_batch_size
            batch = _batch(r, r.val_idx[lo:lo + cfg.per_device_batch_size], device,
                           torch.bfloat16 if cfg.bf16 else torch.float32)
            n_sup = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            acc += torch.tensor([float(engine(**batch).loss) * n_sup, n_sup], dtype=torch.float64)
    acc = acc.to(device)
    dist.all_reduce(acc)
    engine.train()
    return float(acc[0] / acc[1]) if float(acc[1]) else None


def train(cfg: FinetuneConfig) -> dict:
    """Run (or resume) fine-tuning on this rank; returns the result dict (also written to finetune_result.json)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
    import torch.distributed as dist
    from transformers.integrations import unset_hf_deepspeed_config

    r = _prepare(cfg)
    engine, scheduler, hf_ds, n_trainable, n_total, batches, total_steps, warmup = _engine(r)
    resumed_from = _resume(r, engine)
    start_step = resumed_from or 0
    _prepare_outputs(r, start_step)
    tokens, train_time = _train_steps(r, engine, scheduler, batches, start_step, total_steps)
    val_loss = _evaluate(r, engine)
    if start_step < total_steps:
        _save_checkpoint(engine, r.files, total_steps, cfg.training_digest(), r.rank, cfg.save_total_limit)
    state = gather_trainable_state(engine.module)
    result: dict[str, Any] = {}
    if r.rank == 0:
        save_adapter(engine.module, state, r.files.adapter)
        curve = [json.loads(ln) for ln in r.files.loss_curve.read_text().splitlines() if ln]
        result = {"status": "finished", "total_steps": total_steps, "start_step": start_step,
                  "resumed_from_step": resumed_from, "world_size": r.world, "trainable_params": n_trainable,
                  "total_params": n_total, "trainable_fraction": n_trainable / max(n_total, 1),
                  "train_rows": len(r.train_idx), "val_rows": len(r.val_idx), "data_check": r.data_check,
                  "steps_per_epoch": batches.steps_per_epoch, "warmup_steps": warmup,
                  "first_loss": curve[0]["loss"] if curve else None,
                  "final_loss": curve[-1]["loss"] if curve else None, "val_loss": val_loss,
                  "tokens_this_run": tokens, "tokens_per_s_this_run": tokens / train_time if train_time else None,
                  "adapter": {"path": str(r.files.adapter), **check_adapter(r.files.adapter, trained=total_steps > 0)},
                  "training_digest": cfg.training_digest(), "config": cfg.model_dump(), "deepspeed_config": r.ds_config}
    dist.barrier()
    del engine, state
    if hf_ds is not None:
        del hf_ds
        unset_hf_deepspeed_config()  # the merge below loads a plain, unpartitioned model
    dist.destroy_process_group()
    if r.rank == 0:
        if cfg.merge:
            result["merged"] = merge_adapter(cfg.model_path, r.files.adapter, r.files.merged, bf16=cfg.bf16,
                                             trust_remote_code=cfg.trust_remote_code,
                                             local_files_only=cfg.local_files_only)
        result["wall_s"] = round(time.time() - r.t_start, 3)
        write_json_atomic(r.files.result, result)
    return result


def result_payload(files: FinetuneFiles) -> dict:
    """{"params", "metrics", "metric_history", "artifacts", "tags"} of a finished run, for the stage to log."""
    if not files.result.is_file():
        raise FileNotFoundError(f"{files.result}: no finished fine-tuning run in {files.dir}")
    r = json.loads(files.result.read_text())
    cfg = r["config"]
    params = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in cfg.items()
              if k not in ("output_dir", "stop_after_steps")}
    params.update(world_size=r["world_size"], total_steps=r["total_steps"], warmup_steps=r["warmup_steps"],
                  zero_stage=r["deepspeed_config"].get("zero_optimization", {}).get("stage"))
    metrics = {k: r[k] for k in ("first_loss", "final_loss", "val_loss", "trainable_params", "total_params",
                                 "trainable_fraction", "tokens_per_s_this_run", "wall_s") if r.get(k) is not None}
    metrics["answer_tokens_checked"] = r["data_check"]["answer_tokens"]
    metrics["truncated_samples"] = r["data_check"]["truncated_samples"]
    if r.get("merged"):
        metrics["merged_max_abs_delta"] = r["merged"]["merged_max_abs_delta"]
    history = []
    for ln in files.loss_curve.read_text().splitlines():
        if ln:
            row = json.loads(ln)
            history += [{"key": k, "value": row[k], "step": row["step"]} for k in ("loss", "lr", "tokens")]
    artifacts = {"adapter": r["adapter"]["path"], "loss_curve": str(files.loss_curve),
                 "deepspeed_config": str(files.deepspeed_config), "result": str(files.result)}
    if r.get("merged"):
        artifacts["merged"] = r["merged"]["path"]
    tags = {"adapter_digest": r["adapter"]["digest"], "training_digest": r["training_digest"],
            "resumed_from_step": str(r["resumed_from_step"])}
    return {"params": params, "metrics": metrics, "metric_history": history, "artifacts": artifacts, "tags": tags}
