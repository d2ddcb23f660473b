"""Scale: Caffe's ScaleLayer, y = x * gamma (+ beta).

gamma has the shape of bottom 0's axes [axis, axis + num_axes) (``axis``
default 1, ``num_axes`` default 1, -1 = every axis from ``axis``, 0 = a
scalar) and is broadcast over the others. gamma is the layer's first
parameter blob, or bottom 1 when there are two bottoms (then it is not a
parameter). With ``bias_term`` a beta blob of gamma's shape follows.
"""
from __future__ import annotations

import torch

from .base import Layer, canonical_axis, fmt_shape, register


@register("Scale")
class Scale(Layer):
    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        p = self.param.sub("scale_param")
        self.axis_param = int(p.get("axis", 1))
        self.num_axes = int(p.get("num_axes", 1))
        if self.num_axes < -1:
            raise self.error(f"scale_param.num_axes must be >= -1, got {self.num_axes}")
        self.bias_term = bool(p.get("bias_term", False))

    def _scale_axis(self, xshape, scale_ndim):
        # Caffe: a scalar gamma (0 axes) applies from axis 0 whatever `axis` says.
        if scale_ndim == 0:
            return 0
        axis = canonical_axis(self.axis_param, len(xshape), self, "scale_param.axis")
        if axis + scale_ndim > len(xshape):
            raise self.error(f"gamma with {scale_ndim} axes does not fit bottom {self.bottom_names[0]!r} "
                             f"of shape {fmt_shape(xshape)} from axis {axis}")
        return axis

    def setup(self, bottom_shapes):
        x = bottom_shapes[0]
        if len(bottom_shapes) == 1:
            axis = canonical_axis(self.axis_param, len(x), self, "scale_param.axis") if len(x) else 0
            n = len(x) - axis if self.num_axes == -1 else self.num_axes
            if axis + n > len(x):
                raise self.error(f"scale_param axis {axis} + num_axes {n} exceeds the {len(x)} axes of "
                                 f"bottom {self.bottom_names[0]!r}")
            gshape = tuple(x[axis:axis + n])
            self.add_blob(gshape, "gamma")
        else:
            gshape = tuple(bottom_shapes[1])
            self._scale_axis(x, len(gshape))
        if self.bias_term:
            self.add_blob(gshape, "beta")
        return [tuple(x)]

    def forward(self, x: torch.Tensor, *gamma_bottom: torch.Tensor, inplace: bool = False):
        if gamma_bottom:
            gamma = gamma_bottom[0]
            beta = self.blobs[0] if self.bias_term else None
        else:
            gamma = self.blobs[0]
            beta = self.blobs[1] if self.bias_term else None
        axis = self._scale_axis(tuple(x.shape), gamma.dim())
        if tuple(x.shape[axis:axis + gamma.dim()]) != tuple(gamma.shape):
            raise self.error(f"gamma of shape {fmt_shape(tuple(gamma.shape))} does not match bottom "
                             f"{self.bottom_names[0]!r} of shape {fmt_shape(tuple(x.shape))} at axes "
                             f"{axis}..{axis + gamma.dim() - 1}")
        trail = (1,) * (x.dim() - axis - gamma.dim())
        y = x * gamma.reshape(tuple(gamma.shape) + trail)
        if beta is not None:
            y = y + beta.reshape(tuple(beta.shape) + trail)
        return [y]
