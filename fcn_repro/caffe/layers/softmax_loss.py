"""SoftmaxWithLoss: Caffe's SoftmaxWithLossLayer (multinomial logistic loss of a softmax).

Bottoms: scores (N, C, ...) and labels with N*prod(...) entries (float in
Caffe blobs: truncated to int as Caffe does). Per position the loss is
-log(max(prob[label], FLT_MIN)); positions labelled ``ignore_label`` add
nothing to the loss or the gradient. The sum is divided by the normalizer:

* ``normalization``: FULL (N * spatial count), VALID (non-ignored count,
  the default), BATCH_SIZE (N), NONE (1); the divisor is at least 1.
* legacy ``normalize`` (when ``normalization`` is absent): true = VALID,
  false = BATCH_SIZE (the FCN VOC nets: a sum over pixels).

Top 0 is the loss (a 0-d tensor); an optional top 1 is the softmax. The
gradient is Caffe's: (prob - onehot(label)) * loss_weight / normalizer at
non-ignored positions, nothing through the label nor the softmax top.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .base import Layer, canonical_axis, enum_value, fmt_shape, register

FLT_MIN = 1.1754943508222875e-38


def caffe_sequential_sum(t: torch.Tensor) -> float:
    """Sum of ``t`` in row-major order, one element at a time, in ``t``'s precision.

    Caffe accumulates the loss in a single Dtype variable, position after
    position; in float32 over a 500x500 image that running sum is off from the
    exact sum by ~1e-5 relative, so the reported loss must be summed the same
    way to match Caffe's. (np.add.accumulate is a strictly sequential scan;
    np.sum and torch.sum use pairwise / wider accumulation.)
    """
    a = t.detach().reshape(-1).cpu().numpy()
    if a.size == 0:
        return 0.0
    return float(np.add.accumulate(a, dtype=a.dtype)[-1])


class _SoftmaxWithLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, label, axis: int, ignore_label, normalization: str):
        outer = math.prod(x.shape[:axis])
        inner = math.prod(x.shape[axis + 1:])
        c = x.shape[axis]
        prob = torch.softmax(x, axis)
        p3 = prob.reshape(outer, c, inner)
        lab = label.reshape(outer, 1, inner)
        if ignore_label is not None:
            valid = lab != ignore_label
            idx = torch.where(valid, lab, torch.zeros_like(lab))
        else:
            valid = None
            idx = lab
        picked = p3.gather(1, idx)
        nll = -torch.log(picked.clamp_min(FLT_MIN))
        if valid is not None:
            nll = torch.where(valid, nll, torch.zeros_like(nll))
            count = int(valid.sum())
        else:
            count = outer * inner
        if normalization == "FULL":
            norm = outer * inner
        elif normalization == "VALID":
            norm = count
        elif normalization == "BATCH_SIZE":
            norm = outer
        else:
            norm = 1
        norm = max(1.0, float(norm))
        # Caffe: loss / normalizer, both Dtype: divide in the blob's precision.
        np_dtype = np.float32 if x.dtype == torch.float32 else np.float64
        value = np_dtype(caffe_sequential_sum(nll)) / np_dtype(norm)
        loss = torch.tensor(float(value), dtype=x.dtype, device=x.device)
        # x, not prob, is kept: the backward recomputes the softmax from it, so that a second
        # derivative (create_graph=True) flows through the softmax instead of stopping at a
        # constant (which made it silently wrong)
        ctx.save_for_backward(x, idx, valid if valid is not None else torch.ones(0, dtype=torch.bool))
        ctx.has_valid = valid is not None
        ctx.norm = norm
        ctx.axis = axis
        ctx.shape3 = (outer, c, inner)
        ctx.mark_non_differentiable(prob)
        return loss, prob

    @staticmethod
    def backward(ctx, gloss, gprob):
        x, idx, valid = ctx.saved_tensors
        prob = torch.softmax(x, ctx.axis)
        g = prob.reshape(ctx.shape3).scatter_add(1, idx, torch.full(idx.shape, -1.0, dtype=x.dtype, device=x.device))
        if ctx.has_valid:
            g = g * valid.to(g.dtype)
        g = g * (gloss / ctx.norm)
        return g.reshape(prob.shape), None, None, None, None


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(Layer):
    exact_bottoms = 2
    min_tops = 1
    max_tops = 2
    is_loss = True

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        lp = self.param.sub("loss_param")
        self.ignore_label = int(lp.get("ignore_label")) if lp.has("ignore_label") else None
        if lp.has("normalization"):
            self.normalization = enum_value(lp.get("normalization"), ("FULL", "VALID", "BATCH_SIZE", "NONE"),
                                            "loss_param.normalization", self)
        elif lp.has("normalize"):
            self.normalization = "VALID" if bool(lp.get("normalize")) else "BATCH_SIZE"
        else:
            self.normalization = "VALID"
        self.axis_param = int(self.param.sub("softmax_param").get("axis", 1))

    def setup(self, bottom_shapes):
        s = bottom_shapes[0]
        canonical_axis(self.axis_param, len(s), self, "softmax_param.axis")
        return [()] + ([tuple(s)] if len(self.top_names) == 2 else [])

    def forward(self, x: torch.Tensor, label: torch.Tensor, inplace: bool = False):
        axis = canonical_axis(self.axis_param, x.dim(), self, "softmax_param.axis")
        outer, inner, c = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:]), x.shape[axis]
        if label.numel() != outer * inner:
            raise self.error(
                f"label blob {self.bottom_names[1]!r} of shape {fmt_shape(tuple(label.shape))} has {label.numel()} "
                f"entries; scores {self.bottom_names[0]!r} of shape {fmt_shape(tuple(x.shape))} need "
                f"{outer * inner} (one label per position, softmax over axis {axis})")
        # Caffe reads labels from a float blob and truncates them to int.
        lab = label.detach()
        lab = lab.to(torch.long) if lab.is_floating_point() else lab.long()
        bad = (lab < 0) | (lab >= c)
        if self.ignore_label is not None:
            bad &= lab != self.ignore_label
        if bool(bad.any()):
            v = int(lab[bad].flatten()[0])
            raise self.error(f"label blob {self.bottom_names[1]!r} holds {v}, outside [0, {c}) and not the "
                             f"ignore_label {self.ignore_label}")
        loss, prob = _SoftmaxWithLoss.apply(x, lab, axis, self.ignore_label, self.normalization)
        return [loss, prob][:len(self.top_names)]
