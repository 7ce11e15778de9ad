"""The specialist side's typed settings: the training recipe (paper Table A13), per-architecture settings and the
profile's `specialists` section.

    Recipe()                                    # SPEC §6: 224 px, batch 64, AdamW 1e-4, cosine, early stopping 5
    Recipe(img_size=32, max_epochs=12)
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from tasks.ingest.settings import DatasetNames
from tasks.settings import Settings


class Recipe(Settings):
    """Training recipe (paper Table A13 + MedMNIST+ early stopping); the defaults are the paper's."""
    img_size: PositiveInt = 224
    batch_size: PositiveInt = 64
    max_epochs: PositiveInt = 100
    lr: float = Field(1e-4, gt=0)          # AdamW
    weight_decay: float = Field(0.01, ge=0)
    scheduler: Literal["cosine"] = "cosine"   # timm CosineLRScheduler, cycle_limit 1, stepped per epoch
    cycle_limit: PositiveInt = 1
    warmup_epochs: NonNegativeInt = 0
    min_lr: float = Field(0.0, ge=0)
    patience: PositiveInt = 5              # early stopping on validation loss
    min_delta: float = Field(0.0, ge=0)
    eval_batch_size: PositiveInt = 256
    num_workers: NonNegativeInt = 0
    seed: int = 0
    amp: bool = True                       # bf16 autocast; CUDA only
    channels_last: bool = True             # NHWC model and batches (CPU too: ~1/3 off an EfficientNet step there)
    threshold: float = Field(0.5, gt=0, lt=1)   # multi-label decision threshold on sigmoid outputs
    cache_max_bytes: NonNegativeInt = 16 << 30  # decode train/val once into host memory while their uint8 tensors fit
    device_cache_max_bytes: NonNegativeInt = 16 << 30  # CUDA: then keep them on the GPU while they fit this
    resume_every_s: float = Field(120.0, ge=0)  # write last.pt at most this often (model + AdamW state: ~3x weights)


class ArchSettings(Settings):
    """What a profile sets for one architecture (merged over its registry entry, tasks/specialists/architectures.py).

    `overrides` are constructor keyword arguments plus the build and training switches documented in
    tasks/specialists/models.py (e.g. channel_multiplier, kaiming_init, lr_scale, epochs_scale)."""
    weights_path: str | None = None        # local checkpoint (.safetensors, or .pth/.bin read with weights_only=True)
    allow_scratch: bool = False            # no weights present: train from random init (and say so) instead of failing
    pretrained_tag: str | None = None      # another pinned tag than the registry's
    img_size: PositiveInt | None = None    # input size for this architecture when it differs from the recipe's
    overrides: dict[str, Any] = Field(default_factory=dict)


class SpecialistsSettings(Settings):
    """The (architecture x dataset) fan-out: which jobs, on which devices, with which recipe."""
    datasets: DatasetNames = None          # null: every diagnosis benchmark dataset ingested
    architectures: list[str]
    arch_settings: dict[str, ArchSettings] = Field(default_factory=dict)
    recipe: Recipe = Recipe()
    devices: list[NonNegativeInt] = Field(default_factory=list)   # GPU ids; [] = CPU
    cpu_slots: PositiveInt = 1             # jobs at a time without GPUs
    threads: PositiveInt | None = None     # torch threads per job (null: torch's default)
    isolation: Literal["inprocess", "subprocess"] | None = None   # null: subprocess with GPUs, else in process
    concurrency_limit: str | None = None   # Prefect global concurrency limit capping running jobs (slots = GPUs)
    retries: NonNegativeInt = 1

    @field_validator("architectures")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from tasks.specialists.architectures import ARCHS

        unknown = [a for a in v if a not in ARCHS]
        if unknown:
            raise ValueError(f"unknown architecture(s) {unknown}; known: {', '.join(ARCHS)}")
        return v

    @model_validator(mode="after")
    def _settings_for_known(self) -> "SpecialistsSettings":
        from tasks.specialists.architectures import ARCHS

        unknown = [a for a in self.arch_settings if a not in ARCHS]
        if unknown:
            raise ValueError(f"arch_settings: unknown architecture(s) {unknown}; known: {', '.join(ARCHS)}")
        if self.isolation == "inprocess" and self.devices:
            raise ValueError("isolation inprocess cannot pin a GPU: use subprocess (or null) with devices")
        return self

    @property
    def job_isolation(self) -> str:
        """How jobs run: in this process (CPU) or one subprocess each (required to pin a GPU)."""
        return self.isolation or ("subprocess" if self.devices else "inprocess")

    @property
    def slots(self) -> int:
        """Jobs that run at once: one per GPU, else `cpu_slots`."""
        return len(self.devices) or self.cpu_slots
