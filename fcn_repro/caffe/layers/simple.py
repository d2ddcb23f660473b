"""Layers that move blobs around without arithmetic: Split, Silence, Flatten, Reshape."""
from __future__ import annotations

import math


from .base import Layer, canonical_axis, fmt_shape, register


@register("Split")
class Split(Layer):
    """Caffe's SplitLayer: every top is the bottom (gradients add up)."""
    exact_bottoms = 1
    min_tops = 1
    fresh_output = False

    def setup(self, bottom_shapes):
        return [tuple(bottom_shapes[0])] * len(self.top_names)

    def forward(self, x, inplace=False):
        return [x] * len(self.top_names)


@register("Silence")
class Silence(Layer):
    """Caffe's SilenceLayer: consumes its bottoms so they are not net outputs."""
    min_bottoms = 1
    exact_tops = 0

    def setup(self, bottom_shapes):
        return []

    def forward(self, *xs, inplace=False):
        return []


@register("Flatten")
class Flatten(Layer):
    """Caffe's FlattenLayer: axes [axis, end_axis] become one (defaults 1, -1)."""
    exact_bottoms = 1
    exact_tops = 1
    fresh_output = False

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        p = self.param.sub("flatten_param")
        self.axis_param = int(p.get("axis", 1))
        self.end_axis_param = int(p.get("end_axis", -1))

    def _shape(self, s):
        a = canonical_axis(self.axis_param, len(s), self, "flatten_param.axis")
        e = canonical_axis(self.end_axis_param, len(s), self, "flatten_param.end_axis")
        mid = s[a:e + 1]
        n = None if any(d is None for d in mid) else math.prod(mid)
        return tuple(s[:a]) + (n,) + tuple(s[e + 1:])

    def setup(self, bottom_shapes):
        return [self._shape(bottom_shapes[0])]

    def forward(self, x, inplace=False):
        return [x.reshape(self._shape(tuple(x.shape)))]


@register("Reshape")
class Reshape(Layer):
    """Caffe's ReshapeLayer: ``shape`` dims replace bottom axes [axis, axis+num_axes);
    0 copies the bottom's dim at that position, -1 (at most once) is inferred."""
    exact_bottoms = 1
    exact_tops = 1
    fresh_output = False

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        p = self.param.sub("reshape_param")
        self.dims = [int(d) for d in p.sub("shape").getall("dim")]
        self.axis_param = int(p.get("axis", 0))
        self.num_axes = int(p.get("num_axes", -1))
        if sum(d == -1 for d in self.dims) > 1:
            raise self.error("reshape_param.shape may hold at most one -1")
        if any(d < -1 for d in self.dims):
            raise self.error(f"reshape_param.shape dims must be >= -1, got {self.dims}")

    def _shape(self, s, strict):
        nd = len(s)
        # Caffe: axis may be nd (insert at the end); negative counts from the end + 1.
        axis = self.axis_param if self.axis_param >= 0 else self.axis_param + nd + 1
        if not 0 <= axis <= nd:
            raise self.error(f"reshape_param.axis {self.axis_param} out of range for a {nd}-D bottom")
        end = nd if self.num_axes == -1 else axis + self.num_axes
        if end > nd:
            raise self.error(f"reshape_param axis {axis} + num_axes {self.num_axes} exceeds {nd} axes")
        mid = []
        for i, d in enumerate(self.dims):
            if d == 0:
                if axis + i >= nd:
                    raise self.error(f"shape dim {i} is 0 (copy) but the bottom has no axis {axis + i}")
                mid.append(s[axis + i])
            else:
                mid.append(d)
        out = list(s[:axis]) + mid + list(s[end:])
        if -1 in out:
            known = [d for d in out if d != -1]
            total = None if any(d is None for d in s) else math.prod(s)
            if total is None or any(d is None for d in known):
                out[out.index(-1)] = None
            else:
                k = math.prod(known)
                if k == 0 or total % k:
                    raise self.error(f"cannot infer the -1 dim of {self.dims} for bottom of shape {fmt_shape(s)}")
                out[out.index(-1)] = total // k
        if strict and math.prod(out) != math.prod(s):
            raise self.error(f"reshape of bottom {self.bottom_names[0]!r} {fmt_shape(s)} to {fmt_shape(out)} "
                             "changes the element count")
        return tuple(out)

    def setup(self, bottom_shapes):
        return [self._shape(tuple(bottom_shapes[0]), False)]

    def forward(self, x, inplace=False):
        return [x.reshape(self._shape(tuple(x.shape), True))]
