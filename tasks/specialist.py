"""Specialists (SPEC §6): build the ten architectures, train one (dataset, architecture) job, reuse it for prediction.

    OMP_NUM_THREADS=1 pytest -q tests/test_specialist.py
    python benchmarks/specialist_throughput.py --tiny        # same data path and train step, timed

    result = train_specialist(data, ARCHS["resnet18"], Recipe(), out_dir=Path("outputs/specialists/ham10000/resnet18"))
    probs, emb = predict(out_dir / "best.safetensors", ARCHS["resnet18"], images)

One job writes, under `out_dir`: `best.safetensors` (best-by-validation-loss weights; its metadata holds the model card
that `predict` needs), `test_predictions.jsonl`, `probs_test.npy`, `emb_{train,val,test}.npy` + `ids_{split}.json`
(pooled pre-logit features of the best checkpoint), `metrics.json`, `history.json`, and `done.json` last. Every file is
written to a temporary name and renamed, so a reader that waits for `done.json` never sees a half-written output; a
rerun with the same fingerprint (data digest, architecture, weights digest, recipe) returns the recorded result, and a
job killed mid-training resumes from `last.pt`, a per-epoch training state, or starts over when the inputs changed.

Real data path (the one the benchmark times): encoded PNG/JPEG bytes (the canonical table's `image` column) or uint8
arrays -> `ImageDataset` decodes, converts to L or RGB and resizes (bilinear) in `Recipe.num_workers` DataLoader
workers -> train and val, read every epoch, are decoded once into a uint8 tensor (one channel for all-grayscale sets;
`CachedImages`, fetched a whole batch per index operation) kept on the GPU while they fit
`Recipe.device_cache_max_bytes`, else in host memory while they fit `Recipe.cache_max_bytes`, else decoded again each
epoch (`make_datasets`) -> uint8 batches reach the device, where grayscale is broadcast to 3 channels and mean/std
normalisation runs (a quarter of float32's host-to-device traffic) -> `train_step` (bf16 autocast, channels_last).

Only torch, timm, torchvision, numpy, pillow and safetensors are imported at module level (the GPU benchmark machine
has no polars); scikit-learn is imported where metrics are computed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import io
import json
import math
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from data_contracts.errors import DataError

CODE_VERSION = 2  # bump when a change alters what a finished job would produce: old done.json markers stop matching
SPECIALIST_TASK_TYPES = ("binary", "multiclass", "multilabel")
SPLIT_NAMES = ("train", "val", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCRATCH_NOTE = "weights absent: trained from scratch"


# ----------------------------------------------------------------------------------------------------------------------
# Architectures
# ----------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArchSpec:
    """One specialist architecture: where it comes from, which pretrained weights it expects, and size overrides."""
    name: str
    source: str                        # "timm" | "torchvision"
    model_name: str                    # timm / torchvision model name, without the tag
    pretrained_tag: str | None = None  # pinned weights tag (timm tag, or torchvision weights enum name)
    weights_path: str | None = None    # local checkpoint (.safetensors, or .pth/.bin read with weights_only=True)
    allow_scratch: bool = False        # no weights present: train from random init (and say so) instead of failing
    overrides: Mapping[str, Any] = field(default_factory=dict)  # constructor kwargs (the tiny profile's small sizes)
    img_size: int | None = None        # input size for this architecture when it differs from the recipe's

    def __post_init__(self):
        if self.source not in ("timm", "torchvision"):
            raise ValueError(f"arch {self.name!r}: source {self.source!r}, expected 'timm' or 'torchvision'")
        object.__setattr__(self, "overrides", dict(self.overrides))

    @property
    def full_name(self) -> str:
        """`model_name.tag` (timm's spelling), or the bare model name when no tag is pinned."""
        return f"{self.model_name}.{self.pretrained_tag}" if self.pretrained_tag else self.model_name

    def to_dict(self) -> dict:
        """A JSON-ready dict (overrides' tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ArchSpec":
        """An ArchSpec from a profile/config mapping; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - names
        if extra:
            raise ValueError(f"arch spec {d.get('name', '?')!r}: unknown keys {sorted(extra)}; expected {sorted(names)}")
        return cls(**d)


# The ten architectures of SPEC §6 / paper Table A12 at full size, with their pretrained tags pinned. Weights are never
# downloaded: a profile sets `weights_path` (e.g. the `model.safetensors` of hf.co/timm/<model>.<tag>) or allow_scratch.
ARCHS: dict[str, ArchSpec] = {a.name: a for a in [
    ArchSpec("vgg16", "timm", "vgg16", "tv_in1k"),
    ArchSpec("alexnet", "torchvision", "alexnet", "IMAGENET1K_V1"),
    ArchSpec("resnet18", "timm", "resnet18", "a1_in1k"),
    ArchSpec("densenet121", "timm", "densenet121", "ra_in1k"),
    ArchSpec("efficientnet_b4", "timm", "efficientnet_b4", "ra2_in1k"),
    ArchSpec("vit_b16", "timm", "vit_base_patch16_224", "augreg2_in21k_ft_in1k"),
    ArchSpec("clip_vit_b16", "timm", "vit_base_patch16_clip_224", "openai"),
    ArchSpec("eva02_vit_b16", "timm", "eva02_base_patch16_clip_224", "merged2b"),
    ArchSpec("dino_vit_b16", "timm", "vit_base_patch16_224", "dino"),
    ArchSpec("sam_vit_b16", "timm", "samvit_base_patch16", "sa1b"),
]}

_TINY_VIT = {"depth": 2, "embed_dim": 64, "num_heads": 2}
# What the tiny profile changes per architecture (merge into ARCHS[name] with dataclasses.replace): the real model
# family and block structure, narrower or shallower so that all ten train on a CPU in minutes. AlexNet's three stride-2
# max-pools need >= 63 px, so it trains at 64 px. Measured with benchmarks/tiny_specialists.py.
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    # 13 conv layers at 1/4 width (16..128), each followed by BatchNorm (timm's vgg16_bn layout: without it the
    # scratch model cannot learn ChestMNIST's multi-label task in the tiny budget); the conv-MLP's hidden layer 64
    "vgg16": {"overrides": {"channel_multiplier": 0.25, "mlp_ratio": 1 / 64, "norm_layer": "batchnorm2d"}},
    # 5 conv + 3 FC with FC hidden width 512 (not 4096); without BatchNorm it needs He init (kaiming_init) to learn
    # at all from scratch, trains at half the recipe's step, and without dropout, which keeps the short run from learning
    "alexnet": {"overrides": {"fc_hidden_width": 512, "dropout": 0.0, "kaiming_init": True, "lr_scale": 0.5},
                "img_size": 64},
    # residual BatchNorm CNNs learn ChestMNIST's 15-label task in 12 epochs only at 8x the step the ViTs tolerate
    "resnet18": {"overrides": {"channels": [16, 32, 64, 128], "stem_width": 16, "lr_scale": 8}},  # 18 layers, 1/4 width
    "densenet121": {"overrides": {"growth_rate": 8, "lr_scale": 8}},  # 121 layers (6, 12, 24, 16), growth 8 (not 32)
    # b4's depth (32 MBConv blocks, depth multiplier 1.8) at width multiplier 0.5 instead of 1.4, at 24 px (its cost is
    # per-layer overhead more than pixels); residual blocks start as identities, a zero head, BatchNorm running stats
    # that follow the fast-moving weights of a short run
    "efficientnet_b4": {"overrides": {"channel_multiplier": 0.5, "depth_multiplier": 1.8, "zero_init_last": True,
                                      "head_init_scale": 0.0, "bn_momentum": 0.5, "lr_scale": 8}, "img_size": 24},
    # the ViTs see 4 tokens at 32 px and take ~0.1 s an epoch: they get 4x the epochs (EVA-02 6x), without which
    # they stay at the label prior on ChestMNIST's 14 labels (macro-F1 ~0); pre-norm CLIP and EVA-02 blocks learn
    # DermNet's 5 classes at twice the step of plain ViT-B
    "vit_b16": {"overrides": {**_TINY_VIT, "epochs_scale": 4}},
    "clip_vit_b16": {"overrides": {**_TINY_VIT, "lr_scale": 2, "epochs_scale": 4}},
    "eva02_vit_b16": {"overrides": {**_TINY_VIT, "lr_scale": 2, "epochs_scale": 6}},
    "dino_vit_b16": {"overrides": {**_TINY_VIT, "epochs_scale": 4}},
    # windowed blocks with one global block and a narrow neck, as in SAM's encoder
    "sam_vit_b16": {"overrides": {**_TINY_VIT, "window_size": 2, "global_attn_indexes": [1], "neck_chans": 32,
                                  "epochs_scale": 4}},
}
# The tiny profile's training recipe (infra/profiles/tiny.yaml `specialists.recipe`): enough AdamW steps on ~96
# images for every architecture trained from scratch to learn the look-alike classes.
TINY_RECIPE: dict[str, Any] = {"img_size": 32, "batch_size": 16, "max_epochs": 12, "patience": 6, "lr": 5e-4,
                               "weight_decay": 0.05, "warmup_epochs": 2, "min_lr": 5e-5, "eval_batch_size": 128}


