"""Layers on structured blobs: convolution, MAX pooling, ReLU (window and background alike)."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from fcn_repro.caffe.shapes import Window

from .geometry import Geo, _area, _clip, _inside, conv_geo, conv_reads, plateau_copies, pool_geo, pool_reads
from .kernels import ConvKernel
from .sblob import SBlob, expand_plateau, recompress, region

__all__ = ["sconv", "spool_max", "srelu"]


# ---------------------------------------------------------------- structured layers

def _bg_window_op(sb: SBlob, w: Window, fn, g_out: Geo) -> torch.Tensor:
    """The output's compressed background: ``fn(x, pad)`` on the input's, plateau replicated as needed."""
    k, s = w.extent, w.stride
    x = expand_plateau(expand_plateau(sb.bg, 2, sb.ay, plateau_copies(sb.ay, k[0], s[0])),
                       3, sb.ax, plateau_copies(sb.ax, k[1], s[1]))
    y = fn(x, w.pad)
    y = recompress(y, 2, g_out.ay.top, g_out.ay.bot, g_out.ay.size)
    return recompress(y, 3, g_out.ax.top, g_out.ax.bot, g_out.ax.size)


def _background(sb: SBlob, w: Window, fn, g_out: Geo, cache: Optional[dict], key) -> torch.Tensor:
    """:func:`_bg_window_op`, remembered in ``cache[key]`` when a cache is given.

    A background depends only on the input size and the parameters (it is
    what the net computes on an all-zero image), so the executor keeps it per
    input size and parameter version: a repeated size then runs none of the
    many small background operations again.
    """
    if cache is not None and key in cache:
        return cache[key]
    bg = _bg_window_op(sb, w, fn, g_out)
    if cache is not None:
        cache[key] = bg
    return bg


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
          want: Optional[tuple] = None, cache: Optional[dict] = None, key: Any = None) -> SBlob:
    """Convolution (Caffe geometry: kernel k, pad, the kernel's stride/dilation) of a structured blob.

    ``want``: the output window to compute (default: the output's data
    box; it must contain the box). The box is computed on its window (halo
    from the background, zeros beyond the map); the background on its
    compressed form. ``cache``/``key``: where the computed background is
    remembered (see :func:`_background`).
    """
    w = Window(tuple(k), kernel.stride, tuple(pad), kernel.dilation)
    g_in = sb.geo
    cout = kernel.weight.shape[0]
    g, how = conv_geo(g_in, cout, w)
    if how == "bias":
        b = kernel.b if kernel.b is not None else kernel.weight.new_zeros(cout)
        bg = b.detach().reshape(1, cout, 1, 1).clone()
        if relu:
            bg.relu_()
    elif how == "compute":
        def fn(x, p):
            return kernel(x, relu, pad=p)
        bg = _background(sb, w, fn, g, cache, key)
    else:
        bg = None
    win = g.box if want is None else tuple(want)
    if _area(win):
        x, p = _read(sb, conv_reads(win, w), g_in.hw)
        box = kernel(x, relu, pad=p, origin=(win[0], win[2]))
    else:
        box = kernel.weight.new_zeros((sb.n, cout, 0, 0))
    return SBlob(box, bg, g.ay, g.ax, False, sb.n, cout, win)


def spool_max(sb: SBlob, k: tuple, s: tuple, want: Optional[tuple] = None, cache: Optional[dict] = None,
              key: Any = None) -> SBlob:
    """Caffe MAX pooling with no padding (CEIL rounding: the last window is clipped to the map)."""
    w = Window(tuple(k), tuple(s), (0, 0))
    g_in = sb.geo
    g, how = pool_geo(g_in, w)
    if how == "compute":
        def fn(x, p):
            return F.max_pool2d(x, k, s, 0, ceil_mode=True)
        bg = _background(sb, w, fn, g, cache, key)
    else:
        bg = None
    win = g.box if want is None else tuple(want)
    if _area(win):
        x = region(sb, *pool_reads(win, w, g_in.hw))
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


