"""Fast inference for a built :class:`fcn_repro.caffe.Net`: ``optimize(net)``.

What it does, and why it is exact
---------------------------------
Every FCN starts with ``conv1_1`` padded by 100 pixels (so that any input
size gives a score map at least as big as the image). At 500x500 that makes
``conv1_1`` 698x698, and far from the image the maps hold nothing that
depends on the image: there the net only sees its own zero padding. Caffe
computes those pixels anyway; FCN-8s spends about a third of its 363 GFLOP on
them. We do not.

For each blob the fast path keeps

* the *data box*: the rectangle of pixels whose receptive field touches the
  input image (rows ``[lo, hi)``, columns likewise). Its values are computed
  by the layer's own kernels, on a *window* that contains the box (a few
  pixels more where that lets the next layer read a view instead of a copy);
* the *background*: what the net computes on an all-zero image. Outside the
  box the blob equals the background exactly, since those pixels' receptive
  fields see only zeros, as they would for a zero image. The background is
  itself simple: a *plateau* value in the middle, and bands near the map's
  edges where the layers' zero padding reaches in (one more pixel per
  padded 3x3 convolution). Rows (and columns) of the plateau are identical,
  so the background is stored *compressed*: the top band, one plateau row,
  the bottom band (same for columns). A convolution or pooling of the
  background runs on that small map, with just enough plateau rows replicated
  to reproduce every window type, and with the stride alignment of the true
  map kept (the number of removed rows is a multiple of the stride, so
  windows at the bottom edge line up as they do on the true map). When the
  box covers the whole map, there is no background at all.

A box pixel and a background pixel are computed by the same arithmetic as in
the plain path (the same convolution, on the same numbers), so the results
agree to the rounding of the convolution kernels (about 1e-6 relative on
the fixtures in float32; to float64 rounding in float64). No
approximation is made: this is *less work*, not a different algorithm.
Pooling (MAX, no padding), ReLU, Dropout (TEST) and Convolution keep the
structure; any other layer receives the blob materialized (window pasted
into the expanded background) and runs unchanged, through the net's own
plan (so the builder's fused Deconvolution->Crop and Crop->Eltwise ops are
used as they are).

Kernels: convolutions run through oneDNN on channels-last tensors with the
following ReLU fused in (``conv="mkldnn"``), or through ``F.conv2d``
(``conv="torch"``). 1x1 convolutions and big-kernel ones (``fc6``: 7x7 over
512 channels on a 22x22 map) run as one GEMM against a view of the weight
(``gemm=True``): no copy of the 411 MB fc6 weight, no per-call reorder.

Winograd: 3x3 convolutions with 512 input or output channels
(``winograd_min_channels``; VGG-16's conv4_1 .. conv5_3, where it pays)
run as Winograd F(2x2, 3x3) (``winograd="f2"``, the default): 2.25x
fewer multiplications, transforms that only add and subtract, and a
float32 error *below* the direct convolution's (~4e-7 vs ~2e-6 relative
per layer: each output sums fewer rounded terms). Forced onto every 3x3
layer of the eight Caffe fixture nets it keeps every argmax and every
score within 2e-6 relative. ``winograd="f4"`` (F(4x4, 3x3), 4x fewer
multiplications) is faster still but rounds more (~2.5e-6 per layer even
with the low-error points below): forced onto every layer it flips one
near-tie pixel of 12,000 on the fcn8s fixture, so it is opt-in only.
``winograd=False``: direct convolutions everywhere.

Switching it off: ``optimize(net, enabled=False)`` (or ``fast.enabled =
False``) runs the plain ``net.forward``. The fast path only runs when no
gradient is needed (under ``torch.no_grad()`` / ``torch.inference_mode()``,
or with parameters that do not require grad): with autograd recording, the
plain path runs so that gradients are Caffe's. ``keep_blobs`` nets also run
the plain path (every blob must exist).

Usage::

    net = Net("deploy.prototxt", "fcn8s.caffemodel")
    fast = optimize(net)            # shares the net's parameters
    with torch.no_grad():
        score = fast(data=x)["score"]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fcn_repro.caffe.shapes import caffe_pool_out, conv_out

__all__ = ["optimize", "FastNet", "SBlob", "Axis", "FAST_DEFAULTS", "structured_from_tensor", "materialize",
           "region", "sconv", "spool_max", "srelu", "ConvKernel", "Winograd23", "Winograd43", "winograd_matrices",
           "count_flops"]

# The default options of the fast path (chosen from the measurements in
# benchmarks/RESULTS.md).
FAST_DEFAULTS = dict(background=True, conv="mkldnn", channels_last=True, gemm=True, views=True,
                     winograd="f2", winograd_min_channels=512)

# Rough machine constants for choosing between computing a few more pixels
# and copying a window (only the choice depends on them, never the result).
_FLOP_RATE = 1.0e11     # FLOP/s of a convolution
_COPY_RATE = 1.6e10     # bytes/s of a strided copy (read + write)


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


def _plateau_copies(ax: Axis, k: int, s: int) -> int:
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


def _expand(x: torch.Tensor, dim: int, ax: Axis, copies: int) -> torch.Tensor:
    """The compressed map ``x`` with its plateau row (along ``dim``) repeated ``copies`` times."""
    if ax.m == 0 or copies == 1:
        return x
    top, rest = x.narrow(dim, 0, ax.top), x.narrow(dim, ax.top + 1, ax.bot)
    shape = list(x.shape)
    shape[dim] = copies
    mid = x.narrow(dim, ax.top, 1).expand(shape)
    return torch.cat([top, mid, rest], dim)


def _recompress(bg: torch.Tensor, dim: int, top: int, bot: int, true_size: int) -> torch.Tensor:
    """Trim a computed background along ``dim`` to top + (<= 1 plateau) + bot rows.

    When the bands meet (no plateau in the true map), the computed map must
    be the full one and is kept whole.
    """
    n = bg.shape[dim]
    if true_size - top - bot <= 0:
        if n != true_size:
            raise AssertionError(f"fast: compressed background of {n} rows for a map of {true_size} "
                                 "without plateau")
        return bg
    if n - top - bot < 1:
        raise AssertionError(f"fast: compressed background lost its plateau ({n} rows, bands {top}+{bot})")
    if n - top - bot == 1:
        return bg
    return torch.cat([bg.narrow(dim, 0, top + 1), bg.narrow(dim, n - bot, bot)], dim)


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


def conv_geo(g: Geo, cout: int, k: tuple, s: tuple, p: tuple, d: tuple) -> tuple:
    """(output Geo, how its background is made: "none" | "bias" | "compute")."""
    ke = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
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


def pool_geo(g: Geo, k: tuple, s: tuple) -> tuple:
    """(output Geo, background kind) of Caffe MAX pooling without padding (CEIL)."""
    out = tuple(caffe_pool_out(n, kk, ss, 0, True, False) for n, kk, ss in zip(g.hw, k, s))
    ly, hy, ty, by = _window_axis(g.ay, k[0], s[0], 0, out[0])
    lx, hx, tx, bx = _window_axis(g.ax, k[1], s[1], 0, out[1])
    if (ly, hy, lx, hx) == (0, out[0], 0, out[1]):
        return Geo(Axis(out[0], ly, hy, out[0], 0, 0), Axis(out[1], lx, hx, out[1], 0, 0), g.c, "none"), "none"
    if g.bg == "zero":
        return Geo(Axis(out[0], ly, hy, 0, 0, 1), Axis(out[1], lx, hx, 0, 0, 1), g.c, "zero"), "zero"
    return Geo(_band_axis(out[0], ly, hy, ty, by), _band_axis(out[1], lx, hx, tx, bx), g.c, "some"), "compute"


def conv_reads(win: tuple, k: tuple, s: tuple, p: tuple, d: tuple) -> tuple:
    """Input rows/cols (unclipped: beyond the map is zero padding) that output window ``win`` reads."""
    ke = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
    y0, y1, x0, x1 = win
    return (y0 * s[0] - p[0], (y1 - 1) * s[0] - p[0] + ke[0], x0 * s[1] - p[1], (x1 - 1) * s[1] - p[1] + ke[1])


def pool_reads(win: tuple, k: tuple, s: tuple, hw: tuple) -> tuple:
    y0, y1, x0, x1 = win
    return (y0 * s[0], min((y1 - 1) * s[0] + k[0], hw[0]), x0 * s[1], min((x1 - 1) * s[1] + k[1], hw[1]))


class _one_thread:
    """Run small tensor work (compressed backgrounds, thin strips) on one thread.

    Waking the second intra-op thread costs more than such work itself, and
    on a shared machine a descheduled peer thread stalls every parallel
    region for a scheduler time slice: hundreds of tiny parallel ops then
    cost seconds.
    """

    def __enter__(self):
        self.n = torch.get_num_threads()
        if self.n != 1:
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self.n != 1:
            torch.set_num_threads(self.n)
        return False


def _area(w: tuple) -> int:
    return max(0, w[1] - w[0]) * max(0, w[3] - w[2])


def _union(a: tuple, b: tuple) -> tuple:
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _inside(a: tuple, b: tuple) -> bool:
    """Window a within window b."""
    return a[0] >= b[0] and a[1] <= b[1] and a[2] >= b[2] and a[3] <= b[3]


def _clip(w: tuple, hw: tuple) -> tuple:
    return (max(0, w[0]), min(hw[0], w[1]), max(0, w[2]), min(hw[1], w[3]))


# ---------------------------------------------------------------- structured blob

class SBlob:
    """A blob as (window of true values, compressed background); see the module docstring.

    ``box``: (N, C, y1-y0, x1-x0) tensor, the true values on ``win`` = (y0,
    y1, x0, x1), a window that contains the data box (``ay.lo..ay.hi`` x
    ``ax.lo..ax.hi``). ``bg``: (1, C, ay.clen, ax.clen) compressed background
    (the same for every image of the batch: it does not depend on the
    data), or None when the data box covers the whole map. ``bg_zero``: the
    background is known to be exactly zero (the input blob).
    """
    __slots__ = ("box", "bg", "ay", "ax", "bg_zero", "n", "c", "win")

    def __init__(self, box: torch.Tensor, bg: Optional[torch.Tensor], ay: Axis, ax: Axis,
                 bg_zero: bool = False, n: Optional[int] = None, c: Optional[int] = None,
                 win: Optional[tuple] = None):
        self.box, self.bg, self.ay, self.ax, self.bg_zero = box, bg, ay, ax, bg_zero
        self.n = box.shape[0] if n is None else n
        self.c = (box.shape[1] if bg is None else bg.shape[1]) if c is None else c
        self.win = (ay.lo, ay.hi, ax.lo, ax.hi) if win is None else tuple(win)
        if bg is None and not bg_zero and not _covers(ay, ax):
            raise AssertionError("fast: a blob without background must have its box cover the map")

    @property
    def shape(self) -> tuple:
        return (self.n, self.c, self.ay.size, self.ax.size)

    def covers_all(self) -> bool:
        """Whether the data box is the whole map (the background is then never read)."""
        return _covers(self.ay, self.ax)

    def __repr__(self) -> str:
        return (f"SBlob(shape={self.shape}, box=rows[{self.ay.lo},{self.ay.hi}) cols[{self.ax.lo},{self.ax.hi}), "
                f"win={self.win}, bg={None if self.bg is None else tuple(self.bg.shape)})")


def structured_from_tensor(x: torch.Tensor, channels_last: bool = True) -> SBlob:
    """An input blob (N, C, H, W): the data box is the whole map, zeros around it."""
    if x.dim() != 4:
        raise ValueError(f"fast: a structured blob must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = input_geo(x.shape[1], x.shape[2], x.shape[3])
    return SBlob(x, None, g.ay, g.ax, bg_zero=True)


def _runs(ax: Axis, a: int, b: int) -> list:
    """Rows [a, b) as runs (start, end, kind, src): kind "zero" (outside the map: zero
    padding), "copy" (compressed rows src.. one to one) or "bcast" (the plateau row src)."""
    out = []
    cuts = [(a, min(b, 0), "zero"), (max(a, 0), min(b, ax.top), "copy"),
            (max(a, ax.top), min(b, ax.size - ax.bot), "bcast"),
            (max(a, ax.size - ax.bot, ax.top), min(b, ax.size), "copy"),
            (max(a, ax.size), b, "zero")]
    for y0, y1, kind in cuts:
        if y1 > y0:
            out.append((y0, y1, kind, ax.cindex(y0) if kind != "zero" else -1))
    return out


def _fill_bg(dst: torch.Tensor, sb: SBlob, y0: int, y1: int, x0: int, x1: int) -> None:
    """Write the background values (zeros outside the map) of rows [y0, y1) x cols [x0, x1) into ``dst``.

    Piecewise broadcast copies from the small compressed map: no gather over
    the window, so the cost is one write of ``dst``.
    """
    if sb.bg_zero:
        dst.zero_()
        return
    n, c = dst.shape[0], dst.shape[1]
    for ya, yb, ky, sy in _runs(sb.ay, y0, y1):
        for xa, xb, kx, sx in _runs(sb.ax, x0, x1):
            d = dst[:, :, ya - y0:yb - y0, xa - x0:xb - x0]
            if ky == "zero" or kx == "zero":
                d.zero_()
                continue
            if sb.bg is None:
                raise AssertionError(f"fast: background read at rows [{ya},{yb}) cols [{xa},{xb}) of {sb}")
            src = sb.bg[:, :, sy:sy + (yb - ya if ky == "copy" else 1), sx:sx + (xb - xa if kx == "copy" else 1)]
            d.copy_(src.expand(n, c, yb - ya, xb - xa))


def region(sb: SBlob, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """The true values of rows [y0, y1) x cols [x0, x1) of the blob; zeros outside the map.

    A view of the computed window when the window lies inside it; otherwise
    a new tensor in the window's memory format.
    """
    wy0, wy1, wx0, wx1 = sb.win
    if y0 >= wy0 and y1 <= wy1 and x0 >= wx0 and x1 <= wx1 and y1 > y0 and x1 > x0:
        return sb.box[:, :, y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
    iy0, iy1 = max(y0, wy0), min(y1, wy1)
    ix0, ix1 = max(x0, wx0), min(x1, wx1)
    ref = sb.box if sb.box.numel() else (sb.bg if sb.bg is not None else sb.box)
    fmt = torch.channels_last if ref.dim() == 4 and ref.is_contiguous(memory_format=torch.channels_last) and \
        not ref.is_contiguous() else torch.contiguous_format
    out = torch.empty((sb.n, sb.c, y1 - y0, x1 - x0), dtype=ref.dtype, device=ref.device, memory_format=fmt)
    if iy1 <= iy0 or ix1 <= ix0:       # no overlap with the window: background only
        _fill_bg(out, sb, y0, y1, x0, x1)
        return out
    # Background bands around the window (thin: one thread), then the window's overlap itself.
    with _one_thread():
        if iy0 > y0:
            _fill_bg(out[:, :, :iy0 - y0], sb, y0, iy0, x0, x1)
        if iy1 < y1:
            _fill_bg(out[:, :, iy1 - y0:], sb, iy1, y1, x0, x1)
        if ix0 > x0:
            _fill_bg(out[:, :, iy0 - y0:iy1 - y0, :ix0 - x0], sb, iy0, iy1, x0, ix0)
        if ix1 < x1:
            _fill_bg(out[:, :, iy0 - y0:iy1 - y0, ix1 - x0:], sb, iy0, iy1, ix1, x1)
    out[:, :, iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0].copy_(
        sb.box[:, :, iy0 - wy0:iy1 - wy0, ix0 - wx0:ix1 - wx0])
    return out


def materialize(sb: Any) -> torch.Tensor:
    """The full (N, C, H, W) tensor of a structured blob (contiguous NCHW); tensors pass through."""
    if not isinstance(sb, SBlob):
        return sb
    return region(sb, 0, sb.ay.size, 0, sb.ax.size).contiguous()


# ---------------------------------------------------------------- Winograd F(4x4, 3x3)

# Interpolation points of the Toom-Cook construction. The textbook set (0,
# +-1, +-2) gives ~6e-6 relative error per float32 layer (512 channels);
# mixing a point with its reciprocal's negation, (0, +-1, 1/2, -2), gives
# ~2.5e-6, close to a direct convolution's ~1.9e-6 (see RESULTS.md).
WINOGRAD_POINTS = ((0, 1), (1, 1), (-1, 1), (1, 2), (-2, 1))


def winograd_matrices(points=WINOGRAD_POINTS, m: int = 4, r: int = 3) -> tuple:
    """(B^T, G, A^T) of Winograd F(m, r) for finite ``points`` (num, den) plus infinity, float64.

    Toom-Cook: with M(x) = prod (x - p_j), row j of B^T holds the
    coefficients of M(x) / (x - p_j), G's row j is g(p_j) / prod_{l != j}
    (p_j - p_l), A^T evaluates at the points; the point at infinity adds
    the last row/column. Then y = A^T [(G g) * (B^T d)] is the valid
    correlation of d (length m + r - 1) with g (length r).
    """
    from fractions import Fraction as Fr
    n = m + r - 1
    P = [Fr(a, b) for a, b in points]
    if len(P) != n - 1:
        raise ValueError(f"F({m},{r}) needs {n - 1} finite points, got {len(P)}")

    def mul(a, b):
        out = [Fr(0)] * (len(a) + len(b) - 1)
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                out[i + j] += x * y
        return out
    M = [Fr(1)]
    for p in P:
        M = mul(M, [-p, Fr(1)])
    BT = [[Fr(0)] * n for _ in range(n)]
    G = [[Fr(0)] * r for _ in range(n)]
    AT = [[Fr(0)] * n for _ in range(m)]
    for j, p in enumerate(P):
        Mj, Nj = [Fr(1)], Fr(1)
        for l, q in enumerate(P):
            if l != j:
                Mj = mul(Mj, [-q, Fr(1)])
                Nj *= p - q
        BT[j][:n - 1] = Mj
        G[j] = [p ** k / Nj for k in range(r)]
        for i in range(m):
            AT[i][j] = p ** i
    BT[n - 1] = M
    G[n - 1][r - 1] = Fr(1)
    AT[m - 1][n - 1] = Fr(1)
    f = lambda A: torch.tensor([[float(v) for v in row] for row in A], dtype=torch.float64)  # noqa: E731
    return f(BT), f(G), f(AT)


def _winograd_tiles(x: torch.Tensor, m: int) -> tuple:
    """Tiling of a valid 3x3 correlation into m x m output tiles: x zero-padded at the
    bottom/right to whole tiles, the output size (oh, ow), the tile counts (th, tw),
    and whether padding was added."""
    hh, ww = x.shape[2], x.shape[3]
    oh, ow = hh - 2, ww - 2
    th, tw = _ceil_div(oh, m), _ceil_div(ow, m)
    ph, pw = m * th + 2 - hh, m * tw + 2 - ww
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, oh, ow, th, tw, bool(ph or pw)


class Winograd43:
    """Winograd F(4x4, 3x3) for one 3x3 / stride 1 / no-dilation / no-group convolution, channels-last.

    The transforms are plain matrix products with the Kronecker squares of
    B^T (36x36) and A^T (16x36), so every step is a GEMM: tiles (36, T, C)
    -> V = KB @ tiles -> M = V @ U (36 batched T x C x K products, U = G g
    G^T precomputed: 4x the weight's memory) -> Y = KA @ M -> (oh, ow, K).
    4x fewer multiplications than direct; float32 error ~2.5e-6 relative per
    layer (a direct convolution: ~1.9e-6).
    """

    def __init__(self, weight: torch.Tensor):
        BT, G, AT = winograd_matrices()
        w = weight.detach()
        k, c = w.shape[0], w.shape[1]
        U = torch.einsum("ik,ockl,jl->ijco", G.to(w.device), w.double(), G.to(w.device))
        self.U = U.reshape(36, c, k).to(w.dtype).contiguous()
        self.KB = torch.kron(BT, BT).to(w.dtype).to(w.device)
        self.KA = torch.kron(AT, AT).to(w.dtype).to(w.device)
        self.k, self.c = k, c

    def __call__(self, x: torch.Tensor, bias: Optional[torch.Tensor], relu: bool) -> torch.Tensor:
        """Valid 3x3 correlation of x (N, C, H, W) -> (N, K, H-2, W-2), channels-last."""
        n, c = x.shape[:2]
        x, oh, ow, th, tw, _ = _winograd_tiles(x, 4)
        xh = x.permute(0, 2, 3, 1)
        if not xh.is_contiguous():
            xh = xh.contiguous()
        out = torch.empty((n, self.k, oh, ow), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        s = xh.stride()
        t = th * tw
        for i in range(n):
            tiles = xh[i].as_strided((6, 6, th, tw, c), (s[1], s[2], 4 * s[1], 4 * s[2], s[3]))
            d = tiles.reshape(36, t * c)                                   # gathers the overlapping tiles
            v = (self.KB @ d).view(36, t, c)
            mm = torch.bmm(v, self.U)                                     # (36, T, K)
            y = (self.KA @ mm.view(36, t * self.k)).view(4, 4, th, tw, self.k)
            y = y.permute(2, 0, 3, 1, 4).reshape(4 * th, 4 * tw, self.k)[:oh, :ow]
            o = out[i].permute(1, 2, 0)
            if bias is not None:
                torch.add(y, bias, out=o)
            else:
                o.copy_(y)
        if relu:
            out.relu_()
        return out


class Winograd23:
    """Winograd F(2x2, 3x3) for one 3x3 / stride 1 / no-dilation / no-group convolution, channels-last.

    B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]] and A^T =
    [[1,1,1,0],[0,1,-1,-1]] have coefficients 0 and +-1, so the transforms
    are exact additions of strided views (no rounding beyond the adds), and
    the 16 transformed products are one batched GEMM. 2.25x fewer
    multiplications than direct; float32 error ~4e-7 relative per layer,
    *below* a direct convolution's ~2e-6 (each output sums fewer rounded
    terms). The bias is added once, to the transform-domain element that
    A^T maps to every output (M[1,1]). Memory: the transformed weight U is
    16/9 of the weight (it replaces the channels-last copy other layers keep).
    """

    def __init__(self, weight: torch.Tensor):
        w = weight.detach()
        G = torch.tensor([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], dtype=torch.float64, device=w.device)
        k, c = w.shape[0], w.shape[1]
        U = torch.einsum("ik,ockl,jl->ijco", G, w.double(), G)
        self.U = U.reshape(16, c, k).to(w.dtype).contiguous()
        self.k, self.c = k, c

    def __call__(self, x: torch.Tensor, bias: Optional[torch.Tensor], relu: bool) -> torch.Tensor:
        """Valid 3x3 correlation of x (N, C, H, W) -> (N, K, H-2, W-2), channels-last."""
        n, c = x.shape[:2]
        x, oh, ow, th, tw, padded = _winograd_tiles(x, 2)
        xs = x.permute(0, 2, 3, 1)                                   # (N, H, W, C) view
        k = self.k
        out = torch.empty((n, k, oh, ow), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        full = not padded
        for i in range(n):
            xh = xs[i]
            W2 = xh.shape[1]
            r = [xh[j:j + 2 * th:2] for j in range(4)]               # tile rows j: (th, W, C)
            b1 = torch.empty((4, th, W2, c), dtype=x.dtype, device=x.device)
            torch.sub(r[0], r[2], out=b1[0])
            torch.add(r[1], r[2], out=b1[1])
            torch.sub(r[2], r[1], out=b1[2])
            torch.sub(r[1], r[3], out=b1[3])
            cc = [b1[:, :, j:j + 2 * tw:2] for j in range(4)]        # tile cols j: (4, th, tw, C)
            V = torch.empty((4, 4, th, tw, c), dtype=x.dtype, device=x.device)
            torch.sub(cc[0], cc[2], out=V[:, 0])
            torch.add(cc[1], cc[2], out=V[:, 1])
            torch.sub(cc[2], cc[1], out=V[:, 2])
            torch.sub(cc[1], cc[3], out=V[:, 3])
            M = torch.bmm(V.view(16, th * tw, c), self.U).view(4, 4, th, tw, k)
            if bias is not None:
                M[1, 1] += bias
            Q = torch.empty((2, 4, th, tw, k), dtype=x.dtype, device=x.device)
            torch.add(M[0], M[1], out=Q[0])
            Q[0] += M[2]
            torch.sub(M[1], M[2], out=Q[1])
            Q[1] -= M[3]
            if full:
                ov = out[i].permute(1, 2, 0).view(th, 2, tw, 2, k)   # write the output in place
            else:
                ov = torch.empty((th, 2, tw, 2, k), dtype=x.dtype, device=x.device)
            for a in range(2):
                torch.add(Q[a, 0], Q[a, 1], out=ov[:, a, :, 0])
                ov[:, a, :, 0] += Q[a, 2]
                torch.sub(Q[a, 1], Q[a, 2], out=ov[:, a, :, 1])
                ov[:, a, :, 1] -= Q[a, 3]
            if not full:
                out[i].permute(1, 2, 0).copy_(ov.view(2 * th, 2 * tw, k)[:oh, :ow])
        if relu:
            out.relu_()
        return out


# ---------------------------------------------------------------- kernels

class ConvKernel:
    """How one convolution runs on a window: GEMM, oneDNN with fused ReLU, or F.conv2d.

    * ``gemm`` (1x1 kernels, and kernels of 25 taps or more: fc6's 7x7 on a
      22x22 map): one matrix product against a *view* of the layer's weight
      (no copy of fc6's 411 MB); 1x1 convolutions of channels-last maps
      need no im2col at all.
    * ``mkldnn``: oneDNN on channels-last tensors with the ReLU fused, the
      weight kept in a channels-last copy (the 3x3 layers: 59 MB in all for
      VGG-16).
    * ``torch``: F.conv2d (channels-last when the input is), ReLU after.

    Holds the layer's weight/bias (the net's Parameters); ``refresh()``
    re-derives the copies when the parameters changed (their version
    counters move: ``load_weights`` copies in place).
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], stride, dilation, groups: int,
                 impl: str = "mkldnn", gemm: bool = False, winograd: Any = False):
        self.weight, self.bias = weight, bias
        self.stride, self.dilation, self.groups = tuple(stride), tuple(dilation), int(groups)
        self.impl = impl
        kh, kw = weight.shape[2], weight.shape[3]
        self.gemm = bool(gemm) and self.groups == 1 and (kh * kw == 1 or kh * kw >= 25)
        self.winograd_kind = winograd if winograd in ("f2", "f4") else None
        self.winograd = (self.winograd_kind is not None and not self.gemm and (kh, kw) == (3, 3)
                         and self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1)
        self._versions = None
        self.refresh()

    def _param_versions(self):
        return (self.weight._version, None if self.bias is None else self.bias._version,
                self.weight.data_ptr())

    def refresh(self) -> None:
        v = self._param_versions()
        if v == self._versions:
            return
        self._versions = v
        w = self.weight.detach()
        self.b = None if self.bias is None else self.bias.detach()
        self.w_cl = None
        self.wino = None
        if self.gemm:
            self.w_mat = w.reshape(w.shape[0], -1)          # a view when the parameter is contiguous
        elif self.winograd:
            self.wino = Winograd23(w) if self.winograd_kind == "f2" else Winograd43(w)
        elif w.is_floating_point():
            # oneDNN (CPU) and cuDNN (GPU) both run channels-last maps best with channels-last weights.
            self.w_cl = w.contiguous(memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor, relu: bool, pad: tuple = (0, 0)) -> torch.Tensor:
        """Convolution of ``x`` (N, C, h, w) with zero padding ``pad``; ReLU applied when ``relu``."""
        self.refresh()
        if self.gemm or self.wino is not None:
            if pad[0] or pad[1]:
                x = F.pad(x, (pad[1], pad[1], pad[0], pad[0]))
            return self._gemm(x, relu) if self.gemm else self.wino(x, self.b, relu)
        w = self.w_cl if self.w_cl is not None else self.weight.detach()
        if self.impl == "mkldnn" and x.dtype == torch.float32 and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
            return torch.ops.mkldnn._convolution_pointwise(
                x, w, self.b, list(pad), list(self.stride), list(self.dilation), self.groups,
                "relu" if relu else "none", [], "")
        if not x.is_contiguous(memory_format=torch.channels_last):
            w = self.weight.detach()
        y = F.conv2d(x, w, self.b, self.stride, tuple(pad), self.dilation, self.groups)
        return torch.relu_(y) if relu else y

    def _gemm(self, x: torch.Tensor, relu: bool) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        kh, kw = self.weight.shape[2], self.weight.shape[3]
        cout = self.w_mat.shape[0]
        if kh * kw == 1:
            # 1x1: out (N*h*w, Cout) = x (N*h*w, Cin) @ W^T on a channels-last map.
            xs = x[:, :, ::self.stride[0], ::self.stride[1]].contiguous(memory_format=torch.channels_last)
            h, w = xs.shape[2], xs.shape[3]
            rows = xs.permute(0, 2, 3, 1).reshape(n * h * w, c)
            y = rows @ self.w_mat.t()
            if self.b is not None:
                y += self.b
            if relu:
                y.relu_()
            return y.view(n, h, w, cout).permute(0, 3, 1, 2)      # channels-last (N, Cout, h, w)
        # im2col then one GEMM per image: (Cout, Cin*kh*kw) @ (Cin*kh*kw, oh*ow).
        oh = conv_out(x.shape[2], kh, self.stride[0], 0, self.dilation[0])
        ow = conv_out(x.shape[3], kw, self.stride[1], 0, self.dilation[1])
        cols = F.unfold(x, (kh, kw), dilation=self.dilation, stride=self.stride)
        y = torch.matmul(self.w_mat, cols)                          # (N, Cout, oh*ow)
        if self.b is not None:
            y += self.b[:, None]
        if relu:
            y.relu_()
        return y.view(n, cout, oh, ow)


