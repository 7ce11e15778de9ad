"""Size and compute of a specialist model (paper Table A12): parameters in millions and GMACs per image.

    from tasks.specialists.complexity import model_complexity
    model_complexity(model, img_size=224)          # {"params_m": 11.69, "gmacs": 1.82} for timm's resnet18
    OMP_NUM_THREADS=1 pytest -q tests/test_complexity.py

MACs are torch's FlopCounterMode count of one forward pass on a zero image, halved: it counts the matrix products
(convolutions, linear layers, attention) at 2 FLOPs per multiply-add and leaves out element-wise work (activations,
normalisation, pooling, bias adds), which is the convention of the GMACs the paper and timm report.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def model_complexity(model: nn.Module, img_size: int, in_chans: int = 3) -> dict[str, float]:
    """{"params_m": parameters / 1e6, "gmacs": multiply-adds of one image / 1e9} at `img_size` x `img_size`.

    The forward pass runs in eval mode without gradients on the model's device and dtype; the model's training mode is
    restored afterwards.
    """
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise ValueError(f"img_size: expected a positive integer, got {img_size!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans: expected a positive integer, got {in_chans!r}")
    params = list(model.parameters())
    first = params[0] if params else None
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(1, in_chans, img_size, img_size, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return {"params_m": sum(p.numel() for p in params) / 1e6, "gmacs": counter.get_total_flops() / 2 / 1e9}
