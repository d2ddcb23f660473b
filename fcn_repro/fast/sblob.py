"""Structured blobs: a window of true values plus a compressed background (see :mod:`fcn_repro.fast`)."""
from __future__ import annotations

from typing import Any, Optional

import torch

from .geometry import Axis, Geo, _covers, input_geo

__all__ = ["SBlob", "structured_from_tensor", "region", "materialize", "expand_plateau", "recompress"]


def expand_plateau(x: torch.Tensor, dim: int, ax: Axis, copies: int) -> torch.Tensor:
    """The compressed map ``x`` with its plateau row (along ``dim``) repeated ``copies`` times."""
    if ax.m == 0 or copies == 1:
        return x
    top, rest = x.narrow(dim, 0, ax.top), x.narrow(dim, ax.top + 1, ax.bot)
    shape = list(x.shape)
    shape[dim] = copies
    mid = x.narrow(dim, ax.top, 1).expand(shape)
    return torch.cat([top, mid, rest], dim)


def recompress(bg: torch.Tensor, dim: int, top: int, bot: int, true_size: int) -> torch.Tensor:
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

    @property
    def geo(self) -> Geo:
        """The blob's geometry without its values."""
        return Geo(self.ay, self.ax, self.c, "zero" if self.bg_zero else ("none" if self.bg is None else "some"))

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
    # Background bands around the window, then the window's overlap itself.
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


