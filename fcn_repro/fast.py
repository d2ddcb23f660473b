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
  input image (rows ``[lo, hi)``, columns likewise), computed exactly by the
  layer's own convolution on that window (plus the halo it reads), and
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
  windows at the bottom edge line up as they do on the true map).

A box pixel and a background pixel are computed by the same arithmetic as in
the plain path (the same convolution, on the same numbers), so the results
agree to the rounding of the convolution kernels (within 1e-6 relative on
the fixtures). No approximation is made: this is *less work*, not a
different algorithm. Pooling (MAX, no padding), ReLU, Dropout (TEST) and
Convolution keep the structure; any other layer receives the blob
materialized (box pasted into the expanded background) and runs unchanged,
through the net's own plan (so the builder's fused Deconvolution->Crop and
Crop->Eltwise ops are used as they are).

Kernels: convolutions run through oneDNN on channels-last tensors with the
following ReLU fused in (``conv="mkldnn"``), or through ``F.conv2d``
(``conv="torch"``). 1x1 convolutions and big-kernel ones (``fc6``: 7x7 over
512 channels on a 22x22 map) run as one GEMM against a view of the weight
(``gemm=True``): no copy of the 411 MB fc6 weight, no per-call reorder.

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

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["optimize", "FastNet", "SBlob", "FAST_DEFAULTS", "structured_from_tensor", "materialize",
           "sconv", "spool_max", "srelu", "count_flops"]