def tiny_arch(name: str) -> ArchSpec:
    """ARCHS[name] with TINY_OVERRIDES applied and allow_scratch on (the tiny profile has no weights)."""
    return dataclasses.replace(ARCHS[name], allow_scratch=True, **TINY_OVERRIDES[name])


def tiny_recipe(**changes) -> "Recipe":
    """The tiny profile's Recipe (TINY_RECIPE, with `changes` applied)."""
    return Recipe.from_dict({**TINY_RECIPE, **changes})


def constant_baseline(task_type: str, targets: np.ndarray, num_classes: int) -> float:
    """The best score a constant predictor gets on `targets`: accuracy max(majority share, 1/classes) for single-label
    tasks, macro-F1 for multi-label (per label, predicting 'positive' everywhere scores 2p/(1+p) at prevalence p)."""
    t = np.asarray(targets)
    if task_type == "multilabel":
        p = t.reshape(len(t), -1).astype(np.float64).mean(0)
        return float(np.mean(2 * p / (1 + p)))
    return float(max(np.bincount(t.astype(np.int64), minlength=num_classes).max() / len(t), 1.0 / num_classes))


@dataclass
class InitReport:
    """How a model's weights were initialised: 'pretrained' (from which file, what was skipped) or 'scratch'."""
    init: str
    note: str
    weights_path: str | None = None
    weights_sha256: str | None = None
    loaded: int = 0
    skipped_for_head: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def _timm_fixed_input(arch: ArchSpec) -> bool:
    """Whether the timm model is built for one input size (ViT-family position grids), so img_size must be passed."""
    cfg = timm.models.get_pretrained_cfg(arch.full_name, allow_unregistered=True)
    return bool(cfg is not None and getattr(cfg, "fixed_input_size", False))


# Override keys that the build code below handles itself, because the library's constructor fixes or lacks them:
#   channel_multiplier (+ depth_multiplier): timm efficientnet_bN (timm's own generator arguments; give both, the
#       registered b4 passes 1.4 / 1.8) and timm vgg* (every conv width of timm's cfg scaled, rounded to 8)
#   zero_init_last: timm efficientnet_bN: zero the last BatchNorm scale of every residual block, so each block starts
#       as the identity (what timm's ResNet does by default); a 32-block MBConv stack trained from scratch on a few
#       hundred images barely generalises without it
#   head_init_scale: any model: multiply the freshly initialised classifier's weight and bias (0 starts every class
#       at the same logit; timm's efficientnet head init is +-1/sqrt(num_classes): large logits for a few classes)
#   fc_hidden_width: torchvision models with an MLP `classifier` (AlexNet, VGG): width of its hidden Linear layers
#   kaiming_init: any model: re-initialise every Conv2d and Linear weight with He (Kaiming) normal, fan-in, ReLU gain,
#       and zero their biases. torchvision's AlexNet keeps PyTorch's default layer init, which shrinks the signal over
#       its 8 BatchNorm-free ReLU layers: from scratch it never gets below the label prior on ChestMNIST (train loss
#       stuck at 0.48, macro-F1 0), while with He init it reaches macro-F1 ~0.8 in the same 12 epochs
#   norm_layer as a name (timm models): resolved by timm.layers.get_norm_layer, e.g. "batchnorm2d" (VGG16 -> VGG16-BN)
#   lr_scale, epochs_scale: not model settings (TRAINING_OVERRIDES): train_specialist multiplies the recipe's lr and
#       min_lr, and its max_epochs, by them for this architecture (arch_recipe). From scratch, BatchNorm CNNs want a
#       several times larger AdamW step than ViTs and BN-free AlexNet tolerate, and the tiny ViTs (4 tokens, a tenth
#       of a second per epoch) need several times the CNNs' epochs to learn ChestMNIST's 14 labels. They ride in
#       `overrides` so that profiles pass them through as they are and the job fingerprint covers them
TRAINING_OVERRIDES = ("lr_scale", "epochs_scale")
BUILD_OVERRIDES = ("channel_multiplier", "depth_multiplier", "zero_init_last", "head_init_scale", "fc_hidden_width",
                   "kaiming_init", "norm_layer", *TRAINING_OVERRIDES)


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


def arch_recipe(arch: ArchSpec, recipe: "Recipe") -> "Recipe":
    """`recipe` as `arch` trains with it: lr and min_lr times its lr_scale, max_epochs times its epochs_scale
    (rounded, at least 1); warmup and patience stay as the recipe sets them."""
    lr_scale, epochs_scale = lr_scale_of(arch), _positive_override(arch, "epochs_scale")
    if lr_scale == 1.0 and epochs_scale == 1.0:
        return recipe
    return dataclasses.replace(recipe, lr=recipe.lr * lr_scale, min_lr=recipe.min_lr * lr_scale,
                               max_epochs=max(1, round(recipe.max_epochs * epochs_scale)))


