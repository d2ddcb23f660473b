"""Eltwise: Caffe's EltwiseLayer (SUM with optional coefficients, PROD, MAX)."""
from __future__ import annotations

import torch

from .base import Layer, enum_value, fmt_shape, register


@register("Eltwise")
class Eltwise(Layer):
    min_bottoms = 2
    exact_tops = 1

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        p = self.param.sub("eltwise_param")
        self.operation = enum_value(p.get("operation", "SUM"), ("PROD", "SUM", "MAX"),
                                    "eltwise_param.operation", self)
        coeffs = [float(c) for c in p.getall("coeff")]  # text format may give ints: coeff: -2
        if coeffs and self.operation != "SUM":
            raise self.error("coeff is only allowed with operation SUM (Caffe)")
        if coeffs and len(coeffs) != len(self.bottom_names):
            raise self.error(f"eltwise_param gives {len(coeffs)} coeff values for "
                             f"{len(self.bottom_names)} bottoms (need one per bottom)")
        self.coeffs = coeffs or [1.0] * len(self.bottom_names)

    def _check(self, shapes):
        first = shapes[0]
        for n, s in zip(self.bottom_names[1:], shapes[1:]):
            if len(s) != len(first) or any(a is not None and b is not None and a != b
                                           for a, b in zip(first, s)):
                raise self.error(f"bottoms must have the same shape: {self.bottom_names[0]!r} is "
                                 f"{fmt_shape(first)}, {n!r} is {fmt_shape(s)}")

    def setup(self, bottom_shapes):
        # Spatial sizes may be placeholders: only the axis count is checked here.
        first = bottom_shapes[0]
        for n, s in zip(self.bottom_names[1:], bottom_shapes[1:]):
            if len(s) != len(first):
                raise self.error(f"bottoms must have the same shape: {self.bottom_names[0]!r} is "
                                 f"{fmt_shape(first)}, {n!r} is {fmt_shape(s)}")
        return [tuple(a if a is not None else b for a, b in zip(first, bottom_shapes[-1]))]

    def forward(self, *xs: torch.Tensor, inplace: bool = False):
        self._check([tuple(x.shape) for x in xs])
        if self.operation == "SUM":
            c = self.coeffs
            # Caffe: top = 0; top += coeff_i * bottom_i for each bottom in order.
            y = xs[0] if c[0] == 1.0 else xs[0] * c[0]
            for ci, xi in zip(c[1:], xs[1:]):
                y = y + xi if ci == 1.0 else y + xi * ci
            return [y]
        if self.operation == "PROD":
            y = xs[0] * xs[1]
            for xi in xs[2:]:
                y = y * xi
            return [y]
        # MAX, with Caffe's tie rule: between bottoms 0 and 1 the element of
        # bottom 0 wins only if strictly greater (ties go to bottom 1); a later
        # bottom wins only if strictly greater than the running max. The
        # gradient flows to the winner only (torch.where routes it so).
        y = torch.where(xs[0] > xs[1], xs[0], xs[1])
        for xi in xs[2:]:
            y = torch.where(xi > y, xi, y)
        return [y]