# The default options of the fast path (measured on the benchmark machine; see
# benchmarks/RESULTS.md for the figures behind each choice).
FAST_DEFAULTS = dict(background=True, conv="mkldnn", channels_last=True, gemm=True)


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
    full.
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

    @staticmethod
    def full(size: int) -> "Axis":
        """The input blob: the data covers everything, the background is all zero."""
        return Axis(size, 0, size, 0, 0, 1 if size > 0 else 0)


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def _window_axis(ax: Axis, k: int, s: int, p: int, out: int) -> tuple:
    """Box and background bands of the output of a sliding window (k, s, p) along one axis.

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


def _expand_index(ax: Axis, copies: int, device) -> torch.Tensor:
    """Compressed index list with the plateau row repeated ``copies`` times."""
    idx = list(range(ax.top)) + [ax.top] * copies + list(range(ax.top + ax.m, ax.clen))
    return torch.tensor(idx, dtype=torch.long, device=device)


def _recompress(bg: torch.Tensor, dim: int, top: int, bot: int, true_size: int) -> tuple:
    """Trim a computed background along ``dim`` to top + (<= 1 plateau) + bot rows.

    Returns (bg, top, bot, m). When the bands meet (no plateau in the true
    map), the computed map must be the full one and is kept whole.
    """
    n = bg.shape[dim]
    if true_size - top - bot <= 0:
        if n != true_size:
            raise AssertionError(f"fast: compressed background of {n} rows for a map of {true_size} "
                                 "without plateau")
        return bg, true_size, 0, 0
    if n - top - bot < 1:
        raise AssertionError(f"fast: compressed background lost its plateau ({n} rows, bands {top}+{bot})")
    if n - top - bot == 1:
        return bg, top, bot, 1
    keep = torch.tensor(list(range(top + 1)) + list(range(n - bot, n)), dtype=torch.long, device=bg.device)
    return bg.index_select(dim, keep), top, bot, 1


# ---------------------------------------------------------------- structured blob

class SBlob:
    """A blob as (data box, compressed background); see the module docstring.

    ``box``: (N, C, hi-lo, wi-wlo) tensor, the true values inside the box.
    ``bg``: (1, C, ay.clen, ax.clen) compressed background (the same for every
    image of the batch: it does not depend on the data). ``bg_zero``: the
    background is known to be exactly zero (the input blob), so zero padding
    around it changes nothing.
    """
    __slots__ = ("box", "bg", "ay", "ax", "bg_zero", "n")

    def __init__(self, box: torch.Tensor, bg: torch.Tensor, ay: Axis, ax: Axis, bg_zero: bool = False,
                 n: Optional[int] = None):
        self.box, self.bg, self.ay, self.ax, self.bg_zero = box, bg, ay, ax, bg_zero
        self.n = box.shape[0] if n is None else n

    @property
    def shape(self) -> tuple:
        return (self.n, self.bg.shape[1], self.ay.size, self.ax.size)

    def __repr__(self) -> str:
        return (f"SBlob(shape={self.shape}, box=rows[{self.ay.lo},{self.ay.hi}) cols[{self.ax.lo},{self.ax.hi}), "
                f"bg={tuple(self.bg.shape)})")


def structured_from_tensor(x: torch.Tensor, channels_last: bool = True) -> SBlob:
    """An input blob (N, C, H, W): the data box is the whole map, the background zero."""
    if x.dim() != 4:
        raise ValueError(f"fast: a structured blob must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    bg = x.new_zeros((1, x.shape[1], 1, 1))
    return SBlob(x, bg, Axis.full(x.shape[2]), Axis.full(x.shape[3]), bg_zero=True)


def _bg_rows(sb: SBlob, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """Background values of true rows [y0, y1) x cols [x0, x1) (zeros outside the map), (1, C, h, w)."""
    bg = sb.bg
    zy, zx = bg.shape[2], bg.shape[3]
    bgz = F.pad(bg, (0, 1, 0, 1))  # one zero row/col at index clen: the zero padding
    ry = [sb.ay.cindex(y) for y in range(y0, y1)]
    rx = [sb.ax.cindex(x) for x in range(x0, x1)]
    ry = torch.tensor([zy if i < 0 else i for i in ry], dtype=torch.long, device=bg.device)
    rx = torch.tensor([zx if i < 0 else i for i in rx], dtype=torch.long, device=bg.device)
    return bgz.index_select(2, ry).index_select(3, rx)


def region(sb: SBlob, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """The true values of rows [y0, y1) x cols [x0, x1) of the blob; zeros outside the map.

    Returns the box itself (or a view of it) when the window lies inside the
    box; otherwise a new tensor, in the box's memory format.
    """
    ay, ax = sb.ay, sb.ax
    iy0, iy1 = max(y0, ay.lo), min(y1, ay.hi)
    ix0, ix1 = max(x0, ax.lo), min(x1, ax.hi)
    if iy0 == y0 and iy1 == y1 and ix0 == x0 and ix1 == x1 and y1 > y0 and x1 > x0:
        v = sb.box[:, :, y0 - ay.lo:y1 - ay.lo, x0 - ax.lo:x1 - ax.lo]
        return v
    n, c = sb.n, sb.bg.shape[1]
    fmt = torch.channels_last if sb.box.is_contiguous(memory_format=torch.channels_last) and \
        not sb.box.is_contiguous() else torch.contiguous_format
    out = torch.empty((n, c, y1 - y0, x1 - x0), dtype=sb.bg.dtype, device=sb.bg.device, memory_format=fmt)
    if iy1 <= iy0 or ix1 <= ix0:       # no overlap with the box: background only
        out.copy_(_bg_rows(sb, y0, y1, x0, x1).expand(n, -1, -1, -1))
        return out
    # Background bands around the box overlap, then the box overlap itself.
    if iy0 > y0:
        out[:, :, :iy0 - y0].copy_(_bg_rows(sb, y0, iy0, x0, x1).expand(n, -1, -1, -1))
    if iy1 < y1:
        out[:, :, iy1 - y0:].copy_(_bg_rows(sb, iy1, y1, x0, x1).expand(n, -1, -1, -1))
    if ix0 > x0:
        out[:, :, iy0 - y0:iy1 - y0, :ix0 - x0].copy_(_bg_rows(sb, iy0, iy1, x0, ix0).expand(n, -1, -1, -1))
    if ix1 < x1:
        out[:, :, iy0 - y0:iy1 - y0, ix1 - x0:].copy_(_bg_rows(sb, iy0, iy1, ix1, x1).expand(n, -1, -1, -1))
    out[:, :, iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0].copy_(
        sb.box[:, :, iy0 - ay.lo:iy1 - ay.lo, ix0 - ax.lo:ix1 - ax.lo])
    return out


def materialize(sb: Any) -> torch.Tensor:
    """The full (N, C, H, W) tensor of a structured blob (contiguous NCHW); tensors pass through."""
    if not isinstance(sb, SBlob):
        return sb
    return region(sb, 0, sb.ay.size, 0, sb.ax.size).contiguous()


# ---------------------------------------------------------------- structured layers

def _bg_window_op(sb: SBlob, k: tuple, s: tuple, p: tuple, fn, out_hw: tuple) -> tuple:
    """Apply a sliding-window op to the compressed background.

    ``fn(x, pad)`` computes the op on a (1, C, h, w) map with zero padding
    ``pad`` (h, w). Returns (bg, ay, ax) for the output (box fields unset).
    """
    bg = sb.bg
    ny = _plateau_copies(sb.ay, k[0], s[0])
    nx = _plateau_copies(sb.ax, k[1], s[1])
    x = bg.index_select(2, _expand_index(sb.ay, ny, bg.device)).index_select(3, _expand_index(sb.ax, nx, bg.device))
    y = fn(x, p)
    _, _, ty, by = _window_axis(sb.ay, k[0], s[0], p[0], out_hw[0])
    _, _, tx, bx = _window_axis(sb.ax, k[1], s[1], p[1], out_hw[1])
    y, ty, by, my = _recompress(y, 2, ty, by, out_hw[0])
    y, tx, bx, mx = _recompress(y, 3, tx, bx, out_hw[1])
    return y, (ty, by, my), (tx, bx, mx)


class ConvKernel:
    """How one convolution runs on a window (padding already applied): GEMM or oneDNN/F.conv2d.

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
                 impl: str = "mkldnn", gemm: bool = False):
        self.weight, self.bias = weight, bias
        self.stride, self.dilation, self.groups = tuple(stride), tuple(dilation), int(groups)
        self.impl = impl
        kh, kw = weight.shape[2], weight.shape[3]
        self.gemm = bool(gemm) and self.groups == 1 and (kh * kw == 1 or kh * kw >= 25)
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
        if self.gemm:
            self.w_mat = w.reshape(w.shape[0], -1)          # a view when the parameter is contiguous
        elif w.dtype == torch.float32 and w.device.type == "cpu" and self.impl in ("mkldnn", "torch"):
            self.w_cl = w.contiguous(memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor, relu: bool) -> torch.Tensor:
        """Convolution with zero padding 0 of ``x`` (N, C, h, w); ReLU applied when ``relu``."""
        self.refresh()
        if self.gemm:
            return self._gemm(x, relu)
        w = self.w_cl if self.w_cl is not None else self.weight.detach()
        if self.impl == "mkldnn" and x.dtype == torch.float32 and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
            return torch.ops.mkldnn._convolution_pointwise(
                x, w, self.b, [0, 0], list(self.stride), list(self.dilation), self.groups,
                "relu" if relu else "none", [], "")
        if not x.is_contiguous(memory_format=torch.channels_last):
            w = self.weight.detach()
        y = F.conv2d(x, w, self.b, self.stride, 0, self.dilation, self.groups)
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
        oh = (x.shape[2] - (self.dilation[0] * (kh - 1) + 1)) // self.stride[0] + 1
        ow = (x.shape[3] - (self.dilation[1] * (kw - 1) + 1)) // self.stride[1] + 1
        cols = F.unfold(x, (kh, kw), dilation=self.dilation, stride=self.stride)
        y = torch.matmul(self.w_mat, cols)                          # (N, Cout, oh*ow)
        if self.b is not None:
            y += self.b[:, None]
        if relu:
            y.relu_()
        return y.view(n, cout, oh, ow)


