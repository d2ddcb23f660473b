"""Pure-PyTorch references of the fcn_repro ops (Caffe semantics).

These are the ground truth the C++/CUDA kernels are tested against, and the
fallback used when the compiled extension ``fcn_repro._C`` is missing. They
are composites of stock PyTorch ops (conv_transpose2d, slicing, add), so they
are differentiable by autograd and run on any device. They accept and refuse
the same arguments as the kernels (fcn_repro.ops.checks).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from fcn_repro.caffe.shapes import deconv_out
from .checks import IntPair, as_int, check_bias, check_tensors, coeff_pair, crop_geometry, deconv_geometry, pair

__all__ = ["IntPair", "pair", "deconv_out_size", "deconv2d_ref", "crop_sum_ref", "deconv2d_crop_ref"]

deconv_out_size = deconv_out


def _deconv_args(op, x, weight, bias, stride, pad, dilation, groups, offsets=(0, 0), out_size=None):
    stride, pad, dilation = pair(stride, "stride", op), pair(pad, "pad", op), pair(dilation, "dilation", op)
    offsets = pair(offsets, "offsets", op)
    out_size = None if out_size is None else pair(out_size, "out_size", op)
    groups = as_int(groups, "groups", op)
    check_tensors(op, ((x, "bottom"), (weight, "weight"), (bias, "bias")), kernel_dtypes=False)
    *_, oh, ow, cout = deconv_geometry(op, tuple(x.shape), tuple(weight.shape), stride, pad, dilation, groups,
                                       offsets, out_size)
    check_bias(bias, cout, op)
    return stride, pad, dilation, groups, offsets, (oh, ow)


def deconv2d_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 stride: IntPair = 1, pad: IntPair = 0, dilation: IntPair = 1, groups: int = 1) -> torch.Tensor:
    """Caffe Deconvolution. x (N, Cin, H, W), weight (Cin, Cout/groups, kh, kw), bias (Cout,)
    -> (N, Cout, s(H-1)+d(k-1)+1-2p, ...)."""
    stride, pad, dilation, groups, _, _ = _deconv_args("deconv2d", x, weight, bias, stride, pad, dilation, groups)
    return F.conv_transpose2d(x, weight, bias, stride=stride, padding=pad, output_padding=0,
                              groups=groups, dilation=dilation)


def crop_sum_ref(a: torch.Tensor, b: torch.Tensor, offsets: IntPair,
                 coeffs: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Caffe Crop(axis 2) of b (N, C, Hb, Wb) to a's (N, C, H, W) at offsets (oy, ox), then
    Eltwise SUM: a*coeffs[0] + crop(b)*coeffs[1] -> (N, C, H, W)."""
    oy, ox = pair(offsets, "offsets", "crop_sum")
    check_tensors("crop_sum", ((a, "first bottom (a)"), (b, "second bottom (b)")), kernel_dtypes=False)
    crop_geometry("crop_sum", tuple(a.shape), tuple(b.shape), (oy, ox))
    c0, c1 = coeff_pair(coeffs)
    crop = b[:, :, oy:oy + a.shape[2], ox:ox + a.shape[3]]
    if coeffs is None:
        return a + crop
    return a * c0 + crop * c1


def deconv2d_crop_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                      stride: IntPair = 1, pad: IntPair = 0, dilation: IntPair = 1, groups: int = 1,
                      offsets: IntPair = 0, out_size: Optional[IntPair] = None) -> torch.Tensor:
    """deconv2d(...)[..., oy:oy+H, ox:ox+W] as a composite (computes the full output)."""
    if out_size is None:
        raise ValueError("fcn_repro::deconv2d_crop: out_size (H, W) of the kept window is required")
    stride, pad, dilation, groups, (oy, ox), (oh, ow) = _deconv_args(
        "deconv2d_crop", x, weight, bias, stride, pad, dilation, groups, offsets, out_size)
    y = F.conv_transpose2d(x, weight, bias, stride=stride, padding=pad, groups=groups, dilation=dilation)
    return y[:, :, oy:oy + oh, ox:ox + ow]
