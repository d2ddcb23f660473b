"""Concat: Caffe's ConcatLayer (along ``axis``, default 1; legacy ``concat_dim``)."""
from __future__ import annotations

import torch

from .base import Layer, canonical_axis, fmt_shape, register


@register("Concat")
class Concat(Layer):
    min_bottoms = 1
    exact_tops = 1

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        p = self.param.sub("concat_param")
        if p.has("axis") and p.has("concat_dim"):
            raise self.error("give either concat_param.axis or the legacy concat_dim, not both")
        self.axis_param = int(p.get("axis", p.get("concat_dim", 1)))

    def _shape(self, shapes):
        first = shapes[0]
        axis = canonical_axis(self.axis_param, len(first), self, "concat_param.axis")
        total = 0
        for n, s in zip(self.bottom_names, shapes):
            if len(s) != len(first) or any(i != axis and a is not None and b is not None and a != b
                                           for i, (a, b) in enumerate(zip(first, s))):
                raise self.error(f"bottoms must match on every axis but {axis}: {self.bottom_names[0]!r} is "
                                 f"{fmt_shape(first)}, {n!r} is {fmt_shape(s)}")
            total = None if total is None or s[axis] is None else total + s[axis]
        return tuple(total if i == axis else d for i, d in enumerate(first)), axis

    def setup(self, bottom_shapes):
        return [self._shape(bottom_shapes)[0]]

    def forward(self, *xs: torch.Tensor, inplace: bool = False):
        _, axis = self._shape([tuple(x.shape) for x in xs])
        return [torch.cat(xs, axis)]  # a copy even for one bottom, as in Caffe
