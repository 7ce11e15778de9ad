"""Specialist models (SPEC §6): build an architecture from the registry, load local pretrained weights into it,
and read its logits and pooled pre-logit embeddings.

    model, init = build_model(arch_spec("resnet18", settings), num_classes=7, img_size=224)
    logits, emb = forward_embed(model, arch, x)

Nothing is downloaded: timm and torchvision models are built with random weights, and `load_pretrained` reads the
file a profile names (every tensor but the classifier must fit, or the error names what does not).
"""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

from data_contracts.files import file_sha256
from tasks.specialists.architectures import TRAINING_OVERRIDES, ArchSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCRATCH_NOTE = "weights absent: trained from scratch"


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
#   lr_scale, epochs_scale: training settings, not the model's (tasks/specialists/architectures.py: arch_recipe)


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
    return InitReport("pretrained", note, str(path), sha256 or file_sha256(path), len(use), skipped, unexpected)


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
