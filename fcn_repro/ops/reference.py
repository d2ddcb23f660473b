"""Pure-PyTorch references of the fcn_repro ops (Caffe semantics).

These are the ground truth the C++/CUDA kernels are tested against, and the
fallback used when the compiled extension ``fcn_repro._C`` is missing. They
are composites of stock PyTorch ops (conv_transpose2d, slicing, add), so they
are differentiable by autograd and run on any device.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from fcn_repro.caffe.shapes import deconv_out

IntPair = Union[int, Sequence[int]]


def pair(v: IntPair, name: str) -> Tuple[int, int]:
    """(v, v) for an int, (v[0], v[1]) for a pair; error names the argument."""
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return int(v), int(v)
    try:
        vals = [int(x) for x in v]
    except TypeError:
        raise TypeError(f"fcn_repro.ops: {name} must be an int or a pair of ints, got {v!r}") from None
    if len(vals) == 1:
        return vals[0], vals[0]
    if len(vals) != 2:
        raise ValueError(f"fcn_repro.ops: {name} must be an int or a pair of ints (h, w), got {v!r}")
    return vals[0], vals[1]


deconv_out_size = deconv_out


def check_deconv_args(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      stride, pad, dilation, groups: int):
    """Validate a Deconvolution call; returns normalised (stride, pad, dilation, out_hw)."""
    stride, pad, dilation = pair(stride, "stride"), pair(pad, "pad"), pair(dilation, "dilation")
    if x.dim() != 4:
        raise ValueError(f"fcn_repro.ops.deconv2d: bottom must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError("fcn_repro.ops.deconv2d: weight must be 4-D (Cin, Cout/groups, kh, kw) as Caffe "
                         f"stores Deconvolution weights, got shape {tuple(weight.shape)}")
    if groups < 1 or x.shape[1] % groups or weight.shape[0] != x.shape[1]:
        raise ValueError(f"fcn_repro.ops.deconv2d: bottom has {x.shape[1]} channels, weight shape "
                         f"{tuple(weight.shape)}, groups {groups}: expected weight.shape[0] == channels, "
                         "divisible by groups")
    if min(stride) < 1 or min(dilation) < 1 or min(pad) < 0:
        raise ValueError(f"fcn_repro.ops.deconv2d: need stride >= 1, dilation >= 1, pad >= 0; got "
                         f"stride {stride}, pad {pad}, dilation {dilation}")
    cout = weight.shape[1] * groups
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != cout):
        raise ValueError(f"fcn_repro.ops.deconv2d: bias must have shape ({cout},) (num_output), "
                         f"got {tuple(bias.shape)}")
    oh = deconv_out_size(x.shape[2], weight.shape[2], stride[0], pad[0], dilation[0])
    ow = deconv_out_size(x.shape[3], weight.shape[3], stride[1], pad[1], dilation[1])
    if oh < 1 or ow < 1:
        raise ValueError(f"fcn_repro.ops.deconv2d: output size {oh}x{ow} is empty for bottom "
                         f"{tuple(x.shape)}, kernel {tuple(weight.shape[2:])}, stride {stride}, pad {pad}, "
                         f"dilation {dilation}")
    return stride, pad, dilation, (oh, ow)


def check_crop(full_hw: Tuple[int, int], offsets, out_hw: Tuple[int, int], what: str) -> Tuple[int, int]:
    """Caffe Crop check: offset + size must fit inside the cropped bottom."""
    oy, ox = pair(offsets, "offsets")
    if oy < 0 or ox < 0 or oy + out_hw[0] > full_hw[0] or ox + out_hw[1] > full_hw[1]:
        raise ValueError(f"fcn_repro.ops.{what}: crop window offsets ({oy}, {ox}) size {tuple(out_hw)} "
                         f"does not fit in the {full_hw[0]}x{full_hw[1]} bottom (Caffe Crop requires "
                         "offset + size <= bottom size)")
    return oy, ox


def deconv2d_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 stride: IntPair = 1, pad: IntPair = 0, dilation: IntPair = 1, groups: int = 1) -> torch.Tensor:
    """Caffe Deconvolution. x (N, Cin, H, W), weight (Cin, Cout/groups, kh, kw), bias (Cout,)
    -> (N, Cout, s(H-1)+d(k-1)+1-2p, ...)."""
    stride, pad, dilation, _ = check_deconv_args(x, weight, bias, stride, pad, dilation, groups)
    return F.conv_transpose2d(x, weight, bias, stride=stride, padding=pad, output_padding=0,
                              groups=groups, dilation=dilation)


def crop_sum_ref(a: torch.Tensor, b: torch.Tensor, offsets: IntPair,
                 coeffs: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Caffe Crop(axis 2) of b (N, C, Hb, Wb) to a's (N, C, H, W) at offsets (oy, ox), then
    Eltwise SUM: a*coeffs[0] + crop(b)*coeffs[1] -> (N, C, H, W)."""
    if a.dim() != 4 or b.dim() != 4 or a.shape[:2] != b.shape[:2]:
        raise ValueError(f"fcn_repro.ops.crop_sum: bottoms must be 4-D with the same N, C; got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    oy, ox = check_crop((b.shape[2], b.shape[3]), offsets, (a.shape[2], a.shape[3]), "crop_sum")
    crop = b[:, :, oy:oy + a.shape[2], ox:ox + a.shape[3]]
    if coeffs is None:
        return a + crop
    c0, c1 = float(coeffs[0]), float(coeffs[1])
    return a * c0 + crop * c1


def deconv2d_crop_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                      stride: IntPair = 1, pad: IntPair = 0, dilation: IntPair = 1, groups: int = 1,
                      offsets: IntPair = 0, out_size: Optional[IntPair] = None) -> torch.Tensor:
    """deconv2d(...)[..., oy:oy+H, ox:ox+W] as a composite (computes the full output)."""
    stride, pad, dilation, full = check_deconv_args(x, weight, bias, stride, pad, dilation, groups)
    if out_size is None:
        raise ValueError("fcn_repro.ops.deconv2d_crop: out_size (H, W) is required")
    out_hw = pair(out_size, "out_size")
    oy, ox = check_crop(full, offsets, out_hw, "deconv2d_crop")
    y = F.conv_transpose2d(x, weight, bias, stride=stride, padding=pad, groups=groups, dilation=dilation)
    return y[:, :, oy:oy + out_hw[0], ox:ox + out_hw[1]]
