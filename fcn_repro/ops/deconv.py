"""Caffe Deconvolution as a torch op: fcn_repro.ops.deconv2d and deconv2d_crop.

Both dispatch to torch.ops.fcn_repro.* (C++/CUDA kernels of csrc/, gather form,
with a diagonal fast path for upsampling weights that are zero off the channel
diagonal, detected by checking the weight on every call) and fall back to the
pure-PyTorch reference (fcn_repro.ops.reference) with a FallbackWarning when
the extension or a kernel for the device/dtype is missing.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _ext
from .reference import IntPair, deconv2d_crop_ref, deconv2d_ref, pair


def deconv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
             stride: IntPair = (1, 1), pad: IntPair = (0, 0), dilation: IntPair = (1, 1),
             groups: int = 1) -> torch.Tensor:
    """Caffe Deconvolution.

    x (N, Cin, H, W); weight (Cin, Cout/groups, kh, kw) as Caffe stores it;
    bias (Cout,) or None -> top (N, Cout, s(H-1) + d(k-1) + 1 - 2p, ...) for
    each axis (stride s, pad p, dilation d; Caffe has no output_padding).
    Pairs are (h, w); an int means the same value for both axes.
    """
    ext = _ext.entry()
    if ext is not None:
        y = ext.deconv2d(x, weight, bias, stride, pad, dilation, groups)
        if y is not None:
            return y
    if _ext.use_extension("deconv2d", x):
        return _ext.call(torch.ops.fcn_repro.deconv2d.default, (x, weight, bias), x, weight, bias,
                         pair(stride, "stride"), pair(pad, "pad"), pair(dilation, "dilation"), int(groups))
    return deconv2d_ref(x, weight, bias, stride, pad, dilation, groups)


def deconv2d_crop(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  stride: IntPair = (1, 1), pad: IntPair = (0, 0), dilation: IntPair = (1, 1),
                  groups: int = 1, offsets: IntPair = (0, 0),
                  out_size: Optional[IntPair] = None) -> torch.Tensor:
    """Caffe Deconvolution followed by Crop(axis 2), computed only on the kept window.

    Same arguments as deconv2d, plus offsets (oy, ox) and out_size (H, W):
    returns deconv2d(x, ...)[:, :, oy:oy+H, ox:ox+W], shape (N, Cout, H, W),
    without computing the rest of the top (FCN-8s computes 568x568 to keep 500x500).
    """
    if out_size is None:
        raise ValueError("fcn_repro.ops.deconv2d_crop: out_size (H, W) of the kept window is required")
    ext = _ext.entry()
    if ext is not None:
        y = ext.deconv2d_crop(x, weight, bias, stride, pad, dilation, groups, offsets, out_size)
        if y is not None:
            return y
    if _ext.use_extension("deconv2d_crop", x):
        return _ext.call(torch.ops.fcn_repro.deconv2d_crop.default, (x, weight, bias), x, weight, bias,
                         pair(stride, "stride"), pair(pad, "pad"), pair(dilation, "dilation"), int(groups),
                         pair(offsets, "offsets"), pair(out_size, "out_size"))
    return deconv2d_crop_ref(x, weight, bias, stride, pad, dilation, groups, offsets, out_size)


def weight_is_diagonal(weight: torch.Tensor, groups: int = 1) -> bool:
    """Whether deconv2d takes its diagonal (depthwise) fast path for this weight:
    groups == 1, Cin == Cout and weight[i, j] == 0 for every i != j (the check the kernels run)."""
    if _ext.AVAILABLE and _ext.has_kernel("_deconv2d_is_diagonal", weight.device.type.upper()):
        return bool(torch.ops.fcn_repro._deconv2d_is_diagonal(weight, int(groups)))
    if groups != 1 or weight.dim() != 4 or weight.shape[0] != weight.shape[1]:
        return False
    off = ~torch.eye(weight.shape[0], dtype=torch.bool, device=weight.device)
    return not bool((weight[off] != 0).any())
