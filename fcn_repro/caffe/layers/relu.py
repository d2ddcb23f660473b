"""ReLU: Caffe's ReLULayer, y = max(x, 0) + negative_slope * min(x, 0).

Gradient: 1 where x > 0, negative_slope elsewhere (x = 0 included), as Caffe.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Layer, register


@register("ReLU")
class ReLU(Layer):
    exact_bottoms = 1
    exact_tops = 1
    inplace_capable = True

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.negative_slope = float(self.param.sub("relu_param").get("negative_slope", 0.0))

    def setup(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def forward(self, x: torch.Tensor, inplace: bool = False):
        if self.negative_slope == 0.0:
            return [torch.relu_(x) if inplace else torch.relu(x)]
        return [F.leaky_relu(x, self.negative_slope, inplace=inplace)]
