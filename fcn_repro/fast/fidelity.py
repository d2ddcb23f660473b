"""The fast path's error budget: how far its scores may lie from the plain forward's, in one place.

The plain forward (:class:`fcn_repro.caffe.Net`) computes every layer as
Caffe does (direct convolutions). The fast path computes fewer
multiplications (Winograd on the 3x3 layers), so it rounds differently; its
defaults are chosen so that on FCN-8s at full width

* ``max |fast - plain| / max |plain| <= REL`` (5e-6),
* the argmax (the predicted class) is the plain forward's at every pixel,
  except where the plain forward's top two scores differ by less than
  ``MARGIN`` (1e-4) of its largest score (a near tie, where float32 rounding
  of any kernel can decide),
* and its scores lie within ``CAFFE_REL`` (1e-5) of Caffe's own outputs.

:func:`fidelity` measures the first two; the tests and
``benchmarks/bench_forward.py`` both use it. Faster variants that round more
(opt-in only) are held to ``LOOSE_REL`` instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["REL", "MARGIN", "CAFFE_REL", "LOOSE_REL", "Fidelity", "fidelity"]

REL = 5e-6
MARGIN = 1e-4
CAFFE_REL = 1e-5
#: the bound the opt-in variants are held to instead of REL and CAFFE_REL (``winograd="f6"``:
#: F(6x6, 3x3) forced onto every layer of the Caffe fixtures measures up to ~8e-6)
LOOSE_REL = 2e-5


@dataclass(frozen=True)
class Fidelity:
    """``rel``: max |scores - ref| / max |ref|; ``flips``: pixels whose argmax differs;
    ``near_ties``: how many of those are near ties of ``ref`` (allowed)."""
    rel: float
    flips: int
    near_ties: int
    pixels: int

    def within(self, rel: float = REL) -> bool:
        """``self.rel <= rel`` and every argmax flip a near tie."""
        return self.rel <= rel and self.flips == self.near_ties

    @property
    def ok(self) -> bool:
        """Within the budget: ``rel <= REL`` and every argmax flip a near tie."""
        return self.within(REL)

    def __str__(self) -> str:
        return (f"max rel diff {self.rel:.1e}, argmax differs at {self.flips} of {self.pixels} pixels "
                f"({self.near_ties} near ties)")


def _array(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def fidelity(scores, ref, axis: int = -3) -> Fidelity:
    """Compare ``scores`` with the reference ``ref`` (same shape; classes along ``axis``, by default
    the C of (C, H, W) or (N, C, H, W)). Tensors or arrays."""
    s, r = _array(scores), _array(ref)
    if s.shape != r.shape:
        raise ValueError(f"fidelity: shapes differ: {s.shape} and {r.shape}")
    scale = float(np.abs(r).max()) if r.size else 0.0
    rel = float(np.abs(s - r).max() / scale) if scale > 0 else float(np.abs(s - r).max(initial=0.0))
    flip = s.argmax(axis) != r.argmax(axis)
    top2 = -np.partition(-r, 1, axis=axis).take([0, 1], axis=axis) if r.shape[axis] > 1 else None
    if top2 is None:
        near = np.zeros_like(flip)
    else:
        near = (top2.take(0, axis=axis) - top2.take(1, axis=axis)) < MARGIN * scale
    return Fidelity(rel, int(flip.sum()), int((flip & near).sum()), int(flip.size))
