"""Pooling: Caffe's PoolingLayer (MAX and AVE; CEIL and FLOOR round modes; global).

Caffe's rules, which we follow exactly:

* output size (CEIL, the default): ceil((H + 2p - k) / s) + 1; FLOOR uses
  floor. Then, only when the layer has any padding, a last window that would
  start in the bottom/right padding is dropped: if (out-1)*s >= H + p, out -= 1.
* MAX takes the maximum over the window clipped to the image (the first
  maximum in scan order receives the gradient).
* AVE divides the sum over the clipped window by the window size counted
  BEFORE clipping to the image, but after clipping to the padded image:
  hstart = o*s - p, hend = min(hstart + k, H + p), size = (hend-hstart)(wend-wstart).

PyTorch's max_pool2d / avg_pool2d(count_include_pad=True) compute the same
windows and divisors, but choose the output size by a slightly different rule
(they drop the padding-start window even without padding, and refuse pads
larger than k/2). So the layer computes Caffe's output size itself and uses
the stock kernels only when they agree with it; otherwise it pads explicitly
(-inf for MAX, zeros for AVE with an explicit divisor map) and pools with no
implicit padding, which is Caffe's rule written out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Layer, enum_value, fmt_shape, register
from ..shapes import caffe_pool_out, pool_window, torch_pool_out  # noqa: F401  (re-exported)

FLT_MAX = 3.4028234663852886e38


def _ave_divisor(size, out, k: int, s: int, p: int, like: torch.Tensor) -> torch.Tensor:
    """Caffe's AVE pool_size along one axis for each output position, (out,) in like's dtype.

    Computed by tensor ops (not a Python loop over positions) so that a traced
    graph keeps ``size`` and ``out`` symbolic.
    """
    start = torch.arange(out, device=like.device, dtype=like.dtype) * s - p
    end = torch.clamp(start + k, max=size + p)
    return end - start


@register("Pooling")
class Pooling(Layer):
    exact_bottoms = 1
    min_tops = 1
    max_tops = 2  # MAX may output the argmax mask as a second top

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        p = self.param.sub("pooling_param")
        self.method = enum_value(p.get("pool"), ("MAX", "AVE", "STOCHASTIC"), "pooling_param.pool", self)
        if self.method == "STOCHASTIC":
            raise self.error("STOCHASTIC pooling is not supported")
        self.round_mode = enum_value(p.get("round_mode"), ("CEIL", "FLOOR"), "pooling_param.round_mode", self)
        self.global_pooling = bool(p.get("global_pooling", False))
        self.window = pool_window(p, self.error)
        self.kernel, self.stride, self.pad = self.window.kernel, self.window.stride, self.window.pad
        if len(self.top_names) == 2 and self.method != "MAX":
            raise self.error("only MAX pooling has a second (mask) top")
        # Tests flip this to exercise the explicit-padding path everywhere.
        self.force_explicit = False

    @property
    def simple_max(self) -> bool:
        """MAX over (kernel, stride) windows with no padding, CEIL rounding, one top, windows that
        overlap or touch (kernel >= stride): the pooling the fast path computes on structured blobs."""
        return (self.method == "MAX" and not self.global_pooling and tuple(self.pad) == (0, 0)
                and self.round_mode == "CEIL" and len(self.top_names) == 1 and not self.force_explicit
                and self.kernel[0] >= self.stride[0] and self.kernel[1] >= self.stride[1])

    def out_size(self, h, w, min_=min):
        k = self.kernel if not self.global_pooling else (h, w)
        ceil = self.round_mode == "CEIL"
        any_pad = self.pad[0] > 0 or self.pad[1] > 0
        return tuple(None if n is None or kk is None else
                     caffe_pool_out(n, kk, s, p, ceil, any_pad, min_)
                     for n, kk, s, p in zip((h, w), k, self.stride, self.pad))

    def setup(self, bottom_shapes):
        s = bottom_shapes[0]
        if len(s) != 4:
            raise self.error(f"bottom {self.bottom_names[0]!r} must be 4-D, got {fmt_shape(s)}")
        oh, ow = self.out_size(s[2], s[3])
        return [(s[0], s[1], oh, ow)] * len(self.top_names)

    def forward(self, x: torch.Tensor, inplace: bool = False):
        if x.dim() != 4:
            raise self.error(f"bottom {self.bottom_names[0]!r} must be 4-D, got {fmt_shape(tuple(x.shape))}")
        H, W = x.shape[2], x.shape[3]
        k = (H, W) if self.global_pooling else self.kernel
        s, p = self.stride, self.pad
        # Traced with symbolic sizes (torch.export, torch.compile(dynamic=True)):
        # Caffe's size is computed without a branch on the input size, and the
        # explicit path below pools exactly Caffe's windows in any runtime
        # (the stock kernels' and ONNX's ceil rules differ from Caffe's).
        symbolic = isinstance(H, torch.SymInt) or isinstance(W, torch.SymInt)
        oh, ow = self.out_size(H, W, torch.sym_min if symbolic else min)
        if symbolic:
            torch._check(oh >= 1, lambda: self._empty_msg(x, k, "oh"))
            torch._check(ow >= 1, lambda: self._empty_msg(x, k, "ow"))
        elif oh < 1 or ow < 1:
            raise self.error(self._empty_msg(x, k, f"{oh}x{ow}"))
        want_mask = len(self.top_names) == 2
        ceil = self.round_mode == "CEIL"
        native = (not symbolic and not self.force_explicit and p[0] <= k[0] // 2 and p[1] <= k[1] // 2
                  and torch_pool_out(H, k[0], s[0], p[0], ceil) == oh
                  and torch_pool_out(W, k[1], s[1], p[1], ceil) == ow)
        if native:
            if self.method == "MAX":
                if want_mask:
                    y, idx = F.max_pool2d(x, k, s, p, ceil_mode=ceil, return_indices=True)
                    return [y, idx.to(x.dtype)]
                return [F.max_pool2d(x, k, s, p, ceil_mode=ceil)]
            return [F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=True)]
        return self._explicit(x, k, s, p, oh, ow, want_mask)

    def _empty_msg(self, x, k, out):
        return (f"bottom {self.bottom_names[0]!r} of shape {fmt_shape(tuple(x.shape))} gives an "
                f"empty {out} output for kernel {k}, stride {self.stride}, pad {self.pad}")

    def _explicit(self, x, k, s, p, oh, ow, want_mask):
        """Caffe's windows written out: pad (or trim) to exactly (out-1)*s + k."""
        H, W = x.shape[2], x.shape[3]
        pb = (oh - 1) * s[0] + k[0] - H - p[0]
        pr = (ow - 1) * s[1] + k[1] - W - p[1]
        if self.method == "MAX":
            xp = F.pad(x, (p[1], pr, p[0], pb), value=float("-inf"))
            if want_mask:
                y, idx = F.max_pool2d(xp, k, s, return_indices=True)
                wp = xp.shape[3]
                hh, ww = idx // wp - p[0], idx % wp - p[1]
                inside = (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
                mask = torch.where(inside, hh * W + ww, torch.full_like(idx, -1))
                return [y.clamp_min(-FLT_MAX), mask.to(x.dtype)]
            # A window entirely outside the image (possible only when stride >
            # kernel) yields -FLT_MAX in Caffe, whose running max starts there.
            return [F.max_pool2d(xp, k, s).clamp_min(-FLT_MAX)]
        xp = F.pad(x, (p[1], pr, p[0], pb), value=0.0)
        if isinstance(H, torch.SymInt) or isinstance(W, torch.SymInt):
            # Traced for export: torch.onnx (2.13) drops avg_pool2d's
            # divisor_override (AveragePool has none), so the window sums are
            # written as mean * area there (float rounding apart, the same sums).
            sums = F.avg_pool2d(xp, k, s) * float(k[0] * k[1])
        else:
            sums = F.avg_pool2d(xp, k, s, divisor_override=1)
        dh = _ave_divisor(H, oh, k[0], s[0], p[0], x)
        dw = _ave_divisor(W, ow, k[1], s[1], p[1], x)
        return [sums / (dh[:, None] * dw[None, :])]