# ---------------------------------------------------------------- structured layers

def _bg_window_op(sb: SBlob, k: tuple, s: tuple, p: tuple, fn, g_out: Geo) -> torch.Tensor:
    """The output's compressed background: ``fn(x, pad)`` on the input's, plateau replicated as needed."""
    with _one_thread():
        x = _expand(_expand(sb.bg, 2, sb.ay, _plateau_copies(sb.ay, k[0], s[0])),
                    3, sb.ax, _plateau_copies(sb.ax, k[1], s[1]))
        y = fn(x, p)
        y = _recompress(y, 2, g_out.ay.top, g_out.ay.bot, g_out.ay.size)
        return _recompress(y, 3, g_out.ax.top, g_out.ax.bot, g_out.ax.size)


def _read(sb: SBlob, want: tuple, hw: tuple) -> tuple:
    """(tensor, symmetric pad) holding the input window ``want`` (unclipped).

    A view when the clipped window lies in the computed window and what lies
    beyond the map is the same on both sides (the kernel pads it); else a
    new tensor with the background and zeros written in.
    """
    c = _clip(want, hw)
    pt, pb, pl, pr = c[0] - want[0], want[1] - c[1], c[2] - want[2], want[3] - c[3]
    if pt == pb and pl == pr and _inside(c, sb.win) and _area(c) > 0 and (c[2], c[3]) == (sb.win[2], sb.win[3]):
        return region(sb, *c), (pt, pl)
    return region(sb, *want), (0, 0)


