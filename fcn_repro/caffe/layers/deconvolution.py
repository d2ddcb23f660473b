"""Deconvolution: Caffe's DeconvolutionLayer (the FCN upsampling layers).

weight (Cin, Cout/group, kh, kw), bias (Cout,); output size
s(H-1) + d(k-1) + 1 - 2p. Computed by :func:`fcn_repro.ops.deconv2d` (the
project's Caffe-semantics op, compiled kernel when available).
"""
from __future__ import annotations

import torch

from fcn_repro import ops

from .base import register
from .convolution import Convolution
from ..shapes import deconv_out


@register("Deconvolution")
class Deconvolution(Convolution):
    """Setup as Convolution's, with the transposed weight shape and Caffe's deconvolution size."""

    def weight_shape(self, channels):
        # Caffe keeps the weight of a deconvolution in the shape of the
        # convolution it is the transpose of: (Cin, Cout/group, kh, kw).
        return (channels, self.num_output // self.group) + tuple(self.kernel)

    def out_size(self, h, w) -> tuple:
        """(out_h, out_w) for an (h, w) bottom (None in, None out): Caffe's deconvolution size."""
        return tuple(deconv_out(n, self.kernel[i], self.stride[i], self.pad[i], self.dilation[i])
                     for i, n in enumerate((h, w)))

    @property
    def in_channels(self) -> int:
        return int(self.blobs[0].shape[0])

    def forward(self, *bottoms: torch.Tensor, inplace: bool = False):
        self.check_bottoms(bottoms)
        w, b = self.blobs[0], self.bias()
        return [ops.deconv2d(x, w, b, self.stride, self.pad, self.dilation, self.group) for x in bottoms]

    def forward_cropped(self, x: torch.Tensor, offsets, out_size) -> torch.Tensor:
        """deconv(x)[..., oy:oy+H, ox:ox+W], computed directly (Deconvolution -> Crop fusion).

        Under torch.export / torch.compile the window size may be symbolic:
        the fused op takes it as a plain ``int[2]``, which would specialise the
        input size to the example's, so a traced graph keeps the size symbolic
        as the full deconvolution followed by a slice.
        """
        self.check_bottoms((x,))
        if torch.compiler.is_compiling() or any(isinstance(n, torch.SymInt) for n in out_size):
            y = ops.deconv2d(x, self.blobs[0], self.bias(), self.stride, self.pad, self.dilation, self.group)
            (oy, ox), (h, w) = offsets, out_size
            return y[:, :, oy:oy + h, ox:ox + w]
        return ops.deconv2d_crop(x, self.blobs[0], self.bias(), self.stride, self.pad, self.dilation,
                                 self.group, offsets, out_size)
