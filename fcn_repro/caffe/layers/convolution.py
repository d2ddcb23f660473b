"""Convolution: Caffe's ConvolutionLayer for 2-D images.

weight (Cout, Cin/group, kh, kw), bias (Cout,); output size
floor((H + 2p - (d(k-1)+1)) / s) + 1. Several bottoms share the weights and
give one top each, as in Caffe.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Layer, register, fmt_shape
from ..shapes import conv_out, conv_window


@register("Convolution")
class Convolution(Layer):
    min_bottoms = 1
    min_tops = 1
    param_field = "convolution_param"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        if len(self.bottom_names) != len(self.top_names):
            raise self.error(f"needs one top per bottom, got {len(self.bottom_names)} bottoms and "
                             f"{len(self.top_names)} tops")
        p = self.param.sub(self.param_field)
        self.window = conv_window(p, self.error)
        w = self.window
        self.kernel, self.stride, self.pad, self.dilation = w.kernel, w.stride, w.pad, w.dilation
        if not p.has("num_output"):
            raise self.error("convolution_param.num_output is required")
        self.num_output = int(p.get("num_output"))
        self.group = int(p.get("group", 1))
        self.bias_term = bool(p.get("bias_term", True))
        if int(p.get("axis", 1)) != 1:
            raise self.error("only axis: 1 (N, C, H, W bottoms) is supported")
        if self.num_output < 1 or self.group < 1 or self.num_output % self.group:
            raise self.error(f"num_output {self.num_output} must be a positive multiple of group {self.group}")

    def _check_bottoms(self, shapes):
        for n, s in zip(self.bottom_names, shapes):
            if s is not None and len(s) != 4:
                raise self.error(f"bottom {n!r} must be 4-D (N, C, H, W), got shape {fmt_shape(s)}")
        first = shapes[0]
        for n, s in zip(self.bottom_names[1:], shapes[1:]):
            if tuple(s) != tuple(first):
                raise self.error(f"all bottoms must have the same shape: {self.bottom_names[0]!r} is "
                                 f"{fmt_shape(first)}, {n!r} is {fmt_shape(s)}")
        c = first[1]
        if c is not None and c % self.group:
            raise self.error(f"bottom {self.bottom_names[0]!r} has {c} channels, not a multiple of "
                             f"group {self.group}")
        return first

    def weight_shape(self, channels):
        return (self.num_output, None if channels is None else channels // self.group) + tuple(self.kernel)

    def setup(self, bottom_shapes):
        s = self._check_bottoms(bottom_shapes)
        self.add_blob(self.weight_shape(s[1]), "weights")
        if self.bias_term:
            self.add_blob((self.num_output,), "bias")
        return [(s[0], self.num_output) + self.out_size(s[2], s[3])] * len(self.top_names)

    def out_size(self, h, w) -> tuple:
        """(out_h, out_w) for an (h, w) bottom (None in, None out): Caffe's convolution size."""
        return tuple(conv_out(n, self.kernel[i], self.stride[i], self.pad[i], self.dilation[i])
                     for i, n in enumerate((h, w)))

    @property
    def weight(self) -> torch.Tensor:
        """The weight blob (Cout, Cin/group, kh, kw)."""
        return self.blobs[0]

    def bias(self):
        """The bias blob (Cout,), or None without ``bias_term``."""
        return self.blobs[1] if self.bias_term else None

    @property
    def in_channels(self) -> int:
        """The bottom's channel count the weights take."""
        return int(self.blobs[0].shape[1]) * self.group

    def check_bottoms(self, bottoms) -> None:
        """A bottom the weights do not take (not 4-D, another channel count) is the input's error:
        a :class:`LayerError` naming the bottom, its shape and the expected channels."""
        c = self.in_channels
        for name, x in zip(self.bottom_names, bottoms):
            if x.dim() != 4 or x.shape[1] != c:
                raise self.error(f"bottom {name!r} {fmt_shape(tuple(x.shape))}: expected (N, {c}, H, W)")

    def forward(self, *bottoms: torch.Tensor, inplace: bool = False):
        self.check_bottoms(bottoms)
        w, b = self.blobs[0], self.bias()
        return [_conv2d(x, w, b, self.stride, self.pad, self.dilation, self.group) for x in bottoms]


