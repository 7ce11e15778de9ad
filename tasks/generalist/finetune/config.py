"""One fine-tuning run's configuration: the recipe (tasks/generalist/settings.py `FinetuneRecipe`) with its paths,
the peft LoRA config it implies, and the DeepSpeed config with every "auto" filled from it.

    cfg = FinetuneConfig(model_path=..., data_dir=..., tables_dir=..., output_dir=...,
                         **profile.finetune.recipe().model_dump())
    ds = resolve_deepspeed_config(cfg.deepspeed_config, cfg, world_size=16)
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import ClassVar

from pydantic import PositiveInt, ValidationError

from tasks.cache import stage_key
from tasks.generalist.settings import FinetuneRecipe

LORA_SHORT_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
                    "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
DEFAULT_DS_CONFIG = Path(__file__).resolve().parents[3] / "infra" / "deepspeed" / "zero3.json"


class FinetuneConfig(FinetuneRecipe):
    """One fine-tuning run (`run.json`): the recipe, where the base, the corpus shards and the samples tables their
    rows' images are in are, where outputs go."""
    model_path: str
    data_dir: str
    tables_dir: str
    output_dir: str
    deepspeed_config: str = str(DEFAULT_DS_CONFIG)
    stop_after_steps: PositiveInt | None = None   # operators/tests: SIGKILL this process after that step (a crash)

    # Fields that may differ between a run and its resumption (paths and operational switches).
    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = (
        "output_dir", "save_steps", "save_total_limit", "stop_after_steps", "merge", "eval_max_samples",
        "image_cache_row_groups", "deepspeed_config", "data_dir", "tables_dir", "model_path")

    @classmethod
    def from_json(cls, path: str | Path) -> "FinetuneConfig":
        """The config in a JSON file; an error names the file and the bad key."""
        p = Path(path)
        try:
            return cls.model_validate_json(p.read_bytes())
        except (OSError, ValidationError) as e:
            raise ValueError(f"{p}: expected a finetune config JSON object ({e})") from None

    def training_digest(self) -> str:
        """Digest of the fields that change what is trained; a checkpoint only resumes a run with the same digest."""
        fields = self.model_dump(exclude=set(self.RESUMABLE_CHANGES))
        return stage_key("finetune-checkpoint", {}, fields, code=())[:16]


def lora_target_regex(names: list[str]) -> str:
    """A peft `target_modules` regex matching the named projections inside the language model only.

    InternVL's vision tower has q/k/v projections too; a plain name list would put LoRA on them (SPEC §5: the
    vision encoder and projector stay frozen).
    """
    full = [LORA_SHORT_NAMES.get(n, n) for n in names]
    for n in full:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n):
            raise ValueError(f"lora_target_modules: {n!r} is not a module name")
    return r".*\blanguage_model\..*\.(" + "|".join(sorted(set(full))) + r")"


def lora_config(cfg: FinetuneConfig):
    """The peft LoraConfig of the run."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_target_regex(cfg.lora_target_modules), bias="none", task_type="CAUSAL_LM")


def resolve_deepspeed_config(path: str | Path, cfg: FinetuneConfig, world_size: int) -> dict:
    """The DeepSpeed config of `path` with every "auto" filled from the run config; keys starting with "_" dropped."""
    p = Path(path)
    try:
        ds = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: expected a DeepSpeed JSON config ({type(e).__name__}: {e})") from None
    ds = {k: v for k, v in ds.items() if not k.startswith("_")}
    fills = {
        ("train_micro_batch_size_per_gpu",): cfg.per_device_batch_size,
        ("gradient_accumulation_steps",): cfg.gradient_accumulation_steps,
        ("train_batch_size",): cfg.per_device_batch_size * cfg.gradient_accumulation_steps * world_size,
        ("gradient_clipping",): cfg.max_grad_norm,
        ("bf16", "enabled"): cfg.bf16,
        ("optimizer", "params", "lr"): cfg.learning_rate,
        ("optimizer", "params", "weight_decay"): cfg.weight_decay,
    }
    for keys, value in fills.items():
        node = ds
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if node.get(keys[-1], "auto") == "auto":
            node[keys[-1]] = value
        elif keys[-1] in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size") \
                and node[keys[-1]] != value:
            raise ValueError(f"{p}: {'.'.join(keys)} = {node[keys[-1]]} contradicts the run config ({value}); "
                             "set it to \"auto\"")
    autos = [k for k, v in _walk(ds) if v == "auto"]
    if autos:
        raise ValueError(f"{p}: no run-config value for \"auto\" at {autos}")
    if ds.get("scheduler"):
        raise ValueError(f"{p}: the schedule (warmup + cosine) comes from the run config; remove `scheduler`")
    return ds


def _walk(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v