def sconv(sb: SBlob, kernel: ConvKernel, k: tuple, pad: tuple, relu: bool = False,
          want: Optional[tuple] = None) -> SBlob:
    """Convolution (Caffe geometry: kernel k, pad, the kernel's stride/dilation) of a structured blob.

    ``want``: the output window to compute (default: the output's data
    box; it must contain the box). The box is computed on its window (halo
    from the background, zeros beyond the map); the background on its
    compressed form.
    """
    s, d = kernel.stride, kernel.dilation
    g_in = Geo(sb.ay, sb.ax, sb.c, "zero" if sb.bg_zero else ("none" if sb.bg is None else "some"))
    cout = kernel.weight.shape[0]
    g, how = conv_geo(g_in, cout, k, s, pad, d)
    if how == "bias":
        b = kernel.b if kernel.b is not None else kernel.weight.new_zeros(cout)
        bg = b.detach().reshape(1, cout, 1, 1).clone()
        if relu:
            bg.relu_()
    elif how == "compute":
        def fn(x, p):
            return kernel(x, relu, pad=p)
        ke = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
        bg = _bg_window_op(sb, ke, s, pad, fn, g)
    else:
        bg = None
    win = g.box if want is None else tuple(want)
    if _area(win):
        x, p = _read(sb, conv_reads(win, k, s, pad, d), g_in.hw)
        box = kernel(x, relu, pad=p)
    else:
        box = kernel.weight.new_zeros((sb.n, cout, 0, 0))
    return SBlob(box, bg, g.ay, g.ax, False, sb.n, cout, win)


