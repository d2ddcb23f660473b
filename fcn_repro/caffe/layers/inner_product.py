"""InnerProduct: Caffe's fully connected layer.

Bottom axes [axis, end) are flattened to K inputs (``axis`` default 1);
weight (O, K) (or (K, O) with ``transpose: true``), bias (O,); top shape is
bottom.shape[:axis] + (O,).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Layer, canonical_axis, fmt_shape, register


@register("InnerProduct")
class InnerProduct(Layer):
    exact_bottoms = 1
    exact_tops = 1

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        p = self.param.sub("inner_product_param")
        if not p.has("num_output"):
            raise self.error("inner_product_param.num_output is required")
        self.num_output = int(p.get("num_output"))
        self.bias_term = bool(p.get("bias_term", True))
        self.transpose = bool(p.get("transpose", False))
        self.axis_param = int(p.get("axis", 1))

    def setup(self, bottom_shapes):
        s = bottom_shapes[0]
        axis = canonical_axis(self.axis_param, len(s), self, "inner_product_param.axis")
        tail = s[axis:]
        k = None if any(d is None for d in tail) else math.prod(tail)
        if k is None:
            raise self.error(f"needs the full shape of bottom {self.bottom_names[0]!r} from axis {axis} "
                             f"to size its weights, got {fmt_shape(s)}; pass Net(..., input_shapes=...)")
        self.k = k
        self.add_blob((k, self.num_output) if self.transpose else (self.num_output, k), "weights")
        if self.bias_term:
            self.add_blob((self.num_output,), "bias")
        return [tuple(s[:axis]) + (self.num_output,)]

    def forward(self, x: torch.Tensor, inplace: bool = False):
        axis = canonical_axis(self.axis_param, x.dim(), self, "inner_product_param.axis")
        k = math.prod(x.shape[axis:])
        if k != self.k:
            raise self.error(f"bottom {self.bottom_names[0]!r} of shape {fmt_shape(tuple(x.shape))} has {k} "
                             f"inputs from axis {axis}; the weights expect {self.k} (Caffe's InnerProduct "
                             "fixes its input size)")
        w = self.blobs[0].t() if self.transpose else self.blobs[0]
        b = self.blobs[1] if self.bias_term else None
        y = F.linear(x.reshape(tuple(x.shape[:axis]) + (k,)), w, b)
        return [y]