def sconv(sb: SBlob, kernel: ConvKernel, k: tuple, pad: tuple, relu: bool = False) -> SBlob:
    """Convolution (Caffe geometry: kernel k, pad, the kernel's stride/dilation) of a structured blob.

    The box is computed on its window (halo from the background, zeros
    beyond the map); the background on its compressed form.
    """
    s, d = kernel.stride, kernel.dilation
    ke = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
    out = tuple((n + 2 * p - kk) // ss + 1 for n, p, kk, ss in zip((sb.ay.size, sb.ax.size), pad, ke, s))
    if out[0] < 1 or out[1] < 1:
        raise ValueError(f"fast: convolution output would be empty for input {sb.shape}")
    ly, hy, _, _ = _window_axis(sb.ay, ke[0], s[0], pad[0], out[0])
    lx, hx, _, _ = _window_axis(sb.ax, ke[1], s[1], pad[1], out[1])
    # Background: a zero background convolves to the bias everywhere (the
    # zero padding is indistinguishable from it), without computing anything.
    if sb.bg_zero:
        cout = kernel.weight.shape[0]
        b = kernel.b if kernel.b is not None else sb.bg.new_zeros(cout)
        bg = b.reshape(1, cout, 1, 1).to(sb.bg.dtype)
        if relu:
            bg = torch.relu(bg)
        ay = Axis(out[0], ly, hy, 0, 0, 1)
        ax = Axis(out[1], lx, hx, 0, 0, 1)
    else:
        def fn(x, p):
            y = F.conv2d(x, kernel.weight.detach(), kernel.b, s, p, d, kernel.groups)
            return torch.relu_(y) if relu else y
        bg, (ty, by, my), (tx, bx, mx) = _bg_window_op(sb, ke, s, pad, fn, out)
        ay = Axis(out[0], ly, hy, ty, by, my)
        ax = Axis(out[1], lx, hx, tx, bx, mx)
    if hy > ly and hx > lx:
        win = region(sb, ly * s[0] - pad[0], (hy - 1) * s[0] - pad[0] + ke[0],
                     lx * s[1] - pad[1], (hx - 1) * s[1] - pad[1] + ke[1])
        box = kernel(win, relu)
    else:
        box = bg.new_zeros((sb.n, bg.shape[1], 0, 0))
    return SBlob(box, bg, ay, ax, False, sb.n)


def spool_max(sb: SBlob, k: tuple, s: tuple) -> SBlob:
    """Caffe MAX pooling with no padding (CEIL rounding: the last window is clipped to the map)."""
    out = tuple(_ceil_div(n - kk, ss) + 1 for n, kk, ss in zip((sb.ay.size, sb.ax.size), k, s))
    ly, hy, _, _ = _window_axis(sb.ay, k[0], s[0], 0, out[0])
    lx, hx, _, _ = _window_axis(sb.ax, k[1], s[1], 0, out[1])

    def fn(x, p):
        return F.max_pool2d(x, k, s, 0, ceil_mode=True)
    bg, (ty, by, my), (tx, bx, mx) = _bg_window_op(sb, k, s, (0, 0), fn, out)
    if hy > ly and hx > lx:
        win = region(sb, ly * s[0], min((hy - 1) * s[0] + k[0], sb.ay.size),
                     lx * s[1], min((hx - 1) * s[1] + k[1], sb.ax.size))
        box = F.max_pool2d(win, k, s, 0, ceil_mode=True)
    else:
        box = bg.new_zeros((sb.n, bg.shape[1], 0, 0))
    return SBlob(box, bg, Axis(out[0], ly, hy, ty, by, my), Axis(out[1], lx, hx, tx, bx, mx), False, sb.n)


def srelu(sb: SBlob, negative_slope: float = 0.0, inplace: bool = False) -> SBlob:
    """Caffe ReLU of a structured blob (elementwise: box and background alike)."""
    def f(t, ip):
        if negative_slope == 0.0:
            return torch.relu_(t) if ip else torch.relu(t)
        return F.leaky_relu(t, negative_slope, inplace=ip)
    return SBlob(f(sb.box, inplace), f(sb.bg, False), sb.ay, sb.ax, sb.bg_zero, sb.n)


def _pool_ok(m) -> bool:
    return (m.method == "MAX" and not m.global_pooling and tuple(m.pad) == (0, 0)
            and m.round_mode == "CEIL" and len(m.top_names) == 1 and not getattr(m, "force_explicit", False))


# ---------------------------------------------------------------- the net wrapper

class FastNet(nn.Module):
    """A fast forward for a built :class:`fcn_repro.caffe.Net` (shares its parameters).

    ``forward(**inputs) -> {output blob: tensor}``, exactly like ``net.forward``.
    ``enabled=False`` (settable) runs the plain net. See the module docstring.

    Options: ``background`` (skip the input-independent padding region),
    ``conv`` ("mkldnn": oneDNN channels-last with fused ReLU; "torch":
    F.conv2d), ``channels_last``, ``gemm`` (1x1 convolutions and kernels
    of 25 taps or more run as one GEMM on a view of the weight).
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
        if self.options["conv"] == "mkldnn" and not torch.backends.mkldnn.is_available():
            self.options["conv"] = "torch"
        self._kernels: dict[str, ConvKernel] = {}
        self._plan_id = None
        self._steps = None

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
            kern = ConvKernel(w, b, m.stride, m.dilation, m.group, self.options["conv"], self.options["gemm"])
            self._kernels[m.name] = kern
        return kern

    def _get_steps(self):
        plan = self.net._get_plan()
        if self._steps is not None and self._plan_id is plan:
            return self._steps
        steps = []
        i = 0
        while i < len(plan):
            st = plan[i]
            m = st.layers[0]
            kind = "plain"
            fuse_relu = None
            if st.kind == "layer":
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
                            fuse_relu = nx
                elif t == "Pooling" and _pool_ok(m):
                    kind = "pool"
                elif t == "ReLU":
                    kind = "relu"
                elif t == "Dropout" and m.phase != "TRAIN" and m.scale_train:
                    kind = "identity"
            if st.loss:
                kind = "plain"
                fuse_relu = None
            steps.append((kind, st, fuse_relu))
            i += 2 if fuse_relu is not None else 1
        self._steps, self._plan_id = steps, plan
        return steps

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

    def _forward(self, inputs) -> dict[str, torch.Tensor]:
        opts = self.options
        cl = opts["channels_last"]
        env: dict[str, Any] = {}
        for n in self.net.inputs:
            x = inputs[n]
            x = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
            env[n] = x
        structured_inputs = set()
        for kind, st, fr in self._get_steps():
            m = st.layers[0]
            if kind == "conv" and (opts["background"] or not isinstance(env[st.bottoms[0]], SBlob)):
                x = env[st.bottoms[0]]
                if not isinstance(x, SBlob):
                    if x.dim() != 4 or not x.is_floating_point():
                        kind = "plain"
                    elif opts["background"]:
                        x = structured_from_tensor(x, cl)
                        structured_inputs.add(st.bottoms[0])
                if kind == "conv":
                    kern = self._kernel(m)
                    if isinstance(x, SBlob):
                        y = sconv(x, kern, m.kernel, m.pad, relu=fr is not None)
                    else:
                        win = F.pad(x, (m.pad[1], m.pad[1], m.pad[0], m.pad[0])) if any(m.pad) else x
                        y = kern(win, fr is not None)
                    env[st.tops[0]] = y
            elif kind == "pool" and isinstance(env[st.bottoms[0]], SBlob):
                env[st.tops[0]] = spool_max(env[st.bottoms[0]], m.kernel, m.stride)
            elif kind == "relu" and isinstance(env[st.bottoms[0]], SBlob):
                env[st.tops[0]] = srelu(env[st.bottoms[0]], m.negative_slope, inplace=st.inplace_ok)
            elif kind == "identity":
                env[st.tops[0]] = env[st.bottoms[0]]
            else:
                kind = "plain"
            if kind == "plain":
                xs = [materialize(env[b]) for b in st.bottoms]
                ys = st.run(xs, st.inplace_ok)
                for t, y in zip(st.tops, ys):
                    env[t] = y
            for n in st.drop:
                env.pop(n, None)
            if fr is not None:
                for n in fr.drop:
                    env.pop(n, None)
        out = {}
        for n in self.net.outputs:
            v = env[n]
            out[n] = materialize(v).contiguous() if isinstance(v, SBlob) else v
        return out


def optimize(net: nn.Module, enabled: bool = True, **options: Any) -> FastNet:
    """The fast forward of ``net`` (a :class:`fcn_repro.caffe.Net`), sharing its parameters.

    ``enabled=False`` gives a wrapper that runs the plain path. Options (see
    :data:`FAST_DEFAULTS`): ``background``, ``conv``, ``channels_last``,
    ``gemm``. Returns a :class:`FastNet`; call it like the net:
    ``fast(data=x) -> {"score": ...}``.
    """
    if isinstance(net, FastNet):
        net = net.net
    return FastNet(net, enabled=enabled, **options)


def count_flops(net: nn.Module, input_shape: Sequence[int], background: bool = True) -> dict:
    """Multiply-add FLOPs (2 per MAC) of every Convolution of ``net`` on ``input_shape`` (N, C, H, W).

    With ``background``, only the data-box pixels count (what the fast path
    computes); else every output pixel (what Caffe computes). Returns
    {layer: flops} for the convolutions that run structured.
    """
    fast = FastNet(net, background=background)
    res: dict[str, int] = {}
    x = torch.zeros(tuple(input_shape))
    env: dict[str, Any] = {net.inputs[0]: structured_from_tensor(x, False)}
    # Geometry only: walk the plan with shapes, no convolution is run on data.
    for kind, st, fr in fast._get_steps():
        m = st.layers[0]
        xb = env.get(st.bottoms[0]) if st.bottoms else None
        if kind == "conv" and isinstance(xb, SBlob):
            s, d = m.stride, m.dilation
            ke = (d[0] * (m.kernel[0] - 1) + 1, d[1] * (m.kernel[1] - 1) + 1)
            out = tuple((n + 2 * p - kk) // ss + 1 for n, p, kk, ss in zip((xb.ay.size, xb.ax.size), m.pad, ke, s))
            ly, hy, ty, by = _window_axis(xb.ay, ke[0], s[0], m.pad[0], out[0])
            lx, hx, tx, bx = _window_axis(xb.ax, ke[1], s[1], m.pad[1], out[1])
            cin = xb.shape[1]
            cout = m.num_output
            per_px = 2 * cin // m.group * m.kernel[0] * m.kernel[1] * cout
            px = (hy - ly) * (hx - lx) if background else out[0] * out[1]
            res[m.name] = per_px * px * xb.n
            if not background:
                ly, hy, lx, hx = 0, out[0], 0, out[1]
            env[st.tops[0]] = SBlob(torch.empty(0), torch.empty(1, cout, 1, 1),
                                    Axis(out[0], ly, hy, 0, 0, 1), Axis(out[1], lx, hx, 0, 0, 1), False, xb.n)
        elif kind == "pool" and isinstance(xb, SBlob):
            k, s = m.kernel, m.stride
            out = tuple(_ceil_div(n - kk, ss) + 1 for n, kk, ss in zip((xb.ay.size, xb.ax.size), k, s))
            ly, hy, _, _ = _window_axis(xb.ay, k[0], s[0], 0, out[0])
            lx, hx, _, _ = _window_axis(xb.ax, k[1], s[1], 0, out[1])
            env[st.tops[0]] = SBlob(torch.empty(0), xb.bg, Axis(out[0], ly, hy, 0, 0, 1),
                                    Axis(out[1], lx, hx, 0, 0, 1), False, xb.n)
        elif kind in ("relu", "identity") and isinstance(xb, SBlob):
            env[st.tops[0]] = xb
    return res
