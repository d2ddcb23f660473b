"""LRN: Caffe's local response normalization (ACROSS_CHANNELS and WITHIN_CHANNEL).

ACROSS_CHANNELS: scale = k + (alpha/n) * sum of x^2 over the n channels
centred on c (zero beyond the edges); y = x * scale^-beta.
WITHIN_CHANNEL: scale = 1 + alpha * AVE-pool(x^2; n x n, pad (n-1)/2,
stride 1), Caffe's AVE pooling (divisor counted with the padding, which here
is n*n everywhere); y = x * scale^-beta. ``k`` plays no part in this mode.

A window wider than the blob reaches nothing more than the whole blob: the
channel padding (ACROSS_CHANNELS, a scratch of C + 2 * pad channels) is at
most C - 1 on each side, and the pooling window (WITHIN_CHANNEL) at most the
map's size, with the same sums and divisors as the full window. So a huge
``local_size`` neither allocates past the blob budget nor loops without end;
the scratch is checked against ``blob_elements`` when the net is built.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Layer, enum_value, fmt_shape, register


@register("LRN")
class LRN(Layer):
    exact_bottoms = 1
    exact_tops = 1

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        p = self.param.sub("lrn_param")
        self.size = int(p.get("local_size", 5))
        if self.size < 1 or self.size % 2 == 0 or self.size > 2 ** 31 - 1:
            # Caffe keeps local_size in an int: past INT_MAX it is negative and refused as not odd
            raise self.error(f"lrn_param.local_size must be odd, positive and at most 2^31 - 1, got {self.size}")
        self.alpha = float(p.get("alpha", 1.0))
        self.beta = float(p.get("beta", 0.75))
        self.k = float(p.get("k", 1.0))
        self.region = enum_value(p.get("norm_region"), ("ACROSS_CHANNELS", "WITHIN_CHANNEL"),
                                 "lrn_param.norm_region", self)

    def setup(self, bottom_shapes):
        s = bottom_shapes[0]
        if len(s) != 4:
            raise self.error(f"bottom {self.bottom_names[0]!r} must be 4-D, got {fmt_shape(s)}")
        if self.region == "ACROSS_CHANNELS" and s[1] is not None:
            pad = self._channel_pad(int(s[1]))
            self.check_blob_size((s[0], int(s[1]) + 2 * pad, s[2], s[3]), f"scratch (squares padded by {pad} "
                                 "channels on each side)")
        return [tuple(s)]

    def _channel_pad(self, c: int) -> int:
        """The channel padding: half the window, but no more than reaches the far channel."""
        return min((self.size - 1) // 2, max(c - 1, 0))

    def forward(self, x: torch.Tensor, inplace: bool = False):
        n = self.size
        half = (n - 1) // 2
        sq = x * x
        if self.region == "ACROSS_CHANNELS":
            # Sum over a window of n channels (zero beyond the edges): n shifted
            # slices of the channel-padded squares.
            c = x.shape[1]
            pad = self._channel_pad(int(c))   # slices wholly in the padding add nothing
            sqp = F.pad(sq, (0, 0, 0, 0, pad, pad))
            ssum = sqp[:, 0:c]
            for i in range(1, 2 * pad + 1):
                ssum = ssum + sqp[:, i:i + c]
            scale = ssum * (self.alpha / n) + self.k
        else:
            # Caffe builds this mode from layers: Power (square), Pooling AVE
            # (kernel n, pad (n-1)/2, stride 1: divisor n*n everywhere), Power
            # (shift 1, scale alpha, power -beta), Eltwise PROD.
            hy, hx = half, half
            h, w = x.shape[2], x.shape[3]
            if type(h) is int and type(w) is int:   # not symbolic sizes (an export): those stay out of the kernel
                hy, hx = min(half, max(h - 1, 0)), min(half, max(w - 1, 0))
            if (hy, hx) == (half, half):
                avg = F.avg_pool2d(sq, n, stride=1, padding=half, count_include_pad=True)
            else:   # the in-map part of each n x n window, over Caffe's divisor n * n
                avg = F.avg_pool2d(sq, (2 * hy + 1, 2 * hx + 1), stride=1, padding=(hy, hx), divisor_override=n * n)
            scale = avg * self.alpha + 1.0
        return [x * scale.pow(-self.beta)]
