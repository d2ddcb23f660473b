"""LRN: Caffe's local response normalization (ACROSS_CHANNELS and WITHIN_CHANNEL).

ACROSS_CHANNELS: scale = k + (alpha/n) * sum of x^2 over the n channels
centred on c (zero beyond the edges); y = x * scale^-beta.
WITHIN_CHANNEL: scale = 1 + alpha * AVE-pool(x^2; n x n, pad (n-1)/2,
stride 1), Caffe's AVE pooling (divisor counted with the padding, which here
is n*n everywhere); y = x * scale^-beta. ``k`` plays no part in this mode.
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
        if self.size < 1 or self.size % 2 == 0:
            raise self.error(f"lrn_param.local_size must be odd and positive, got {self.size}")
        self.alpha = float(p.get("alpha", 1.0))
        self.beta = float(p.get("beta", 0.75))
        self.k = float(p.get("k", 1.0))
        self.region = enum_value(p.get("norm_region"), ("ACROSS_CHANNELS", "WITHIN_CHANNEL"),
                                 "lrn_param.norm_region", self)

    def setup(self, bottom_shapes):
        s = bottom_shapes[0]
        if len(s) != 4:
            raise self.error(f"bottom {self.bottom_names[0]!r} must be 4-D, got {fmt_shape(s)}")
        return [tuple(s)]

    def forward(self, x: torch.Tensor, inplace: bool = False):
        n = self.size
        half = (n - 1) // 2
        sq = x * x
        if self.region == "ACROSS_CHANNELS":
            # Sum over a window of n channels (zero beyond the edges): n shifted
            # slices of the channel-padded squares.
            c = x.shape[1]
            sqp = F.pad(sq, (0, 0, 0, 0, half, half))
            ssum = sqp[:, 0:c]
            for i in range(1, n):
                ssum = ssum + sqp[:, i:i + c]
            scale = ssum * (self.alpha / n) + self.k
        else:
            # Caffe builds this mode from layers: Power (square), Pooling AVE
            # (kernel n, pad (n-1)/2, stride 1: divisor n*n everywhere), Power
            # (shift 1, scale alpha, power -beta), Eltwise PROD.
            avg = F.avg_pool2d(sq, n, stride=1, padding=half, count_include_pad=True)
            scale = avg * self.alpha + 1.0
        return [x * scale.pow(-self.beta)]
