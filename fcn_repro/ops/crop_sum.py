"""Caffe Crop(axis 2) + Eltwise SUM fused: fcn_repro.ops.crop_sum.

Calls torch.ops.fcn_repro.crop_sum (one pass over the output, reading only
b's window) and falls back to the pure-PyTorch reference with a
FallbackWarning when the extension or a kernel for the device/dtype is missing.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _ext
from .checks import IntPair, coeff_pair, pair
from .reference import crop_sum_ref


def crop_sum(a: torch.Tensor, b: torch.Tensor, offsets: IntPair,
             coeffs: Optional[Sequence[float]] = None) -> torch.Tensor:
    """a (N, C, H, W), b (N, C, Hb, Wb) -> a*coeffs[0] + b[:, :, oy:oy+H, ox:ox+W]*coeffs[1], (N, C, H, W).

    The FCN skip fusion: Caffe's Crop of b (axis 2, offsets (oy, ox), an int
    meaning both) to a's spatial size, then Eltwise SUM of (a, crop) with
    optional per-bottom coefficients (default 1, 1).
    """
    if _ext.use_extension("crop_sum", a):
        c0, c1 = coeff_pair(coeffs)
        return torch.ops.fcn_repro.crop_sum(a, b, pair(offsets, "offsets", "crop_sum"), c0, c1)
    return crop_sum_ref(a, b, offsets, coeffs)
