"""Caffe Deconvolution as a torch op: fcn_repro.ops.deconv2d and deconv2d_crop.

Both call torch.ops.fcn_repro.* (C++/CUDA kernels of csrc/, gather form, with
a diagonal fast path for upsampling weights found, by checking, to be zero off
the channel diagonal) and fall back to the pure-PyTorch reference
(fcn_repro.ops.reference) with a FallbackWarning when the extension or a
kernel for the device/dtype is missing. One path each: no other entry point.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _ext
from .checks import IntPair, as_int, check, check_int, pair
from .reference import deconv2d_crop_ref, deconv2d_ref


def deconv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
             stride: IntPair = (1, 1), pad: IntPair = (0, 0), dilation: IntPair = (1, 1),
             groups: int = 1) -> torch.Tensor:
    """Caffe Deconvolution.

    x (N, Cin, H, W); weight (Cin, Cout/groups, kh, kw) as Caffe stores it;
    bias (Cout,) or None -> top (N, Cout, s(H-1) + d(k-1) + 1 - 2p, ...) for
    each axis (stride s, pad p, dilation d; Caffe has no output_padding).
    Pairs are (h, w); an int means the same value for both axes. Arguments
    Caffe could not hold (over 2^31 - 1) or that give an empty top raise ValueError.
    """
    if _ext.use_extension("deconv2d", x):
        op = "deconv2d"
        return torch.ops.fcn_repro.deconv2d(x, weight, bias, pair(stride, "stride", op), pair(pad, "pad", op),
                                            pair(dilation, "dilation", op), as_int(groups, "groups", op))
    return deconv2d_ref(x, weight, bias, stride, pad, dilation, groups)


def deconv2d_crop(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  stride: IntPair = (1, 1), pad: IntPair = (0, 0), dilation: IntPair = (1, 1),
                  groups: int = 1, offsets: IntPair = (0, 0),
                  out_size: Optional[IntPair] = None) -> torch.Tensor:
    """Caffe Deconvolution followed by Crop(axis 2), computed only on the kept window.

    Same arguments as deconv2d, plus offsets (oy, ox) >= 0 and out_size (H, W) >= 1:
    returns deconv2d(x, ...)[:, :, oy:oy+H, ox:ox+W], shape (N, Cout, H, W),
    without computing the rest of the top (FCN-8s computes 568x568 to keep 500x500).
    """
    op = "deconv2d_crop"
    check(out_size is not None, op, "out_size (H, W) of the kept window is required")
    if _ext.use_extension(op, x):
        return torch.ops.fcn_repro.deconv2d_crop(
            x, weight, bias, pair(stride, "stride", op), pair(pad, "pad", op), pair(dilation, "dilation", op),
            as_int(groups, "groups", op), pair(offsets, "offsets", op), pair(out_size, "out_size", op))
    return deconv2d_crop_ref(x, weight, bias, stride, pad, dilation, groups, offsets, out_size)


def weight_is_diagonal(weight: torch.Tensor, groups: int = 1) -> bool:
    """Whether deconv2d takes its diagonal (depthwise) fast path for this weight:
    groups == 1, Cin == Cout and weight[i, j] == 0 for every i != j (the check the kernels run).
    groups < 1 is refused (ValueError)."""
    groups = as_int(groups, "groups", "_deconv2d_is_diagonal")
    if _ext.AVAILABLE and _ext.BACKENDS.get(weight.device.type, False):
        return bool(torch.ops.fcn_repro._deconv2d_is_diagonal(weight, groups))
    check(weight.dim() == 4, "_deconv2d_is_diagonal", lambda: f"weight must be 4-D, got {list(weight.shape)}")
    check_int(groups, 1, "groups", "_deconv2d_is_diagonal")
    if groups != 1 or weight.shape[0] != weight.shape[1]:
        return False
    off = ~torch.eye(weight.shape[0], dtype=torch.bool, device=weight.device)
    return not bool((weight[off] != 0).any())


def clear_diagonal_cache() -> None:
    """Forget the remembered diagonal checks. The CUDA kernels check a weight once per
    version (its version counter changes with every in-place change made through torch);
    call this after changing a weight behind torch's back (``.data``, a NumPy view)."""
    if _ext.AVAILABLE:
        torch.ops.fcn_repro._clear_diagonal_cache()
