"""The ten specialist architectures of SPEC §6 / paper Table A12, with their pretrained tags pinned, and how a
profile's per-architecture settings apply to them.

    arch = arch_spec("resnet18", profile.specialists.arch_settings["resnet18"])
    recipe = arch_recipe(arch, profile.specialists.recipe)     # this architecture's lr and epochs

Pure data (no model library is imported): models are built in tasks/specialists/models.py. Weights are never
downloaded: a profile sets `weights_path` (e.g. the `model.safetensors` of hf.co/timm/<model>.<tag>) or
`allow_scratch`.
"""
from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, PositiveInt

from tasks.settings import Settings
from tasks.specialists.settings import ArchSettings, Recipe

# Not model settings: the recipe's lr and min_lr, and its max_epochs, are multiplied by these for the architecture
# (arch_recipe). From scratch, BatchNorm CNNs want a several times larger AdamW step than ViTs and BN-free AlexNet
# tolerate, and tiny ViTs (4 tokens, a tenth of a second per epoch) need several times the CNNs' epochs to learn
# ChestMNIST's 14 labels. They ride in `overrides` so that profiles pass them through as they are and the job
# fingerprint covers them.
TRAINING_OVERRIDES = ("lr_scale", "epochs_scale")


class ArchSpec(Settings):
    """One specialist architecture: where it comes from, which pretrained weights it expects, and size overrides."""
    name: str
    source: Literal["timm", "torchvision"]
    model_name: str                        # timm / torchvision model name, without the tag
    pretrained_tag: str | None = None      # pinned weights tag (timm tag, or torchvision weights enum name)
    weights_path: str | None = None        # local checkpoint (.safetensors, or .pth/.bin read with weights_only=True)
    allow_scratch: bool = False            # no weights present: train from random init (and say so) instead of failing
    overrides: dict[str, Any] = Field(default_factory=dict)  # constructor kwargs + switches (specialists/models.py)
    img_size: PositiveInt | None = None    # input size for this architecture when it differs from the recipe's

    @property
    def full_name(self) -> str:
        """`model_name.tag` (timm's spelling), or the bare model name when no tag is pinned."""
        return f"{self.model_name}.{self.pretrained_tag}" if self.pretrained_tag else self.model_name

    def to_dict(self) -> dict:
        """A JSON-ready dict (overrides' tuples become lists)."""
        return self.model_dump(mode="json")


ARCHS: dict[str, ArchSpec] = {a.name: a for a in [
    ArchSpec(name="vgg16", source="timm", model_name="vgg16", pretrained_tag="tv_in1k"),
    ArchSpec(name="alexnet", source="torchvision", model_name="alexnet", pretrained_tag="IMAGENET1K_V1"),
    ArchSpec(name="resnet18", source="timm", model_name="resnet18", pretrained_tag="a1_in1k"),
    ArchSpec(name="densenet121", source="timm", model_name="densenet121", pretrained_tag="ra_in1k"),
    ArchSpec(name="efficientnet_b4", source="timm", model_name="efficientnet_b4", pretrained_tag="ra2_in1k"),
    ArchSpec(name="vit_b16", source="timm", model_name="vit_base_patch16_224", pretrained_tag="augreg2_in21k_ft_in1k"),
    ArchSpec(name="clip_vit_b16", source="timm", model_name="vit_base_patch16_clip_224", pretrained_tag="openai"),
    ArchSpec(name="eva02_vit_b16", source="timm", model_name="eva02_base_patch16_clip_224", pretrained_tag="merged2b"),
    ArchSpec(name="dino_vit_b16", source="timm", model_name="vit_base_patch16_224", pretrained_tag="dino"),
    ArchSpec(name="sam_vit_b16", source="timm", model_name="samvit_base_patch16", pretrained_tag="sa1b"),
]}


def arch_spec(name: str, settings: ArchSettings | None = None) -> ArchSpec:
    """The ArchSpec of `name` with a profile's settings for it (overrides, img_size, weights, allow_scratch) applied."""
    if name not in ARCHS:
        raise KeyError(f"unknown specialist architecture {name!r}; known: {sorted(ARCHS)}")
    base, s = ARCHS[name], settings or ArchSettings()
    return base.model_copy(update={
        "overrides": {**base.overrides, **s.overrides}, "img_size": s.img_size or base.img_size,
        "weights_path": s.weights_path or base.weights_path, "allow_scratch": s.allow_scratch or base.allow_scratch,
        "pretrained_tag": s.pretrained_tag or base.pretrained_tag})


def _positive_override(arch: ArchSpec, key: str) -> float:
    value = arch.overrides.get(key, 1.0)
    try:
        scale = float(value)
    except (TypeError, ValueError):
        scale = math.nan
    if not scale > 0:
        raise ValueError(f"arch {arch.name!r}: {key} must be a number > 0, got {value!r}")
    return scale


def lr_scale_of(arch: ArchSpec) -> float:
    """The factor on the recipe's lr for `arch` (its `lr_scale` override, default 1); must be positive."""
    return _positive_override(arch, "lr_scale")


def arch_recipe(arch: ArchSpec, recipe: Recipe) -> Recipe:
    """`recipe` as `arch` trains with it: lr and min_lr times its lr_scale, max_epochs times its epochs_scale
    (rounded, at least 1); warmup and patience stay as the recipe sets them."""
    lr_scale, epochs_scale = lr_scale_of(arch), _positive_override(arch, "epochs_scale")
    if lr_scale == 1.0 and epochs_scale == 1.0:
        return recipe
    return recipe.model_copy(update={"lr": recipe.lr * lr_scale, "min_lr": recipe.min_lr * lr_scale,
                                     "max_epochs": max(1, round(recipe.max_epochs * epochs_scale))})