def spool_max(sb: SBlob, k: tuple, s: tuple, want: Optional[tuple] = None) -> SBlob:
    """Caffe MAX pooling with no padding (CEIL rounding: the last window is clipped to the map)."""
    g_in = Geo(sb.ay, sb.ax, sb.c, "zero" if sb.bg_zero else ("none" if sb.bg is None else "some"))
    g, how = pool_geo(g_in, k, s)
    if how == "compute":
        def fn(x, p):
            return F.max_pool2d(x, k, s, 0, ceil_mode=True)
        bg = _bg_window_op(sb, k, s, (0, 0), fn, g)
    else:
        bg = None
    win = g.box if want is None else tuple(want)
    if _area(win):
        x = region(sb, *pool_reads(win, k, s, g_in.hw))
        box = F.max_pool2d(x, k, s, 0, ceil_mode=True)
    else:
        box = sb.box.new_zeros((sb.n, sb.c, 0, 0))
    return SBlob(box, bg, g.ay, g.ax, how == "zero", sb.n, sb.c, win)


def srelu(sb: SBlob, negative_slope: float = 0.0, inplace: bool = False) -> SBlob:
    """Caffe ReLU of a structured blob (elementwise: window and background alike)."""
    def f(t, ip):
        if t is None:
            return None
        if negative_slope == 0.0:
            return torch.relu_(t) if ip else torch.relu(t)
        return F.leaky_relu(t, negative_slope, inplace=ip)
    return SBlob(f(sb.box, inplace), f(sb.bg, False), sb.ay, sb.ax, sb.bg_zero, sb.n, sb.c, sb.win)