def _create_timm(arch: ArchSpec, num_classes: int, in_chans: int, kwargs: dict) -> nn.Module:
    effnet = arch.model_name.startswith("efficientnet_b")
    cm, dm = kwargs.pop("channel_multiplier", None), kwargs.pop("depth_multiplier", None)
    zero_last = kwargs.pop("zero_init_last", False) if effnet else False  # timm's ResNet takes it itself
    if isinstance(kwargs.get("norm_layer"), str):  # a profile names the layer; timm's constructors take the class
        kwargs["norm_layer"] = timm.layers.get_norm_layer(kwargs["norm_layer"])
    model = _create_timm_model(arch, num_classes, in_chans, kwargs, cm, dm)
    if zero_last and _zero_init_residual_ends(model) == 0:
        raise ValueError(f"arch {arch.name!r}: zero_init_last found no residual block in {arch.model_name}")
    return model


def _zero_init_residual_ends(model: nn.Module) -> int:
    """Zero the scale of the last BatchNorm in every block with a skip connection; returns how many blocks."""
    n = 0
    for blk in model.modules():
        if getattr(blk, "has_skip", False):
            norms = [m for m in blk.children() if isinstance(m, nn.BatchNorm2d)]
            if norms:
                nn.init.zeros_(norms[-1].weight)
                n += 1
    return n


