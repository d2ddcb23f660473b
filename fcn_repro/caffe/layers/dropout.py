"""Dropout: Caffe's DropoutLayer.

TEST: identity (or, with ``scale_train: false``, multiply by 1 - ratio).
TRAIN: keep each element with probability 1 - ratio and scale the kept ones
by 1/(1 - ratio) (no scaling with ``scale_train: false``). Ratio 0 passes the
input through unchanged, at train time too.
"""
from __future__ import annotations

import torch

from .base import Layer, register


@register("Dropout")
class Dropout(Layer):
    exact_bottoms = 1
    exact_tops = 1
    fresh_output = False  # identity at TEST returns the bottom itself

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        p = self.param.sub("dropout_param")
        self.ratio = float(p.get("dropout_ratio", 0.5))
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")
        self.scale_train = bool(p.get("scale_train", True))

    @property
    def is_identity(self) -> bool:
        """Whether forward returns its bottom unchanged (TEST phase with scale_train)."""
        return self.phase != "TRAIN" and self.scale_train

    def setup(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def forward(self, x: torch.Tensor, inplace: bool = False):
        keep = 1.0 - self.ratio
        if self.phase != "TRAIN":
            return [x if self.scale_train else x * keep]
        if self.ratio == 0.0:
            return [x]
        mask = torch.empty_like(x).bernoulli_(keep)
        return [x * mask * (1.0 / keep) if self.scale_train else x * mask]
