"""Crop: Caffe's CropLayer.

Crops bottom 0 to the shape of bottom 1 on every axis >= ``axis`` (default 2),
starting at ``offset`` (none: 0 everywhere; one value: the same for every
cropped axis; else one per cropped axis). Offsets count from the top-left
corner (FCN's offsets come from Caffe's coord_map; the crop is not centred).
"""
from __future__ import annotations

import torch

from .base import Layer, canonical_axis, fmt_shape, register


@register("Crop")
class Crop(Layer):
    exact_bottoms = 2
    exact_tops = 1
    fresh_output = False  # the top is a view of bottom 0

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        p = self.param.sub("crop_param")
        self.axis_param = int(p.get("axis", 2))
        self.offsets_param = [int(v) for v in p.getall("offset")]

    def offsets(self, ndim: int) -> tuple[int, list[int]]:
        """(canonical axis, offset per cropped axis) for ``ndim``-D bottoms."""
        axis = canonical_axis(self.axis_param, ndim, self, "crop_param.axis")
        n = ndim - axis
        if len(self.offsets_param) > 1 and len(self.offsets_param) != n:
            raise self.error(f"crop_param gives {len(self.offsets_param)} offsets; cropping from axis "
                             f"{axis} of {ndim}-D bottoms needs 0, 1 or {n}")
        if not self.offsets_param:
            offs = [0] * n
        elif len(self.offsets_param) == 1:
            offs = self.offsets_param * n
        else:
            offs = list(self.offsets_param)
        return axis, offs

    def out_shape(self, s0, s1, check: bool = False):
        if len(s0) != len(s1):
            raise self.error(f"bottoms {self.bottom_names[0]!r} {fmt_shape(s0)} and {self.bottom_names[1]!r} "
                             f"{fmt_shape(s1)} must have the same number of axes")
        axis, offs = self.offsets(len(s0))
        out = list(s0[:axis]) + list(s1[axis:])
        for i in range(axis, len(s0)):
            a, b, o = s0[i], s1[i], offs[i - axis]
            if check and a is not None and b is not None and (o < 0 or o + b > a):
                raise self.error(
                    f"cannot crop bottom {self.bottom_names[0]!r} of shape {fmt_shape(s0)} to the shape of "
                    f"{self.bottom_names[1]!r} {fmt_shape(s1)}: on axis {i} offset {o} + size {b} exceeds {a} "
                    "(Caffe requires offset + size <= bottom size)")
        return tuple(out), axis, offs

    def setup(self, bottom_shapes):
        # Input shapes in deploy prototxts are placeholders: range checks wait for real tensors.
        shape, _, _ = self.out_shape(bottom_shapes[0], bottom_shapes[1])
        return [shape]

    def forward(self, x: torch.Tensor, ref: torch.Tensor, inplace: bool = False):
        shape, axis, offs = self.out_shape(tuple(x.shape), tuple(ref.shape), check=True)
        idx = [slice(None)] * axis + [slice(o, o + n) for o, n in zip(offs, shape[axis:])]
        return [x[tuple(idx)]]