def _pool_ok(m) -> bool:
    return (m.method == "MAX" and not m.global_pooling and tuple(m.pad) == (0, 0)
            and m.round_mode == "CEIL" and len(m.top_names) == 1 and not getattr(m, "force_explicit", False)
            and m.kernel[0] >= m.stride[0] and m.kernel[1] >= m.stride[1])


# ---------------------------------------------------------------- the net wrapper

@dataclass
class _Step:
    kind: str            # "conv", "pool", "relu", "identity", "plain"
    st: Any              # the builder's plan step
    relu: Any = None     # a fused ReLU step (conv only)


class FastNet(nn.Module):
    """A fast forward for a built :class:`fcn_repro.caffe.Net` (shares its parameters).

    ``forward(**inputs) -> {output blob: tensor}``, exactly like ``net.forward``.
    ``enabled=False`` (settable) runs the plain net. See the module docstring.

    Options: ``background`` (skip the input-independent padding region),
    ``conv`` ("mkldnn": oneDNN channels-last with fused ReLU; "torch":
    F.conv2d), ``channels_last``, ``gemm`` (1x1 convolutions and kernels
    of 25 taps or more run as one GEMM on a view of the weight), ``views``
    (compute a few more pixels where that lets the next layer read its
    input in place instead of copying it), ``winograd`` ("f2" default,
    "f4", False) / ``winograd_min_channels`` (see the module docstring).
    """

    def __init__(self, net: nn.Module, enabled: bool = True, **options: Any):
        super().__init__()
        unknown = set(options) - set(FAST_DEFAULTS)
        if unknown:
            raise TypeError(f"optimize(): unknown options {sorted(unknown)}; known: {sorted(FAST_DEFAULTS)}")
        self.net = net
        self.enabled = bool(enabled)
        self.options = dict(FAST_DEFAULTS, **options)
        if self.options["conv"] not in ("mkldnn", "torch"):
            raise ValueError(f"optimize(): conv must be 'mkldnn' or 'torch', got {self.options['conv']!r}")
        if self.options["winograd"] is True:
            self.options["winograd"] = "f4"
        if self.options["winograd"] not in (False, None, "f2", "f4"):
            raise ValueError(f"optimize(): winograd must be False, 'f2' (F(2x2,3x3)) or 'f4' (F(4x4,3x3)), "
                             f"got {self.options['winograd']!r}")
        if self.options["conv"] == "mkldnn" and not torch.backends.mkldnn.is_available():
            self.options["conv"] = "torch"
        self._kernels: dict[str, ConvKernel] = {}
        self._plan_id = None
        self._steps: Optional[list] = None
        self._schedules: dict = {}

    @property
    def inputs(self):
        return self.net.inputs

    @property
    def outputs(self):
        return self.net.outputs

    def extra_repr(self) -> str:
        return f"enabled={self.enabled}, options={self.options}"

    # ------------------------------------------------------------ plan
    def _kernel(self, m) -> ConvKernel:
        kern = self._kernels.get(m.name)
        w = m.blobs[0]
        b = m.blobs[1] if m.bias_term else None
        if kern is None or kern.weight is not w or kern.bias is not b:
            big = max(w.shape[1] * m.group, w.shape[0]) >= self.options["winograd_min_channels"]
            wino = self.options["winograd"] if big else False
            kern = ConvKernel(w, b, m.stride, m.dilation, m.group, self.options["conv"], self.options["gemm"], wino)
            self._kernels[m.name] = kern
        return kern

    def _get_steps(self) -> list:
        """The builder's plan, with the layers the fast path runs itself marked (and conv+ReLU fused)."""
        plan = self.net._get_plan()
        if self._steps is not None and self._plan_id is plan:
            return self._steps
        steps = []
        i = 0
        while i < len(plan):
            st = plan[i]
            m = st.layers[0]
            kind, fuse = "plain", None
            if st.kind == "layer" and not st.loss:
                t = m.type_name
                if t == "Convolution" and len(st.bottoms) == 1 and len(st.tops) == 1:
                    kind = "conv"
                    # Fuse the following in-place ReLU (Caffe's relu after every conv) when it is the
                    # only reader of the convolution's top.
                    if i + 1 < len(plan):
                        nx = plan[i + 1]
                        r = nx.layers[0]
                        if (nx.kind == "layer" and r.type_name == "ReLU" and nx.bottoms == st.tops
                                and nx.inplace_ok and r.negative_slope == 0.0 and not nx.loss):
                            fuse = nx
                elif t == "Pooling" and _pool_ok(m):
                    kind = "pool"
                elif t == "ReLU":
                    kind = "relu"
                elif t == "Dropout" and m.phase != "TRAIN" and m.scale_train:
                    kind = "identity"
            steps.append(_Step(kind, st, fuse))
            i += 2 if fuse is not None else 1
        # A convolution none of whose readers keeps the structure (FCN's score
        # layers, read by Crop/Eltwise/Deconvolution) runs dense on the
        # materialized input: it is cheap, and its background would cost
        # more small operations than it saves.
        for i, s in enumerate(steps):
            if s.kind == "conv" and not self._feeds_structured(steps, i):
                s.kind = "dense"
        self._steps, self._plan_id, self._schedules = steps, plan, {}
        return steps

    @staticmethod
    def _feeds_structured(steps: list, i: int) -> bool:
        """Whether the top of step i reaches a conv or pool (through ReLU / Dropout) before it is replaced."""
        names = set(steps[i].st.tops)
        for s in steps[i + 1:]:
            reads = names & set(s.st.bottoms)
            if reads and s.kind in ("conv", "pool"):
                return True
            if reads and s.kind in ("relu", "identity"):
                names |= set(s.st.tops)
                continue
            names -= set(s.st.tops)
            if not names:
                return False
        return False

    def _schedule(self, shapes: dict) -> dict:
        """Per input shapes: the output window each structured step computes.

        Starts from the data boxes, then walks the steps backward: a conv or
        pool reads a window of its input; when that window exceeds what the
        producer computes, the producer computes the larger window if that
        costs less than copying it (a few halo rows on a big map), else the
        reader copies it (small maps, where a larger window would cascade).
        """
        key = tuple(sorted((k, tuple(v)) for k, v in shapes.items()))
        if key in self._schedules:
            return self._schedules[key]
        steps = self._get_steps()
        geo: dict = {}          # blob name -> (Geo, producer step index or None)
        info: dict = {}         # step index -> (input Geo, output Geo, producer index)
        for n, shp in shapes.items():
            if len(shp) == 4:
                geo[n] = (input_geo(shp[1], shp[2], shp[3]), None)
        for i, s in enumerate(steps):
            m = s.st.layers[0]
            src = geo.get(s.st.bottoms[0]) if s.st.bottoms else None
            if s.kind in ("conv", "pool", "relu", "identity") and src is not None:
                g_in, prod = src
                if s.kind == "conv":
                    g_out, _ = conv_geo(g_in, m.num_output, m.kernel, m.stride, m.pad, m.dilation)
                elif s.kind == "pool":
                    g_out, _ = pool_geo(g_in, m.kernel, m.stride)
                else:
                    g_out = g_in
                info[i] = (g_in, g_out, prod)
                owner = i if s.kind in ("conv", "pool") else prod
                for t in s.st.tops:
                    geo[t] = (g_out, owner)
            else:
                for t in s.st.tops:
                    geo.pop(t, None)
        boxes = {i: v[1].box for i, v in info.items() if steps[i].kind in ("conv", "pool")}
        want = boxes
        if self.options["views"]:
            # Candidate policies, each judged by an estimate of its total cost.
            cands = [self._extend(steps, info, boxes, pools) for pools in (True, False)] + [dict(boxes)]
            want = min(cands, key=lambda w: self._cost(steps, info, w))
        self._schedules[key] = want
        return want

    @staticmethod
    def _reads(s, g_in: Geo, win: tuple) -> tuple:
        m = s.st.layers[0]
        if s.kind == "conv":
            return conv_reads(win, m.kernel, m.stride, m.pad, m.dilation)
        return pool_reads(win, m.kernel, m.stride, g_in.hw)

    @staticmethod
    def _px_cost(s, g_in: Geo) -> float:
        """Seconds per output pixel of a structured step (rough)."""
        m = s.st.layers[0]
        if s.kind == "conv":
            return 2 * m.num_output * g_in.c // m.group * m.kernel[0] * m.kernel[1] / _FLOP_RATE
        return g_in.c * 4 * (m.kernel[0] * m.kernel[1] + 1) / _COPY_RATE

    def _extend(self, steps, info, boxes: dict, pools: bool) -> dict:
        """Greedy, backward: a producer computes what its reader needs when that is cheaper than a copy."""
        want = dict(boxes)
        for i in sorted(want, reverse=True):
            g_in, _, prod = info[i]
            r = _clip(self._reads(steps[i], g_in, want[i]), g_in.hw)
            if prod is None or prod not in want or _inside(r, want[prod]) or not _area(r):
                continue
            if steps[prod].kind == "pool" and not pools:
                continue
            bigger = _union(want[prod], r)
            cost_more = (_area(bigger) - _area(want[prod])) * self._px_cost(steps[prod], info[prod][0])
            cost_copy = _area(r) * g_in.c * 8 / _COPY_RATE
            if cost_more < cost_copy:
                want[prod] = bigger
        return want

    def _cost(self, steps, info, want: dict) -> float:
        """Estimated seconds of a window assignment: the steps' work plus the copies of what they read."""
        total = 0.0
        for i, win in want.items():
            g_in, _, prod = info[i]
            total += _area(win) * self._px_cost(steps[i], g_in)
            r = self._reads(steps[i], g_in, win)
            c = _clip(r, g_in.hw)
            src = want.get(prod) if prod is not None else (0, g_in.hw[0], 0, g_in.hw[1])
            symmetric = c[0] - r[0] == r[1] - c[1] and c[2] - r[2] == r[3] - c[3]
            view = src is not None and _inside(c, src) and symmetric and (c[2], c[3]) == (src[2], src[3])
            if not view:
                total += _area(r) * g_in.c * 8 / _COPY_RATE
        return total

    # ------------------------------------------------------------ forward
    def _needs_grad(self, inputs) -> bool:
        if not torch.is_grad_enabled():
            return False
        if any(isinstance(x, torch.Tensor) and x.requires_grad for x in inputs.values()):
            return True
        return any(p.requires_grad for p in self.net.parameters())

    def forward(self, **inputs: Any) -> dict[str, torch.Tensor]:
        net = self.net
        if not self.enabled or net.keep_blobs or self._needs_grad(inputs):
            return net(**inputs)
        missing = [n for n in net.inputs if n not in inputs]
        unknown = [n for n in inputs if n not in net.inputs]
        if missing or unknown:
            return net(**inputs)  # the plain path raises the builder's error
        with torch.no_grad():
            return self._forward(inputs)

    def _run_step(self, i: int, s: "_Step", env: dict, want: dict) -> None:
        opts = self.options
        cl = opts["channels_last"]
        st, kind = s.st, s.kind
        m = st.layers[0]
        x = env[st.bottoms[0]] if st.bottoms else None
        if kind in ("conv", "dense") and isinstance(x, torch.Tensor) and (x.dim() != 4 or not x.is_floating_point()):
            kind = "plain"
        if kind == "dense":
            x = materialize(x)
            if cl and x.dtype == torch.float32:
                x = x.contiguous(memory_format=torch.channels_last)
            env[st.tops[0]] = self._kernel(m)(x, s.relu is not None, pad=tuple(m.pad))
        elif kind == "conv":
            kern = self._kernel(m)
            if opts["background"]:
                if not isinstance(x, SBlob):
                    x = structured_from_tensor(x, cl)
                y = sconv(x, kern, m.kernel, m.pad, relu=s.relu is not None, want=want.get(i))
            else:
                if cl and x.dtype == torch.float32:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = kern(x, s.relu is not None, pad=tuple(m.pad))
            env[st.tops[0]] = y
        elif kind == "pool" and isinstance(x, SBlob):
            env[st.tops[0]] = spool_max(x, m.kernel, m.stride, want=want.get(i))
        elif kind == "relu" and isinstance(x, SBlob):
            env[st.tops[0]] = srelu(x, m.negative_slope, inplace=st.inplace_ok)
        elif kind == "identity":
            env[st.tops[0]] = x
        else:
            kind = "plain"
        if kind == "plain":
            xs = [materialize(env[b]) for b in st.bottoms]
            ys = st.run(xs, st.inplace_ok)
            for t, y in zip(st.tops, ys):
                env[t] = y
        for n in st.drop:
            env.pop(n, None)
        if s.relu is not None:
            for n in s.relu.drop:
                env.pop(n, None)

    def _forward(self, inputs) -> dict[str, torch.Tensor]:
        opts = self.options
        env: dict[str, Any] = {}
        for n in self.net.inputs:
            x = inputs[n]
            env[n] = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
        steps = self._get_steps()
        want = self._schedule({n: tuple(env[n].shape) for n in self.net.inputs}) if opts["background"] else {}
        for i, s in enumerate(steps):
            # Named ranges: torch.profiler shows the time of every layer.
            with torch.profiler.record_function(s.st.name):
                self._run_step(i, s, env, want)
        out = {}
        for n in self.net.outputs:
            v = env[n]
            out[n] = materialize(v) if isinstance(v, SBlob) else v
        return out


