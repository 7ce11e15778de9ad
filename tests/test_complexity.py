"""model_complexity on tiny models whose parameters and multiply-adds are counted by hand.

    OMP_NUM_THREADS=1 pytest -q tests/test_complexity.py
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tasks.specialists.complexity import model_complexity


def _tiny(in_chans: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_chans, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 2, 1, stride=2, bias=False), nn.Flatten(), nn.Linear(2 * 4 * 4, 10))


def test_hand_counted_conv_and_linear():
    model = _tiny().train()
    got = model_complexity(model, img_size=8)
    # conv 3->4, 3x3 on 8x8 (padding 1): 8*8 outputs x 4 channels x 3*3*3 MACs = 6912; 1x1 conv 4->2 stride 2 on 4x4:
    # 4*4*2*4 = 128; linear 32->10: 320. BatchNorm, ReLU and bias adds are not multiply-adds of a matrix product.
    assert got["gmacs"] == pytest.approx((6912 + 128 + 320) / 1e9, rel=0, abs=1e-15)
    # conv 4*3*9 + 4 bias; BatchNorm 4 + 4; conv 2*4 (no bias); linear 32*10 + 10
    assert got["params_m"] == pytest.approx((112 + 8 + 8 + 330) / 1e6, rel=0, abs=1e-15)
    assert model.training   # the caller's training mode is restored


def test_input_channels_and_size():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 5))
    # conv 1->4 3x3: size^2 x 4 x 9 MACs; linear 4->5: 20; parameters 36 + 20 + 5
    for size, macs in ((16, 16 * 16 * 36 + 20), (8, 8 * 8 * 36 + 20)):
        got = model_complexity(model, img_size=size, in_chans=1)
        assert got["gmacs"] == pytest.approx(macs / 1e9, rel=0, abs=1e-15)
        assert got["params_m"] == pytest.approx(61 / 1e6, rel=0, abs=1e-15)
    with pytest.raises(RuntimeError):   # three channels into a one-channel stem: torch's own error, not a count
        model_complexity(model, img_size=8)


def test_dtype_follows_the_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, 3)).to(torch.float64)
    assert model_complexity(model, img_size=2)["gmacs"] == pytest.approx(36 / 1e9, rel=0, abs=1e-15)


def test_bad_size():
    with pytest.raises(ValueError, match="img_size: expected a positive integer"):
        model_complexity(_tiny(), img_size=0)
