"""Geometry of structured blobs (no values): data boxes, compressed backgrounds, windows.

A structured blob (see :mod:`fcn_repro.fast`) is described per spatial axis by
an :class:`Axis`: its true size, its data box and how its background is
stored compressed. :func:`conv_geo` / :func:`pool_geo` give the geometry of a
layer's output; the layers' own windows (``layer.window``, a
:class:`fcn_repro.caffe.shapes.Window`) and size formulas are the inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

from fcn_repro.caffe.shapes import Window, caffe_pool_out, conv_out

__all__ = ["Axis", "Geo", "input_geo", "conv_geo", "pool_geo", "conv_reads", "pool_reads"]


# ---------------------------------------------------------------- geometry

@dataclass(frozen=True)
class Axis:
    """One spatial axis of a structured blob.

    ``size``: the true length. ``lo, hi``: the data box along this axis.
    The background is stored compressed along the axis as ``top`` edge rows,
    then ``m`` plateau rows (0 or 1), then ``bot`` edge rows: true row ``y``
    is compressed row ``y`` if ``y < top``, ``y - size + top + m + bot`` if
    ``y >= size - bot``, else ``top`` (the plateau). With ``m == 0`` there is
    no plateau and ``top == size``, ``bot == 0``: the background is stored in
    full (or, when the box covers the axis, not at all).
    """
    size: int
    lo: int
    hi: int
    top: int
    bot: int
    m: int

    @property
    def clen(self) -> int:
        return self.top + self.m + self.bot

    @property
    def plateau(self) -> int:
        """True number of plateau rows."""
        return self.size - self.top - self.bot

    def cindex(self, y: int) -> int:
        """Compressed index of true row ``y`` (-1 outside ``[0, size)``: zero padding)."""
        if y < 0 or y >= self.size:
            return -1
        if y < self.top:
            return y
        if y >= self.size - self.bot:
            return y - self.size + self.clen
        return self.top


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def _window_axis(ax: Axis, k: int, s: int, p: int, out: int) -> tuple:
    """Data box and background bands of the output of a sliding window (k, s, p) along one axis.

    ``k`` is the effective extent (dilation included). Returns (lo, hi, top, bot):
    output rows whose window touches the data box / the top band or the top
    zero padding / the bottom band or the bottom padding.
    """
    if ax.hi > ax.lo:
        lo = max(0, _ceil_div(ax.lo + p - k + 1, s))
        hi = min(out, _ceil_div(ax.hi + p, s))
        lo, hi = (lo, hi) if hi > lo else (0, 0)
    else:
        lo = hi = 0
    top = min(out, _ceil_div(ax.top + p, s)) if ax.top + p > 0 else 0
    if ax.bot + p > 0:
        first = _ceil_div(ax.size - ax.bot - k + 1 + p, s)  # first output row touching the bottom band
        bot = out - min(out, max(0, first))
    else:
        bot = 0
    return lo, hi, top, bot


def _band_axis(out: int, lo: int, hi: int, top: int, bot: int) -> Axis:
    """The output axis once its background is recompressed (see _recompress)."""
    if out - top - bot <= 0:
        return Axis(out, lo, hi, out, 0, 0)
    return Axis(out, lo, hi, top, bot, 1)


def plateau_copies(ax: Axis, k: int, s: int) -> int:
    """How many plateau rows the compressed input needs for a window (k, s).

    Enough that some output window lies entirely in the plateau, and
    congruent to the true plateau length modulo the stride (so the bottom
    band's windows line up as on the true map). Never more than the truth.
    """
    true_m = ax.plateau
    if ax.m == 0:
        return 0
    want = k + 2 * s
    if want >= true_m:
        return true_m
    want += (true_m - want) % s
    return min(want, true_m)


@dataclass(frozen=True)
class Geo:
    """Geometry of a structured blob without its values: axes, channels, background kind."""
    ay: Axis
    ax: Axis
    c: int
    bg: str          # "zero" (known zero), "none" (box covers the map), "some" (stored)

    @property
    def box(self) -> tuple:
        return (self.ay.lo, self.ay.hi, self.ax.lo, self.ax.hi)

    @property
    def hw(self) -> tuple:
        return (self.ay.size, self.ax.size)


def _covers(ay: Axis, ax: Axis) -> bool:
    return ay.lo == 0 and ay.hi == ay.size and ax.lo == 0 and ax.hi == ax.size


def input_geo(c: int, h: int, w: int) -> Geo:
    """An input blob: the data box is the whole map, the background (outside it) zero."""
    return Geo(Axis(h, 0, h, h, 0, 0), Axis(w, 0, w, w, 0, 0), c, "zero")


def conv_geo(g: Geo, cout: int, w: Window) -> tuple:
    """(output Geo, how its background is made: "none" | "bias" | "compute") of a convolution window."""
    k, s, p, d, ke = w.kernel, w.stride, w.pad, w.dilation, w.extent
    out = tuple(conv_out(n, kk, ss, pp, dd) for n, kk, ss, pp, dd in zip(g.hw, k, s, p, d))
    if out[0] < 1 or out[1] < 1:
        raise ValueError(f"fast: convolution output would be empty for an input of {g.hw}")
    ly, hy, ty, by = _window_axis(g.ay, ke[0], s[0], p[0], out[0])
    lx, hx, tx, bx = _window_axis(g.ax, ke[1], s[1], p[1], out[1])
    if (ly, hy, lx, hx) == (0, out[0], 0, out[1]):
        # Every output pixel sees data: no background to carry.
        return Geo(Axis(out[0], ly, hy, out[0], 0, 0), Axis(out[1], lx, hx, out[1], 0, 0), cout, "none"), "none"
    if g.bg in ("zero", "none"):
        # Outside the box the windows see only zero padding (or a zero
        # background): the output there is the bias everywhere.
        return Geo(Axis(out[0], ly, hy, 0, 0, 1), Axis(out[1], lx, hx, 0, 0, 1), cout, "some"), "bias"
    return Geo(_band_axis(out[0], ly, hy, ty, by), _band_axis(out[1], lx, hx, tx, bx), cout, "some"), "compute"


def pool_geo(g: Geo, w: Window) -> tuple:
    """(output Geo, background kind) of Caffe MAX pooling without padding (CEIL)."""
    k, s = w.kernel, w.stride
    out = tuple(caffe_pool_out(n, kk, ss, 0, True, False) for n, kk, ss in zip(g.hw, k, s))
    ly, hy, ty, by = _window_axis(g.ay, k[0], s[0], 0, out[0])
    lx, hx, tx, bx = _window_axis(g.ax, k[1], s[1], 0, out[1])
    if (ly, hy, lx, hx) == (0, out[0], 0, out[1]):
        return Geo(Axis(out[0], ly, hy, out[0], 0, 0), Axis(out[1], lx, hx, out[1], 0, 0), g.c, "none"), "none"
    if g.bg == "zero":
        return Geo(Axis(out[0], ly, hy, 0, 0, 1), Axis(out[1], lx, hx, 0, 0, 1), g.c, "zero"), "zero"
    return Geo(_band_axis(out[0], ly, hy, ty, by), _band_axis(out[1], lx, hx, tx, bx), g.c, "some"), "compute"


def conv_reads(win: tuple, w: Window) -> tuple:
    """Input rows/cols (unclipped: beyond the map is zero padding) that output window ``win`` reads."""
    s, p, ke = w.stride, w.pad, w.extent
    y0, y1, x0, x1 = win
    return (y0 * s[0] - p[0], (y1 - 1) * s[0] - p[0] + ke[0], x0 * s[1] - p[1], (x1 - 1) * s[1] - p[1] + ke[1])


def pool_reads(win: tuple, w: Window, hw: tuple) -> tuple:
    """Input rows/cols that pooling output window ``win`` reads (clipped to the map: CEIL windows)."""
    k, s = w.kernel, w.stride
    y0, y1, x0, x1 = win
    return (y0 * s[0], min((y1 - 1) * s[0] + k[0], hw[0]), x0 * s[1], min((x1 - 1) * s[1] + k[1], hw[1]))


def _area(w: tuple) -> int:
    return max(0, w[1] - w[0]) * max(0, w[3] - w[2])


def _union(a: tuple, b: tuple) -> tuple:
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _inside(a: tuple, b: tuple) -> bool:
    """Window a within window b."""
    return a[0] >= b[0] and a[1] <= b[1] and a[2] >= b[2] and a[3] <= b[3]


def _clip(w: tuple, hw: tuple) -> tuple:
    return (max(0, w[0]), min(hw[0], w[1]), max(0, w[2]), min(hw[1], w[3]))


