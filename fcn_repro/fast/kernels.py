"""Convolution kernels of the fast path: GEMM, oneDNN with fused ReLU, F.conv2d, Winograd F(m x m, 3x3) (.winograd)."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from fcn_repro.caffe.layers.convolution import fixed_gemm as _fixed_gemm, onednn_conv2d
from fcn_repro.caffe.shapes import conv_out

from .winograd import KINDS as _WINOGRAD_KINDS, WinogradCpu, winograd_for

__all__ = ["ConvKernel"]


# ---------------------------------------------------------------- kernels

class ConvKernel:
    """How one convolution runs on a window: GEMM, Winograd, oneDNN with fused ReLU, or F.conv2d.

    * ``gemm`` (1x1 kernels, and kernels of 25 taps or more: fc6's 7x7 on a
      22x22 map): one matrix product against a *view* of the layer's weight
      (no copy of fc6's 411 MB); 1x1 convolutions of channels-last maps
      need no im2col at all.
    * ``mkldnn``: oneDNN on channels-last tensors with the ReLU fused, the
      weight kept in a channels-last copy (the 3x3 layers: 59 MB in all for
      VGG-16).
    * ``torch``: F.conv2d (channels-last when the input is), ReLU after.
    * ``winograd`` (a key of :data:`.winograd.KINDS`; 3x3, stride 1, no
      dilation, no groups): F(m x m, 3x3), the C++ kernel where it runs
      (:func:`.winograd.winograd_for`), bias and ReLU fused, keeping the
      transformed weight instead of the channels-last copy.

    Holds the layer's weight/bias (the net's Parameters); ``refresh()``
    re-derives the copies when the parameters changed (their version
    counters move: ``load_weights`` copies in place; ``refresh(force=True)``
    for changes no counter sees).
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], stride, dilation, groups: int,
                 impl: str = "mkldnn", gemm: bool = False, winograd: Any = False):
        self.weight, self.bias = weight, bias
        self.stride, self.dilation, self.groups = tuple(stride), tuple(dilation), int(groups)
        self.impl = impl
        kh, kw = weight.shape[2], weight.shape[3]
        self.gemm = bool(gemm) and self.groups == 1 and (kh * kw == 1 or kh * kw >= 25)
        self.winograd_kind = winograd if winograd in _WINOGRAD_KINDS else None
        self.winograd = (self.winograd_kind is not None and not self.gemm and (kh, kw) == (3, 3)
                         and self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1)
        self._versions = None
        self.refresh()

    def _param_versions(self):
        return (self.weight._version, None if self.bias is None else self.bias._version,
                self.weight.data_ptr())

    def refresh(self, force: bool = False) -> None:
        """Re-derive the weight copies when the parameters moved (or always, with ``force``:
        after a change through ``.data`` or NumPy, which no version counter sees)."""
        v = self._param_versions()
        if v == self._versions and not force:
            return
        self._versions = v
        w = self.weight.detach()
        self.b = None if self.bias is None else self.bias.detach()
        self.w_cl = None
        self.wino = None
        if self.gemm:
            self.w_mat = w.reshape(w.shape[0], -1)          # a view when the parameter is contiguous
        elif self.winograd:
            self.wino = winograd_for(w, self.winograd_kind)
        elif w.is_floating_point():
            # oneDNN (CPU) and cuDNN (GPU) both run channels-last maps best with channels-last weights.
            self.w_cl = w.contiguous(memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor, relu: bool, pad: tuple = (0, 0), origin: tuple = (0, 0)) -> torch.Tensor:
        """Convolution of ``x`` (N, C, h, w) with zero padding ``pad``; ReLU applied when ``relu``.

        ``origin``: where the output's first pixel lies in the whole map (row, column): the
        C++ Winograd kernel lays its tiles on the whole map's grid (see :class:`WinogradCpu`).
        """
        self.refresh()
        if isinstance(self.wino, WinogradCpu) and x.dtype == torch.float32 and x.device.type == "cpu":
            return self.wino(x, self.b, relu, pad, origin)
        if self.gemm or self.wino is not None:
            if pad[0] or pad[1]:
                x = F.pad(x, (pad[1], pad[1], pad[0], pad[0]))
            return self._gemm(x, relu) if self.gemm else self.wino(x, self.b, relu)
        w = self.w_cl if self.w_cl is not None else self.weight.detach()
        if self.impl == "mkldnn" and x.dtype == torch.float32 and x.device.type == "cpu":
            # the same arithmetic for every map size (exact tiles): see onednn_conv2d
            y = onednn_conv2d(x, self.weight, self.b, self.stride, pad, self.dilation, self.groups)
            return torch.relu_(y) if relu else y
        if not x.is_contiguous(memory_format=torch.channels_last):
            w = self.weight.detach()
        y = F.conv2d(x, w, self.b, self.stride, tuple(pad), self.dilation, self.groups)
        return torch.relu_(y) if relu else y

    def _gemm(self, x: torch.Tensor, relu: bool) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        kh, kw = self.weight.shape[2], self.weight.shape[3]
        cout = self.w_mat.shape[0]
        if kh * kw == 1:
            # 1x1: out (N*h*w, Cout) = x (N*h*w, Cin) @ W^T on a channels-last map.
            xs = x[:, :, ::self.stride[0], ::self.stride[1]].contiguous(memory_format=torch.channels_last)
            h, w = xs.shape[2], xs.shape[3]
            rows = xs.permute(0, 2, 3, 1).reshape(n * h * w, c)
            y = _fixed_gemm(self.w_mat, rows, 0)
            if self.b is not None:
                y += self.b
            if relu:
                y.relu_()
            return y.view(n, h, w, cout).permute(0, 3, 1, 2)      # channels-last (N, Cout, h, w)
        # im2col then one GEMM per image: (Cout, Cin*kh*kw) @ (Cin*kh*kw, oh*ow).
        oh = conv_out(x.shape[2], kh, self.stride[0], 0, self.dilation[0])
        ow = conv_out(x.shape[3], kw, self.stride[1], 0, self.dilation[1])
        cols = F.unfold(x, (kh, kw), dilation=self.dilation, stride=self.stride)
        y = torch.stack([_fixed_gemm(self.w_mat, cols[i], 1) for i in range(n)])   # (N, Cout, oh*ow)
        if self.b is not None:
            y += self.b[:, None]
        if relu:
            y.relu_()
        return y.view(n, cout, oh, ow)
