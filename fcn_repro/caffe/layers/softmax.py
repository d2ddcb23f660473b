"""Softmax: Caffe's SoftmaxLayer along ``softmax_param.axis`` (default 1)."""
from __future__ import annotations

import torch

from .base import Layer, canonical_axis, register


@register("Softmax")
class Softmax(Layer):
    exact_bottoms = 1
    exact_tops = 1

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.axis_param = int(self.param.sub("softmax_param").get("axis", 1))

    def setup(self, bottom_shapes):
        canonical_axis(self.axis_param, len(bottom_shapes[0]), self, "softmax_param.axis")
        return [tuple(bottom_shapes[0])]

    def forward(self, x: torch.Tensor, inplace: bool = False):
        return [torch.softmax(x, canonical_axis(self.axis_param, x.dim(), self, "softmax_param.axis"))]