def _create_timm_model(arch: ArchSpec, num_classes: int, in_chans: int, kwargs: dict, cm, dm) -> nn.Module:
    # the tag selects the pinned pretrained config (mean/std, classifier name) without fetching weights
    common = dict(pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if cm is None and dm is None:
        return timm.create_model(arch.full_name, **common)
    common["pretrained_cfg"] = arch.pretrained_tag
    if arch.model_name.startswith("efficientnet_b"):
        if cm is None or dm is None:
            raise ValueError(f"arch {arch.name!r}: give both channel_multiplier and depth_multiplier for "
                             f"{arch.model_name} (its registered constructor fixes both)")
        from timm.models.efficientnet import _gen_efficientnet  # the generator behind timm's efficientnet_bN
        return _gen_efficientnet(arch.model_name, channel_multiplier=float(cm), depth_multiplier=float(dm), **common)
    from timm.models import vgg as timm_vgg
    if arch.model_name in timm_vgg.cfgs and dm is None:
        cfg = [v if v == "M" else timm.layers.make_divisible(v * float(cm), 8) for v in timm_vgg.cfgs[arch.model_name]]
        return timm.models.build_model_with_cfg(timm_vgg.VGG, arch.model_name, model_cfg=cfg, **common)
    raise ValueError(f"arch {arch.name!r}: overrides channel_multiplier/depth_multiplier are supported for timm "
                     f"efficientnet_bN (both) and vgg (channel_multiplier only), not {arch.model_name}")


def _narrow_classifier(model: nn.Module, arch: ArchSpec, width: int) -> None:
    """Replace the hidden Linear layers of a torchvision `classifier` MLP by `width`-wide ones (the head follows)."""
    linears = [i for i, m in enumerate(getattr(model, "classifier", [])) if isinstance(m, nn.Linear)]
    if len(linears) < 2 or int(width) < 1:
        raise ValueError(f"arch {arch.name!r}: fc_hidden_width={width!r} needs a positive width and a torchvision "
                         f"model whose classifier has hidden Linear layers; {arch.model_name} has {len(linears)}")
    for n, i in enumerate(linears):
        old = model.classifier[i]
        model.classifier[i] = nn.Linear(old.in_features if n == 0 else int(width),
                                        old.out_features if n == len(linears) - 1 else int(width))


def create_model(arch: ArchSpec, num_classes: int, img_size: int, in_chans: int = 3) -> nn.Module:
    """A randomly initialised model of `arch` with a `num_classes` head; nothing is downloaded."""
    kwargs = dict(arch.overrides)
    for key in TRAINING_OVERRIDES:  # training settings (arch_recipe), not the model's
        kwargs.pop(key, None)
    head_scale = kwargs.pop("head_init_scale", None)
    kaiming = bool(kwargs.pop("kaiming_init", False))
    if arch.source == "timm":
        if _timm_fixed_input(arch):
            kwargs["img_size"] = img_size
        model = _create_timm(arch, num_classes, in_chans, kwargs)
    else:
        if in_chans != 3:
            raise ValueError(f"arch {arch.name!r}: torchvision {arch.model_name} takes 3 input channels, got "
                             f"{in_chans}")
        fc_width = kwargs.pop("fc_hidden_width", None)
        model = torchvision.models.get_model(arch.model_name, weights=None, num_classes=num_classes, **kwargs)
        if fc_width is not None:
            _narrow_classifier(model, arch, fc_width)
        min_size = _min_input_size(model)
        if img_size < min_size:
            raise ValueError(f"arch {arch.name!r}: {arch.model_name} needs input of at least {min_size} px, got "
                             f"{img_size}; set the arch's img_size")
    if kaiming:
        _kaiming_init(model)
    if head_scale is not None:
        _scale_head(model, arch, float(head_scale))
    return model


def _kaiming_init(model: nn.Module) -> None:
    """He-normal (fan-in, ReLU) weights and zero biases for every Conv2d and Linear layer of `model`."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _scale_head(model: nn.Module, arch: ArchSpec, scale: float) -> None:
    head = _head_prefixes(model, arch)
    params = [p for k, p in model.named_parameters() if k.startswith(head)]
    if not params:
        raise ValueError(f"arch {arch.name!r}: head_init_scale found no classifier parameters under {head}")
    with torch.no_grad():
        for p in params:
            p.mul_(scale)


def _min_input_size(model: nn.Module) -> int:
    """Smallest square input the torchvision model's feature stack accepts (AlexNet: 63 px)."""
    size = 1
    for m in reversed(list(model.features.modules()) if hasattr(model, "features") else []):
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            s = m.stride if isinstance(m.stride, int) else m.stride[0]
            p = m.padding if isinstance(m.padding, int) else m.padding[0]
            size = (size - 1) * s + k - 2 * p
    return max(size, 1)


def expected_weights_hint(arch: ArchSpec) -> str:
    """Where the pinned pretrained weights of `arch` come from, for error messages and data cards."""
    if arch.source == "timm":
        return f"the model.safetensors of hf.co/timm/{arch.full_name}"
    try:
        w = torchvision.models.get_model_weights(arch.model_name)[arch.pretrained_tag]
        return f"torchvision's {arch.model_name} {arch.pretrained_tag} file {w.url.rsplit('/', 1)[-1]}"
    except (KeyError, ValueError):
        return f"torchvision's {arch.model_name} {arch.pretrained_tag} weights"


def _head_prefixes(model: nn.Module, arch: ArchSpec) -> tuple[str, ...]:
    """State-dict key prefixes of the classifier, which a new label set replaces."""
    if arch.source == "timm":
        cls = model.pretrained_cfg.get("classifier") or "head"
        return tuple(c + "." for c in ((cls,) if isinstance(cls, str) else cls))
    last = len(model.classifier) - 1
    return (f"classifier.{last}.",)


def _timm_filter(model: nn.Module, sd: dict) -> dict:
    """The checkpoint remapped by the timm model module's own filter (CLIP/open_clip layouts, pos-embed resizing)."""
    mod = sys.modules[type(model).__module__]
    for name in ("checkpoint_filter_fn", "_filter_fn", "_filter_torchvision_pretrained"):
        fn = getattr(mod, name, None)
        if callable(fn):
            required = [p for p in inspect.signature(fn).parameters.values() if p.default is inspect.Parameter.empty]
            return fn(sd, model) if len(required) >= 2 else fn(sd)
    return sd


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_file(arch: ArchSpec) -> Path | None:
    """The arch's local weights file when it exists, else None."""
    path = Path(arch.weights_path).expanduser() if arch.weights_path else None
    return path if path is not None and path.is_file() else None


def load_pretrained(model: nn.Module, arch: ArchSpec, path: Path, sha256: str | None = None) -> InitReport:
    """Load a local checkpoint into `model` except its classifier; raises if anything else does not fit."""
    path = Path(path)
    sd = timm.models.load_state_dict(str(path), use_ema=True, weights_only=True)  # safetensors or torch.load
    if arch.source == "timm":
        sd = _timm_filter(model, sd)
    own = model.state_dict()
    head = _head_prefixes(model, arch)
    use, skipped, unexpected, misfit = {}, [], [], []
    for k, v in sd.items():
        if k not in own:
            (skipped if k.startswith(head) else unexpected).append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            if k.startswith(head):
                skipped.append(k)
            else:
                misfit.append(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}")
        else:
            use[k] = v
    missing = [k for k in own if k not in use and not k.startswith(head) and not k.endswith("num_batches_tracked")]
    if misfit or missing:
        raise ValueError(
            f"{path}: weights do not fit arch {arch.name!r} ({arch.full_name}, overrides {dict(arch.overrides)}): "
            f"{len(missing)} tensors missing (e.g. {missing[:3]}), {len(misfit)} of another shape (e.g. {misfit[:3]}); "
            f"expected {expected_weights_hint(arch)}")
    model.load_state_dict(use, strict=False)
    note = (f"pretrained {arch.full_name} from {path}: {len(use)} tensors loaded; new head, skipped {len(skipped)}: "
            f"{skipped}" + (f"; ignored {len(unexpected)} tensors the model lacks: {unexpected[:5]}" if unexpected else ""))
    return InitReport("pretrained", note, str(path), sha256 or _sha256_file(path), len(use), skipped, unexpected)


def build_model(arch: ArchSpec, num_classes: int, img_size: int, in_chans: int = 3,
                weights_sha256: str | None = None) -> tuple[nn.Module, InitReport]:
    """The model with pretrained weights from `arch.weights_path`, or from scratch when allowed; else a clear error."""
    model = create_model(arch, num_classes, img_size, in_chans)
    if (found := weights_file(arch)) is not None:
        return model, load_pretrained(model, arch, found, weights_sha256)
    path = Path(arch.weights_path).expanduser() if arch.weights_path else None
    where = (f"weights_path {path} does not exist" if path is not None else "no weights_path is set")
    if not arch.allow_scratch:
        raise FileNotFoundError(
            f"arch {arch.name!r} ({arch.source} {arch.full_name}): pretrained weights absent ({where}); expected "
            f"{expected_weights_hint(arch)} at weights_path, or set allow_scratch to train from random init")
    return model, InitReport("scratch", SCRATCH_NOTE + (f" ({where})" if path is not None else ""))


def input_stats(model: nn.Module, arch: ArchSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the pinned pretrained weights expect (CLIP and augreg differ from ImageNet's)."""
    if arch.source == "timm":
        cfg = timm.data.resolve_model_data_config(model)
        return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    return IMAGENET_MEAN, IMAGENET_STD


def forward_embed(model: nn.Module, arch: ArchSpec, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, pooled pre-logit embedding) of one batch; logits equal model(x)."""
    if arch.source == "timm":
        # the head runs twice (cheap next to the trunk): timm's get_classifier() is not always the last layer alone
        feats = model.forward_features(x)
        return model.forward_head(feats), model.forward_head(feats, pre_logits=True)
    feats = torch.flatten(model.avgpool(model.features(x)), 1)
    emb = model.classifier[:-1](feats)
    return model.classifier[-1](emb), emb


def embedding_dim(model: nn.Module, arch: ArchSpec) -> int:
    """Width of the pooled pre-logit embedding (the classifier's input features)."""
    if arch.source == "timm":
        return int(getattr(model, "head_hidden_size", None) or model.num_features)
    return int(model.classifier[-1].in_features)


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class Split:
    """One split: sample ids, images (encoded PNG/JPEG bytes or uint8 arrays) and targets (index, or multi-hot rows)."""
    ids: list[str]
    images: Sequence[bytes] | np.ndarray | Sequence[np.ndarray]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class SpecialistData:
    """A diagnosis dataset's three splits, label names and task type; checked on construction."""
    dataset: str
    task_type: str
    label_names: list[str]
    train: Split
    val: Split
    test: Split
    digest: str | None = None  # content digest of the canonical tables, when known (else computed from the arrays)

    def __post_init__(self):
        if self.task_type not in SPECIALIST_TASK_TYPES:
            raise ValueError(f"{self.dataset}: task_type {self.task_type!r}, expected one of {SPECIALIST_TASK_TYPES}")
        c = len(self.label_names)
        if c < 2 or len(set(self.label_names)) != c:
            raise ValueError(f"{self.dataset}: label_names must be >= 2 distinct names, got {self.label_names}")
        if self.task_type == "binary" and c != 2:
            raise ValueError(f"{self.dataset}: binary task needs 2 label names, got {c}")
        for name in SPLIT_NAMES:
            s = getattr(self, name)
            where = f"{self.dataset}/{name}"
            s.ids = [str(i) for i in s.ids]
            s.targets = np.asarray(s.targets)
            if len(s) == 0:
                raise DataError(where, "at least one sample", field="ids")
            if len(s.images) != len(s) or len(s.targets) != len(s):
                raise DataError(where, f"equal lengths of ids ({len(s)}), images ({len(s.images)}) and targets "
                                       f"({len(s.targets)})")
            if len(set(s.ids)) != len(s):
                raise DataError(where, "unique sample ids", field="ids")
            t = s.targets
            if self.task_type == "multilabel":
                if t.ndim != 2 or t.shape[1] != c or not np.isin(t, (0, 1)).all():
                    raise DataError(where, f"multi-hot targets of shape (N, {c}) with 0/1 entries, got shape "
                                           f"{t.shape}", field="targets")
                s.targets = t.astype(np.float32)
            else:
                if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() >= c:
                    bad = int(np.flatnonzero((t < 0) | (t >= c))[0]) if t.ndim == 1 and t.size else None
                    raise DataError(where, f"class indices in [0, {c}) of shape (N,)", row=bad, field="targets")
                s.targets = t.astype(np.int64)
        if self.train.targets.ndim == 1 and len(np.unique(self.train.targets)) < 2:
            raise DataError(f"{self.dataset}/train", "at least two classes present", field="targets")

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def content_digest(self) -> str:
        """`digest` if given, else sha256 over ids, targets and image bytes of all splits (32 hex chars)."""
        if self.digest:
            return self.digest
        h = hashlib.sha256(f"{self.dataset}|{self.task_type}|{json.dumps(self.label_names)}".encode())
        for name in SPLIT_NAMES:
            s = getattr(self, name)
            h.update(name.encode())
            h.update(json.dumps(s.ids).encode())
            h.update(np.ascontiguousarray(s.targets).tobytes())
            for img in s.images:
                if isinstance(img, (bytes, bytearray, memoryview)):
                    h.update(b"b" + bytes(img))
                else:
                    a = np.ascontiguousarray(img)
                    h.update(f"a{a.shape}".encode() + a.tobytes())
        return h.hexdigest()[:32]


def data_from_samples(train, val, test, digest: str | None = None) -> SpecialistData:
    """SpecialistData from the canonical samples table's three split frames (polars/pandas: sample_id, image, ...)."""
    def col(df, name):
        c = df[name]
        return c.to_list() if hasattr(c, "to_list") else list(c)

    first = {k: col(train, k)[0] for k in ("dataset", "task_type", "label_set")}
    label_names = list(first["label_set"])
    index = {n: i for i, n in enumerate(label_names)}
    splits = {}
    for name, df in zip(SPLIT_NAMES, (train, val, test)):
        where = f"{first['dataset']}/{name}"
        ids, labels = col(df, "sample_id"), col(df, "labels")
        for i, ls in enumerate(col(df, "label_set")):
            if list(ls) != label_names:
                raise DataError(where, f"label_set {label_names} in every row", row=i, field="label_set")
        for i, tt in enumerate(col(df, "task_type")):
            if tt != first["task_type"]:
                raise DataError(where, f"task_type {first['task_type']!r} in every row", row=i, field="task_type")
        if first["task_type"] == "multilabel":
            targets = np.zeros((len(ids), len(label_names)), np.float32)
            for i, ls in enumerate(labels):
                for lab in ls:
                    if lab not in index:
                        raise DataError(where, f"labels within {label_names}", row=i, field="labels")
                    targets[i, index[lab]] = 1
        else:
            bad = [i for i, ls in enumerate(labels) if len(ls) != 1 or ls[0] not in index]
            if bad:
                raise DataError(where, f"exactly one label within {label_names}", row=bad[0], field="labels")
            targets = np.array([index[ls[0]] for ls in labels], np.int64)
        splits[name] = Split(ids, col(df, "image"), targets)
    return SpecialistData(first["dataset"], first["task_type"], label_names, digest=digest, **splits)


def decode_image(item, size: int) -> np.ndarray:
    """A (size, size) grayscale or (size, size, 3) RGB uint8 array from encoded bytes or a uint8 array (bilinear)."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        im = Image.open(io.BytesIO(item))
        # JPEG decodes at a reduced DCT scale when the target is much smaller: same result class, far less work
        im.draft("RGB" if im.mode not in ("L", "1") else "L", (size, size))
    else:
        a = np.asarray(item)
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
            raise ValueError(f"array image of dtype {a.dtype} shape {a.shape}, expected uint8 (H, W) or (H, W, 3)")
        im = Image.fromarray(a)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float32)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        im = Image.fromarray(np.clip(a * (255.0 / hi), 0, 255).astype(np.uint8))
    elif im.mode not in ("L", "RGB"):
        im = im.convert("L" if im.mode in ("1", "LA", "P") and _palette_is_gray(im) else "RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im)


def _palette_is_gray(im: Image.Image) -> bool:
    if im.mode in ("1", "LA"):
        return True
    pal = im.getpalette()
    if not pal:
        return True
    p = np.asarray(pal, np.uint8).reshape(-1, 3)
    return bool((p[:, 0] == p[:, 1]).all() and (p[:, 1] == p[:, 2]).all())


class ImageDataset(Dataset):
    """Decodes and resizes one split per item: (uint8 tensor (1|3, S, S), index); errors name the sample."""

    def __init__(self, images, img_size: int, ids: Sequence[str] | None = None, where: str = "images"):
        self.images, self.img_size, self.ids, self.where = images, int(img_size), ids, where

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        try:
            a = decode_image(self.images[i], self.img_size)
        except Exception as e:
            sid = self.ids[i] if self.ids is not None else None
            raise DataError(self.where, f"a decodable PNG/JPEG or uint8 image ({type(e).__name__}: {e})",
                            row=f"{i} (sample {sid})" if sid else i, field="image") from None
        t = torch.from_numpy(np.require(a, requirements=["C", "W"]))  # PIL's arrays are read-only
        return (t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()), i


def collate_images(batch):
    """(uint8 (B, C, S, S), indices): one channel when every image is grayscale, else gray images repeated to 3."""
    xs, idx = zip(*batch)
    if any(x.shape[0] == 3 for x in xs):
        xs = [x.expand(3, -1, -1) for x in xs]
    return torch.stack(xs), torch.as_tensor(idx, dtype=torch.long)


class CachedImages(Dataset):
    """A split decoded once into a uint8 tensor (N, C, S, S); fetches whole batches with one index operation."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int):
        return self.x[i], i

    def __getitems__(self, idx: list[int]):
        i = torch.as_tensor(idx, dtype=torch.long)
        if self.x.is_cuda:  # a pinned, asynchronous index copy keeps the host from waiting on the GPU every batch
            i = i.pin_memory().to(self.x.device, non_blocking=True)
        return self.x[i], i


def _pass_through(batch):
    return batch


def decode_all(ds: ImageDataset, num_workers: int = 0, batch_size: int = 256) -> torch.Tensor:
    """The whole split decoded into one uint8 tensor (N, C, S, S), C = 1 when every image is grayscale."""
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_images, multiprocessing_context=_mp_context(num_workers))
    parts = [x for x, _ in loader]
    if any(p.shape[1] == 3 for p in parts):
        parts = [p.expand(-1, 3, -1, -1) for p in parts]
    return torch.cat(parts)


def _mp_context(num_workers: int):
    # fork shares the encoded bytes with workers copy-on-write; torch's default on Linux, made explicit
    return "fork" if num_workers > 0 and sys.platform.startswith("linux") else None


def make_datasets(data: SpecialistData, img_size: int, recipe: Recipe, device: torch.device
                  ) -> tuple[dict[str, Dataset], dict[str, str]]:
    """Each split's Dataset and where it lives: 'device' / 'host' (decoded once) or 'stream' (decoded per epoch).

    train and val are read every epoch, so they are decoded once while they fit `cache_max_bytes` (counted as
    3-channel uint8, since channels are known only after decoding), then moved to the GPU while their actual size fits
    `device_cache_max_bytes`; test is read once and streams."""
    host_left = recipe.cache_max_bytes
    dev_left = recipe.device_cache_max_bytes if device.type == "cuda" else 0
    out, place = {}, {}
    for s in SPLIT_NAMES:
        split = getattr(data, s)
        ds = ImageDataset(split.images, img_size, split.ids, f"{data.dataset}/{s}")
        need = len(split) * 3 * img_size * img_size
        if s == "test" or need > host_left:
            out[s], place[s] = ds, "stream"
            continue
        x = decode_all(ds, recipe.num_workers)
        if x.nbytes <= dev_left:
            out[s], place[s], dev_left = CachedImages(x.to(device)), "device", dev_left - x.nbytes
        else:
            out[s], place[s], host_left = CachedImages(x), "host", host_left - x.nbytes
    return out, place


class EpochSampler(torch.utils.data.Sampler):
    """A permutation seeded by (seed, epoch): the same order on a rerun or a resumed run, whatever the workers."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(ds: Dataset, batch_size: int, sampler=None, num_workers: int = 0, pin_memory: bool = False,
                drop_last: bool = False) -> DataLoader:
    """The DataLoader of the job's data path: batched fetches for cached splits, decoding workers otherwise."""
    cached = isinstance(ds, CachedImages)
    workers = 0 if cached else num_workers  # a cached batch is one gather: worker IPC would only add copies
    pin = pin_memory and not (cached and ds.x.is_cuda)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                      collate_fn=_pass_through if cached else collate_images, pin_memory=pin,
                      drop_last=drop_last, persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None, multiprocessing_context=_mp_context(workers))


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """Training recipe (paper Table A13 + MedMNIST+ early stopping); the defaults are the paper's."""
    img_size: int = 224
    batch_size: int = 64
    max_epochs: int = 100
    lr: float = 1e-4                 # AdamW
    weight_decay: float = 0.01
    scheduler: str = "cosine"        # timm CosineLRScheduler, cycle_limit 1, stepped per epoch
    cycle_limit: int = 1
    warmup_epochs: int = 0
    min_lr: float = 0.0
    patience: int = 5                # early stopping on validation loss
    min_delta: float = 0.0
    eval_batch_size: int = 256
    num_workers: int = 0
    seed: int = 0
    amp: bool = True                 # bf16 autocast; CUDA only
    channels_last: bool = True       # NHWC model and batches (CPU too: ~1/3 off an EfficientNet step there)
    threshold: float = 0.5           # multi-label decision threshold on sigmoid outputs
    cache_max_bytes: int = 16 << 30  # decode train/val once into host memory while their uint8 tensors fit this
    device_cache_max_bytes: int = 16 << 30  # CUDA: then keep them on the GPU while they fit this (no host work)
    resume_every_s: float = 120.0    # write last.pt at most this often (it holds model + AdamW state: ~3x weights)

    def __post_init__(self):
        if self.scheduler != "cosine":
            raise ValueError(f"recipe scheduler {self.scheduler!r}: only 'cosine' (paper Table A13) is implemented")
        for k in ("img_size", "batch_size", "max_epochs", "eval_batch_size", "patience"):
            if getattr(self, k) < 1:
                raise ValueError(f"recipe {k} must be >= 1, got {getattr(self, k)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Recipe":
        """A Recipe from a profile/config mapping; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - names
        if extra:
            raise ValueError(f"recipe: unknown keys {sorted(extra)}; expected {sorted(names)}")
        return cls(**d)


@dataclass
class JobResult:
    """What one (dataset, architecture) job produced; `params`, `metrics`, `history`, `artifacts` are for MLflow."""
    status: str                 # "trained" | "resumed" | "skipped" (done.json matched)
    dataset: str
    arch: str
    out_dir: str
    fingerprint: str
    init: str                   # "pretrained" | "scratch"
    weights_note: str
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    params: dict[str, str]      # mlflow.log_params
    metrics: dict[str, float]   # mlflow.log_metrics (final, flat; undefined metrics are absent, never 0)
    history: list[dict]         # one dict per epoch: mlflow.log_metrics(..., step=epoch)
    artifacts: dict[str, str]   # name -> path under out_dir: mlflow.log_artifact
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "JobResult":
        """The JobResult recorded in a done.json."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


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
def _evaluate(model: nn.Module, arch: ArchSpec, loader: DataLoader, rt: Runtime, n: int,
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


def probabilities(task_type: str, logits: np.ndarray) -> np.ndarray:
    """Sigmoid outputs for multi-label, softmax otherwise."""
    t = torch.from_numpy(logits)
    return (torch.sigmoid(t) if task_type == "multilabel" else torch.softmax(t, dim=1)).numpy()


def decisions(task_type: str, probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Predicted multi-hot rows (multi-label: probs >= threshold) or class indices (argmax)."""
    return (probs >= threshold).astype(np.int64) if task_type == "multilabel" else probs.argmax(1)


def _loss_value(task_type: str, logits: np.ndarray, targets: np.ndarray) -> float:
    return float(loss_fn_for(task_type)(torch.from_numpy(logits), torch.from_numpy(targets)))


def classification_metrics(task_type: str, targets: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict:
    """accuracy (exact match for multi-label), macro-/micro-F1, and macro AUC (None where a class is absent)."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    pred = decisions(task_type, probs, threshold)
    labels = None if task_type == "multilabel" else list(range(probs.shape[1]))
    out = {
        "accuracy": float(accuracy_score(targets, pred)),
        "macro_f1": float(f1_score(targets, pred, average="macro", labels=labels, zero_division=0)),
        "micro_f1": float(f1_score(targets, pred, average="micro", labels=labels, zero_division=0)),
    }
    try:
        if task_type == "binary":
            out["auc"] = float(roc_auc_score(targets, probs[:, 1]))
        elif task_type == "multiclass":
            out["auc"] = float(roc_auc_score(targets, probs, multi_class="ovr", average="macro", labels=labels))
        else:
            out["auc"] = float(roc_auc_score(targets, probs, average="macro"))
    except ValueError:  # a class absent from the targets: AUC is undefined, so it is reported as missing, not 0
        out["auc"] = None
    return out


def _atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json(path: Path, obj) -> None:
    _atomic_write_bytes(path, lambda f: f.write(json.dumps(obj, indent=1, sort_keys=True).encode()))


def _write_npy(path: Path, arr: np.ndarray) -> None:
    _atomic_write_bytes(path, lambda f: np.save(f, arr, allow_pickle=False))


def save_checkpoint(model: nn.Module, path: Path, card: Mapping[str, Any]) -> None:
    """Write the model's weights as safetensors (atomically), with `card` (JSON) in the file's metadata."""
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    data = safetensors.torch.save(sd, metadata={"gsco.card": json.dumps(card, sort_keys=True)})
    _atomic_write_bytes(Path(path), lambda f: f.write(data))


def read_card(checkpoint: Path) -> dict:
    """The model card stored in a specialist checkpoint's metadata."""
    with safetensors.safe_open(str(checkpoint), framework="pt") as f:
        meta = f.metadata() or {}
    if "gsco.card" not in meta:
        raise ValueError(f"{checkpoint}: not a specialist checkpoint (no 'gsco.card' metadata)")
    return json.loads(meta["gsco.card"])


def job_fingerprint(data: SpecialistData, arch: ArchSpec, recipe: Recipe, weights_sha256: str | None) -> str:
    """Hash of everything that determines a job's outputs: code version, data digest, arch, weights digest, recipe."""
    a = arch.to_dict()
    a.pop("weights_path")  # the file's digest identifies the weights, not where it lies
    blob = json.dumps({"code": CODE_VERSION, "data": data.content_digest(), "arch": a, "weights": weights_sha256,
                       "recipe": dataclasses.asdict(recipe)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


OUTPUT_FILES = ("done.json", "best.safetensors", "last.pt", "history.json", "metrics.json", "test_predictions.jsonl",
                "probs_test.npy", *(f"emb_{s}.npy" for s in SPLIT_NAMES), *(f"ids_{s}.json" for s in SPLIT_NAMES))


def load_result(out_dir: Path) -> JobResult | None:
    """The recorded result of a finished job in `out_dir`, or None when no done.json is there."""
    p = Path(out_dir) / "done.json"
    return JobResult.from_json(json.loads(p.read_text())) if p.is_file() else None


def _clear_outputs(out_dir: Path, keep_resume: bool) -> None:
    # done.json goes first: from then on no reader treats the folder as finished. A resumed run keeps last.pt and the
    # best-so-far checkpoint: when no later epoch beats it, that file is the job's result
    for name in OUTPUT_FILES:
        if keep_resume and name in ("last.pt", "best.safetensors"):
            continue
        (out_dir / name).unlink(missing_ok=True)
    for tmp in out_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _best_checkpoint_matches(path: Path, fingerprint: str, best_epoch: int) -> bool:
    """Whether `path` holds this job's checkpoint of `best_epoch` (trivially true before any epoch was kept)."""
    if best_epoch < 0:
        return True
    try:
        card = read_card(path)
    except Exception:  # missing, torn or foreign
        return False
    return card.get("fingerprint") == fingerprint and card.get("epoch") == best_epoch


_INIT_LOCK = threading.Lock()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def train_specialist(data: SpecialistData, arch: ArchSpec, recipe: Recipe, out_dir: Path,
                     device: str | torch.device = "cpu") -> JobResult:
    """Train one specialist with early stopping; write checkpoint, predictions, embeddings, metrics, done.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    img_size = arch.img_size or recipe.img_size
    wf = weights_file(arch)
    weights_sha = _sha256_file(wf) if wf is not None else None
    fp = job_fingerprint(data, arch, recipe, weights_sha)
    done = load_result(out_dir)
    if done is not None and done.fingerprint == fp:
        return dataclasses.replace(done, status="skipped")
    with _INIT_LOCK:  # in-process jobs on parallel threads share torch's global RNG: seed and draw the init at once
        _seed_all(recipe.seed)
        model, init = build_model(arch, data.num_classes, img_size, weights_sha256=weights_sha)
    resume = None
    last = out_dir / "last.pt"
    if last.is_file():
        try:
            state = torch.load(last, map_location="cpu", weights_only=True)
            resume = state if state.get("fingerprint") == fp else None
        except Exception:  # a torn or foreign file: start over rather than trust it
            resume = None
    if resume is not None and not _best_checkpoint_matches(out_dir / "best.safetensors", fp, resume["best_epoch"]):
        resume = None  # the best-so-far weights that the state refers to are gone: a resumed run could not return them
    _clear_outputs(out_dir, keep_resume=resume is not None)

    rt = Runtime(device, recipe, *input_stats(model, arch))
    if rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn = loss_fn_for(data.task_type)
    recipe = arch_recipe(arch, recipe)  # this architecture's lr and epochs (the fingerprint above has its overrides)
    # the fused kernel does the whole update in one pass: on a CPU it is ~7x faster than the per-tensor loop, which
    # otherwise costs as much as forward + backward of a tiny model
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                  fused=rt.device.type in ("cpu", "cuda"))
    from timm.scheduler import CosineLRScheduler
    scheduler = CosineLRScheduler(optimizer, t_initial=recipe.max_epochs, lr_min=recipe.min_lr,
                                  cycle_limit=recipe.cycle_limit, warmup_t=recipe.warmup_epochs,
                                  warmup_lr_init=recipe.min_lr, t_in_epochs=True)

    t_decode = time.perf_counter()
    ds, plan = make_datasets(data, img_size, recipe, rt.device)
    t_decode = time.perf_counter() - t_decode
    n_train = len(data.train)
    sampler = EpochSampler(n_train, recipe.seed)
    # BatchNorm cannot train on a final batch of one sample
    train_loader = make_loader(ds["train"], recipe.batch_size, sampler, recipe.num_workers, rt.pin,
                               drop_last=n_train % recipe.batch_size == 1 and n_train > 1)
    eval_loaders = {s: make_loader(ds[s], recipe.eval_batch_size, None, recipe.num_workers, rt.pin)
                    for s in SPLIT_NAMES}
    y_train = torch.from_numpy(data.train.targets).to(rt.device)

    history: list[dict] = []
    best_val, best_epoch, bad_epochs, start_epoch = math.inf, -1, 0, 0
    status = "trained"
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        torch.set_rng_state(resume["rng_cpu"])
        history, best_val = json.loads(resume["history"]), resume["best_val"]
        best_epoch, bad_epochs, start_epoch = resume["best_epoch"], resume["bad_epochs"], resume["epoch"] + 1
        status = "resumed"
    scheduler.step(start_epoch)
    best_path = out_dir / "best.safetensors"
    card = {"arch": arch.to_dict(), "num_classes": data.num_classes, "img_size": img_size,
            "task_type": data.task_type, "label_names": data.label_names, "threshold": recipe.threshold,
            "fingerprint": fp, "dataset": data.dataset, "init": init.init}
    last_resume_write = time.monotonic()
    stopped_early = False
    t_train = time.perf_counter()
    for epoch in range(start_epoch, recipe.max_epochs):
        t0 = time.perf_counter()
        model.train()
        sampler.set_epoch(epoch)
        loss_sum = torch.zeros((), device=rt.device)
        seen = 0
        for x, idx in train_loader:
            y = y_train[idx.to(rt.device, non_blocking=True)]
            loss_sum += train_step(model, optimizer, loss_fn, rt, x, y) * len(idx)
            seen += len(idx)
        train_loss = float(loss_sum) / max(seen, 1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"{data.dataset}/{arch.name}: training loss is {train_loss} at epoch {epoch}; "
                                     f"lower the recipe's lr ({recipe.lr})")
        train_s = time.perf_counter() - t0
        val_logits, _ = _evaluate(model, arch, eval_loaders["val"], rt, len(data.val), with_embeddings=False)
        val_loss = _loss_value(data.task_type, val_logits, data.val.targets)
        val_m = classification_metrics(data.task_type, data.val.targets, probabilities(data.task_type, val_logits),
                                       recipe.threshold)
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": train_loss, "val_loss": val_loss,
               "val_accuracy": val_m["accuracy"], "val_macro_f1": val_m["macro_f1"],
               "train_images": seen, "train_s": train_s, "epoch_s": time.perf_counter() - t0}
        history.append(row)
        if val_loss < best_val - recipe.min_delta:
            best_val, best_epoch, bad_epochs = val_loss, epoch, 0
            save_checkpoint(model, best_path, {**card, "epoch": epoch, "val_loss": val_loss})
        else:
            bad_epochs += 1
        scheduler.step(epoch + 1)
        if bad_epochs >= recipe.patience:
            stopped_early = epoch < recipe.max_epochs - 1
            break
        if epoch < recipe.max_epochs - 1 and time.monotonic() - last_resume_write >= recipe.resume_every_s:
            state = {"fingerprint": fp, "epoch": epoch, "model": model.state_dict(),
                     "optimizer": optimizer.state_dict(), "rng_cpu": torch.get_rng_state(),
                     "history": json.dumps(history), "best_val": best_val, "best_epoch": best_epoch,
                     "bad_epochs": bad_epochs}
            _atomic_write_bytes(last, lambda f: torch.save(state, f))
            last_resume_write = time.monotonic()
    train_total_s = time.perf_counter() - t_train
    if best_epoch < 0:
        raise FloatingPointError(f"{data.dataset}/{arch.name}: no epoch produced a finite validation loss")

    # outputs come from the best-by-validation-loss weights, not the last epoch's
    model.load_state_dict(safetensors.torch.load_file(str(best_path), device=str(rt.device)))
    artifacts = {"checkpoint": str(best_path)}
    split_metrics = {}
    for s in SPLIT_NAMES:
        split = getattr(data, s)
        logits, emb = _evaluate(model, arch, eval_loaders[s], rt, len(split), with_embeddings=True)
        _write_npy(out_dir / f"emb_{s}.npy", emb)
        _write_json(out_dir / f"ids_{s}.json", split.ids)
        artifacts[f"emb_{s}"], artifacts[f"ids_{s}"] = str(out_dir / f"emb_{s}.npy"), str(out_dir / f"ids_{s}.json")
        if s == "train":
            continue
        probs = probabilities(data.task_type, logits)
        split_metrics[s] = {"loss": _loss_value(data.task_type, logits, split.targets),
                            **classification_metrics(data.task_type, split.targets, probs, recipe.threshold)}
        if s == "test":
            _write_npy(out_dir / "probs_test.npy", probs.astype(np.float32))
            _write_predictions(out_dir / "test_predictions.jsonl", data, probs, recipe.threshold)
            artifacts["probs_test"] = str(out_dir / "probs_test.npy")
            artifacts["test_predictions"] = str(out_dir / "test_predictions.jsonl")
    _write_json(out_dir / "history.json", history)
    artifacts["history"] = str(out_dir / "history.json")

    epochs_run = len(history)
    metrics = {f"{s}_{k}": v for s, m in split_metrics.items() for k, v in m.items() if v is not None}
    metrics.update(best_val_loss=best_val, best_epoch=float(best_epoch), epochs_run=float(epochs_run),
                   train_s=train_total_s, decode_s=t_decode)
    step_s = sum(h["train_s"] for h in history)
    if step_s > 0:  # data loading + steps, excluding validation
        metrics["train_images_per_s"] = sum(h["train_images"] for h in history) / step_s
    _write_json(out_dir / "metrics.json", {"metrics": metrics, "splits": split_metrics, "label_names": data.label_names,
                                            "task_type": data.task_type})
    artifacts["metrics"] = str(out_dir / "metrics.json")
    params = {"dataset": data.dataset, "arch": arch.name, "model": arch.full_name, "source": arch.source,
              "overrides": json.dumps(dict(arch.overrides), sort_keys=True), "img_size": str(img_size),
              "num_classes": str(data.num_classes), "task_type": data.task_type,
              "loss": "bce_with_logits" if data.task_type == "multilabel" else "cross_entropy",
              "init": init.init, "weights_sha256": init.weights_sha256 or "", "lr": str(recipe.lr),
              "data_digest": data.content_digest(),
              "n_train": str(n_train), "n_val": str(len(data.val)), "n_test": str(len(data.test)),
              "device": str(rt.device), **{f"data_place.{s}": p for s, p in plan.items()}, "amp": str(rt.amp_dtype).replace("torch.", "") if rt.amp_dtype else "none",
              **{f"recipe.{k}": str(v) for k, v in dataclasses.asdict(recipe).items()}}
    result = JobResult(status=status, dataset=data.dataset, arch=arch.name, out_dir=str(out_dir), fingerprint=fp,
                       init=init.init, weights_note=init.note, best_epoch=best_epoch, epochs_run=epochs_run,
                       stopped_early=stopped_early, params=params, metrics=metrics, history=history,
                       artifacts=artifacts, tags={"gsco.weights": init.note})
    _write_json(out_dir / "done.json", dataclasses.asdict(result))
    last.unlink(missing_ok=True)
    return result


def _write_predictions(path: Path, data: SpecialistData, probs: np.ndarray, threshold: float) -> None:
    pred = decisions(data.task_type, probs, threshold)
    names = data.label_names
    lines = []
    for i, sid in enumerate(data.test.ids):
        if data.task_type == "multilabel":
            p_names = [names[j] for j in np.flatnonzero(pred[i])]
            t_names = [names[j] for j in np.flatnonzero(data.test.targets[i])]
        else:
            p_names, t_names = [names[int(pred[i])]], [names[int(data.test.targets[i])]]
        lines.append(json.dumps({"sample_id": sid, "predicted": p_names, "target": t_names,
                                 "probabilities": [round(float(p), 6) for p in probs[i]]}))
    _atomic_write_bytes(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))


def predict(checkpoint: Path, arch: ArchSpec, images, device: str | torch.device = "cpu", batch_size: int = 256,
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
    logits, emb = _evaluate(model, arch, loader, rt, len(ds), with_embeddings=True)
    return probabilities(card["task_type"], logits), emb