def optimize(net: nn.Module, enabled: bool = True, **options: Any) -> FastNet:
    """The fast forward of ``net`` (a :class:`fcn_repro.caffe.Net`), sharing its parameters.

    ``enabled=False`` gives a wrapper that runs the plain path. Options (see
    :data:`FAST_DEFAULTS`): ``background``, ``conv``, ``channels_last``,
    ``gemm``, ``views``, ``winograd``, ``winograd_min_channels``. Returns a :class:`FastNet`; call it like the net:
    ``fast(data=x) -> {"score": ...}``.
    """
    if isinstance(net, FastNet):
        net = net.net
    return FastNet(net, enabled=enabled, **options)


def count_flops(net: nn.Module, input_shape: Sequence[int], background: bool = True,
                windows: bool = False) -> dict:
    """Multiply-add FLOPs (2 per MAC) of every Convolution of ``net`` on ``input_shape`` (N, C, H, W).

    With ``background``, only the data-box pixels count (what the fast path
    must compute; with ``windows``, the windows it does compute, halos
    included); else every output pixel (what Caffe computes). Returns
    {layer: flops} for the convolutions fed by structured blobs (those run dense, the score layers, in full).
    """
    fast = net if isinstance(net, FastNet) else FastNet(net)
    want = fast._schedule({fast.net.inputs[0]: tuple(input_shape)}) if windows else {}
    geo: dict = {fast.net.inputs[0]: input_geo(input_shape[1], input_shape[2], input_shape[3])}
    res: dict = {}
    for i, s in enumerate(fast._get_steps()):
        m = s.st.layers[0]
        g = geo.get(s.st.bottoms[0]) if s.st.bottoms else None
        if g is None:
            continue
        if s.kind in ("conv", "dense"):
            g_out, _ = conv_geo(g, m.num_output, m.kernel, m.stride, m.pad, m.dilation)
            per_px = 2 * g.c // m.group * m.kernel[0] * m.kernel[1] * m.num_output
            full = (0, g_out.ay.size, 0, g_out.ax.size)
            win = want.get(i, g_out.box) if background and s.kind == "conv" else full
            res[m.name] = per_px * _area(win) * input_shape[0]
            if s.kind == "dense":
                continue
        elif s.kind == "pool":
            g_out, _ = pool_geo(g, m.kernel, m.stride)
        elif s.kind in ("relu", "identity"):
            g_out = g
        else:
            continue
        for t in s.st.tops:
            geo[t] = g_out
    return res