def _conv2d(x, w, b, stride, pad, dilation, groups):
    """F.conv2d, but a float32 CPU forward without gradients runs :func:`onednn_conv2d`.

    Only on real tensors: traced ones (torch.compile, torch.export, shape
    walks on fake tensors) take F.conv2d, which every tracer knows.
    """
    if (type(x) is torch.Tensor and not torch.compiler.is_compiling()
            and x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 4 and _MKLDNN
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad
                                                   or (b is not None and b.requires_grad)))):
        return onednn_conv2d(x, w, b, stride, pad, dilation, groups)
    return F.conv2d(x, w, b, stride, pad, dilation, groups)


#: positions per GEMM call (see fixed_gemm)
GEMM_BLOCK = 256


def fixed_gemm(w: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """The product with ``w`` (Cout, K) of the positions of ``x``: ``x @ w.T`` for x (P, K) (axis 0),
    ``w @ x`` for x (K, P) (axis 1), in calls of exactly GEMM_BLOCK positions (the last one zero-padded).

    A BLAS picks its blocking, and so the order of its sums, by the matrices'
    shapes: one position's score would round differently in a big map and in a
    window of it. Calls of one shape compute every position the same way, so
    exact tiles (:mod:`fcn_repro.tiles`) stay exact, at the cost of at most one
    padded block per layer.
    """
    p = x.shape[axis]
    if p == 0 or not x.is_floating_point() or x.device.type != "cpu":
        return x @ w.t() if axis == 0 else w @ x
    out = x.new_empty((p, w.shape[0]) if axis == 0 else (w.shape[0], p))
    wt = w.t()
    for i in range(0, p, GEMM_BLOCK):
        j = min(p, i + GEMM_BLOCK)
        blk = x[i:j] if axis == 0 else x[:, i:j]
        if j - i < GEMM_BLOCK:
            pad = (0, 0, 0, GEMM_BLOCK - (j - i)) if axis == 0 else (0, GEMM_BLOCK - (j - i))
            blk = F.pad(blk, pad)
        if axis == 0:
            out[i:j] = (blk @ wt)[:j - i]
        else:
            out[:, i:j] = (w @ blk)[:, :j - i]
    return out


def onednn_conv2d(x, w, b, stride, pad, dilation, groups):
    """A float32 CPU convolution through oneDNN, the same arithmetic for every map size and padding.

    Exact tiles (:mod:`fcn_repro.tiles`) need each output pixel computed the
    same way in a big map and in a window of it. Three things would change
    the order of the sums (and so the last bits) with the size: F.conv2d
    picks oneDNN or im2col + GEMM by the map's size; oneDNN on channels-last
    maps picks its kernel by the size; and oneDNN leaves its direct kernel for
    another when a pad exceeds the kernel's extent - 1 (conv1_1's pad 100).
    So: NCHW maps, and padding beyond extent - 1 written as zeros first; and
    a 1x1 convolution (oneDNN's 1x1 kernels block by size as well) is a
    :func:`fixed_gemm` per image.
    """
    if tuple(w.shape[2:]) == (1, 1) and tuple(stride) == (1, 1) and not any(pad) and groups == 1:
        # oneDNN's 1x1 kernels block by the map's size too: one GEMM rule instead (fixed_gemm)
        n, c, h, wd = x.shape
        wm = w.detach().reshape(w.shape[0], c)
        y = torch.stack([fixed_gemm(wm, x[i].reshape(c, h * wd), 1) for i in range(n)])
        if b is not None:
            y += b.detach()[:, None]
        return y.view(n, w.shape[0], h, wd)
    ext = [d * (k - 1) + 1 for d, k in zip(dilation, w.shape[2:])]
    pad = list(pad)
    extra = [max(0, p - (e - 1)) for p, e in zip(pad, ext)]
    if extra[0] or extra[1]:
        x = F.pad(x, (extra[1], extra[1], extra[0], extra[0]))
        pad = [p - e for p, e in zip(pad, extra)]
    return torch.mkldnn_convolution(x.contiguous(), w.detach().contiguous(), b, pad, list(stride),
                                    list(dilation), groups)


_MKLDNN = torch.backends.mkldnn.is_available()
