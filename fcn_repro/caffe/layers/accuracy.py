"""Accuracy: Caffe's AccuracyLayer (top_k, axis, ignore_label; optional per-class top).

A position counts as correct when fewer than ``top_k`` classes score strictly
higher than the true class. Top 0: correct / counted positions; top 1 (when
given): the per-class accuracy (0 for a class with no positions).
"""
from __future__ import annotations

import math

import torch

from .base import Layer, canonical_axis, fmt_shape, register


@register("Accuracy")
class Accuracy(Layer):
    exact_bottoms = 2
    min_tops = 1
    max_tops = 2

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        p = self.param.sub("accuracy_param")
        self.top_k = int(p.get("top_k", 1))
        self.axis_param = int(p.get("axis", 1))
        self.ignore_label = int(p.get("ignore_label")) if p.has("ignore_label") else None

    def setup(self, bottom_shapes):
        s = bottom_shapes[0]
        axis = canonical_axis(self.axis_param, len(s), self, "accuracy_param.axis")
        return [()] + ([(s[axis],)] if len(self.top_names) == 2 else [])

    @torch.no_grad()
    def forward(self, x, label, inplace=False):
        axis = canonical_axis(self.axis_param, x.dim(), self, "accuracy_param.axis")
        outer, inner, c = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:]), x.shape[axis]
        if label.numel() != outer * inner:
            raise self.error(f"label blob {self.bottom_names[1]!r} of shape {fmt_shape(tuple(label.shape))} "
                             f"does not give one label per position of {fmt_shape(tuple(x.shape))}")
        s3 = x.reshape(outer, c, inner)
        lab = label.reshape(outer, 1, inner).to(torch.long)
        valid = torch.ones_like(lab, dtype=torch.bool) if self.ignore_label is None else lab != self.ignore_label
        idx = torch.where(valid, lab, torch.zeros_like(lab))
        if bool(((idx < 0) | (idx >= c)).any()):
            raise self.error(f"label blob {self.bottom_names[1]!r} holds labels outside [0, {c})")
        true_score = s3.gather(1, idx)
        better = (s3 > true_score).sum(1, keepdim=True)
        correct = (better < self.top_k) & valid
        count = int(valid.sum())
        acc = correct.sum().to(x.dtype) / max(count, 1)
        out = [acc]
        if len(self.top_names) == 2:
            labels = idx[valid]
            n = torch.bincount(labels, minlength=c).to(x.dtype)
            hit = torch.bincount(idx[correct], minlength=c).to(x.dtype)
            out.append(torch.where(n > 0, hit / n.clamp_min(1), torch.zeros_like(n)))
        return out
