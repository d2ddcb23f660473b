"""Layer-by-layer streaming: the whole-image answer with every layer's rows computed once.

Exact tiles (:mod:`fcn_repro.tiles`) recompute their margins: for the VGG FCNs
about 225 input pixels on each side of a window, so at the window sizes that
fit a memory budget half of the work is done twice. Streaming does not
recompute anything along the rows. The image is fed in bands of rows, top to
bottom; every layer keeps a short buffer of its top's rows (the rows its
readers still need) and computes each of its output rows once, as soon as the
rows it reads are there. A band of conv1's rows is gone by the time the scores
of the image's last rows are computed; what is held at any moment is a few rows
of every map, at the map's full width, plus the skip branches' rows waiting
for the coarser path (21-channel score maps in the FCNs).

Each output row reads the same input rows, with the same zero padding at the
image's top and bottom (written out as zero rows, as :func:`onednn_conv2d`
writes large pads), as the whole-image forward, through the same kernels: the
plain layers' convolution (:func:`fcn_repro.caffe.layers.convolution._conv2d`),
the fast path's :class:`fcn_repro.fast.kernels.ConvKernel` (GEMMs in fixed
blocks, oneDNN on NCHW maps), the project's deconvolution op, and MAX pooling
(exact in any order). So the scores equal the whole-image forward's to the
rounding of the kernels, as the tiles' do (tests/test_streaming.py: bitwise
on the fixture nets in float32, and on full-width FCN-8s in the plain path).
What still rounds by the map's size: the fast path's Winograd layers, whose
tiles a band lays on the map's grid (``origin``) but which the whole image's
forward also computes on its compressed background, and whose tiles a window
cuts at its edges (full-width FCN-8s: each within the fast path's error
budget of the plain scores, :mod:`fcn_repro.fast.fidelity`; bitwise with
``winograd=False``), and the deconvolution when its weights are not the FCNs'
per-class bilinear ones (a sum over classes).

The rows each output row reads come from the one place that knows a layer's
window (``layer.window``: kernel extent, stride, pad, dilation) and the
sizes from :class:`fcn_repro.tiles.Geometry` (itself built on
:mod:`fcn_repro.caffe.shapes`). Columns are not streamed: a band of rows spans
the whole width, or a column window of an exact-tiles plan (margins along the
columns only) when even a few rows of the full width exceed the budget.

:func:`plan_image` is the planner the tools use (the whole image, exact
tiles, or streaming when the whole forward would exceed the memory budget
and the net can be streamed), :func:`run_image` runs its plan.

Streamable layers: Convolution, Deconvolution (extent >= stride), Pooling
(MAX or AVE, no mask top), Crop (spatial axes, or channels too), and the
layers that act on each position by itself (ReLU, Dropout, Eltwise, Concat
and Softmax over channels, LRN across channels, ...). Any other layer makes
:class:`Stream` refuse the net (:class:`StreamError`) and the planner uses
exact tiles instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from fcn_repro import limits, ops
from fcn_repro.caffe.layers.convolution import _conv2d
from fcn_repro.caffe.layers.pooling import FLT_MAX, _ave_divisor
from fcn_repro.progress import bar as progress_bar
from fcn_repro.tiles import (POINTWISE, AxisTile, Geometry, Outputs, Sink, Span, TilePlan, TilingError, _base,
                             _fit_axis, _TooSmall, over_budget, plan_tiles, run_tiled, show_progress,
                             smallest_window)

__all__ = ["StreamError", "Stream", "row_reads", "plan_image", "run_image"]


class StreamError(TilingError):
    """The net has a layer that cannot be streamed by rows (names it); exact tiles still may run it."""


def row_reads(o0: int, o1: int, extent: int, stride: int, pad: int) -> Tuple[int, int]:
    """The rows [lo, hi) of a window layer's bottom (extent, stride, pad; unclipped) that its
    output rows [o0, o1) read: output o reads [o*stride - pad, o*stride - pad + extent)."""
    return o0 * stride - pad, (o1 - 1) * stride - pad + extent


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``, or a no-op where there is none.

    A band's maps are freed when the next band's are made, but glibc keeps
    most freed blocks under 32 MB in its heap, scattered among live ones, so a
    long image's resident memory would creep up band after band; trimming
    after each band hands the free pages back (measured: ~300 MB less peak
    RSS on a 4000-pixel-wide image through FCN-8s, for well under 1% of the time).
    """
    try:
        import ctypes
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: fn(0)


_trim_heap = _malloc_trim()


def _pad_rows(x: torch.Tensor, top: int, bottom: int, value: float = 0.0) -> torch.Tensor:
    """x with ``top`` and ``bottom`` rows of ``value`` added (x may have no rows: all padding)."""
    if not (top or bottom):
        return x
    if x.shape[2] == 0:
        return x.new_full((x.shape[0], x.shape[1], top + bottom, x.shape[3]), value)
    return F.pad(x, (0, 0, top, bottom), value=value)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class _Node:
    """One layer in single-assignment form: bottoms and tops are version names (``name@k``)."""
    layer: object
    kind: str            # conv, deconv, pool, crop, point, silence
    bottoms: List[str]
    tops: List[str]
    relu: bool = False   # a convolution with the ReLU that alone reads it fused in (in place)


class Stream:
    """A net (:class:`fcn_repro.caffe.Net` or its fast wrapper) run by bands of rows.

    Raises :class:`StreamError` for a net with a layer that cannot be streamed.
    """

    def __init__(self, net, geometry: Optional[Geometry] = None):
        self.net = net
        self.base = _base(net)
        self.geo = geometry or Geometry(net)
        self.fast = net if net is not self.base else None
        version: Dict[str, str] = {b: f"{b}@0" for b in self.geo.inputs}
        count: Dict[str, int] = {b: 0 for b in self.geo.inputs}
        self.nodes: List[_Node] = []
        for m in self.geo.layers:
            kind = self._kind(m)
            bottoms = []
            for b in m.bottom_names:
                if b not in version:
                    raise StreamError(f"{self.geo.filename}: layer {m.name!r} reads {b!r}, which nothing wrote")
                bottoms.append(version[b])
            tops = []
            for t in m.top_names:
                count[t] = count.get(t, -1) + 1
                version[t] = f"{t}@{count[t]}"
                tops.append(version[t])
            self.nodes.append(_Node(m, kind, bottoms, tops))
        self.outputs = {o: version[o] for o in self.geo.outputs}
        self.inputs = {b: f"{b}@0" for b in self.geo.inputs}
        self._fuse_relus()
        self.readers: Dict[str, List[Tuple[_Node, int]]] = {}
        for n in self.nodes:
            for i, b in enumerate(n.bottoms):
                self.readers.setdefault(b, []).append((n, i))

    def _fuse_relus(self) -> None:
        """A ReLU (slope 0) that is the only reader of a convolution's top runs in place on the
        convolution's new rows: one band of the map less in memory (the value is the same)."""
        readers: Dict[str, List[_Node]] = {}
        for n in self.nodes:
            for b in n.bottoms:
                readers.setdefault(b, []).append(n)
        producer = {t: n for n in self.nodes for t in n.tops}
        kept = []
        for n in self.nodes:
            m = n.layer
            src = producer.get(n.bottoms[0]) if n.bottoms else None
            if (m.type_name == "ReLU" and float(getattr(m, "negative_slope", 0.0)) == 0.0 and src is not None
                    and src.kind == "conv" and not src.relu and len(n.bottoms) == 1 and len(n.tops) == 1
                    and readers.get(n.bottoms[0]) == [n] and n.bottoms[0] not in self.outputs.values()):
                src.relu = True
                src.tops = list(n.tops)
                continue
            kept.append(n)
        self.nodes = kept

    def _kind(self, m) -> str:
        t = m.type_name
        why = None
        if t == "Convolution":
            kind = "conv"
        elif t == "Deconvolution":
            kind = "deconv"
            w = m.window
            if w.extent[0] < w.stride[0]:
                why = "its kernel is shorter than its stride (rows that receive nothing)"
        elif t == "Pooling":
            kind = "pool"
            if len(m.top_names) != 1:
                why = "its mask top holds whole-map positions"
        elif t == "Crop":
            kind = "crop"
            if m.offsets(4)[0] < 1:
                why = "it crops the batch axis"
        elif t == "Silence":
            kind = "silence"
        elif t == "LRN" and m.region != "ACROSS_CHANNELS" and m.size > 1:
            kind, why = "point", "a WITHIN_CHANNEL window"
        elif t in POINTWISE or t in ("Concat", "Softmax", "LRN"):
            kind = "point"      # Geometry refused Concat/Softmax over other axes
        else:
            kind, why = "point", "no row rule for it"
        if why:
            raise StreamError(f"{self.geo.filename}: layer {m.name!r} ({t}) cannot be streamed by rows: {why}")
        return kind

    # ------------------------------------------------------------ geometry
    def sizes(self, h: int, w: int, c0: int, c1: int) -> Tuple[Dict[str, int], Dict[str, int]]:
        """(rows, columns) of every version for an h x w image and the column window [c0, c1):
        the rows of the whole maps, the columns of the window's maps."""
        out: List[Dict[str, int]] = []
        for axis, n, a, b in ((0, h, 0, h), (1, w, c0, c1)):
            env = {v: Span(n, a, b - a, a, b) for v in self.inputs.values()}
            for node in self.nodes:
                spans = self.geo._step(node.layer, axis, [env[x] for x in node.bottoms])
                env.update(zip(node.tops, spans))
            out.append({v: s.n for v, s in env.items()})
        return out[0], out[1]

    def _channels(self, v: str) -> int:
        return self.geo.channels.get(v.rsplit("@", 1)[0], 1)

    def band_bytes(self, sizes: Tuple[Dict[str, int], Dict[str, int]], h: int, chunk: int,
                   itemsize: int = 4) -> int:
        """Estimated peak bytes of the buffers while streaming bands of ``chunk`` input rows of an image
        ``h`` rows tall, ``sizes`` its maps' (:meth:`sizes`): the widest map's rows for one band (plus a
        few rows of halo) four times over (a reader's buffer, its padded copy, the new rows, the buffer
        they are appended to)."""
        rows, cols = sizes
        widest = max(self._channels(v) * cols[v] * itemsize * (chunk * rows[v] / h + 8) for v in rows)
        return int(4 * widest)

    # ------------------------------------------------------------ row rules
    @staticmethod
    def _window(node: _Node) -> Tuple[int, int, int]:
        """(extent, stride, pad) along the rows of a Convolution, Deconvolution or Pooling."""
        w = node.layer.window
        return (w.kernel[0] if node.kind == "pool" else w.extent[0]), w.stride[0], w.pad[0]

    def _reads(self, node: _Node, i: int, o0: int, o1: int, rows: Dict[str, int]) -> Optional[Tuple[int, int]]:
        """The rows [lo, hi) of bottom i, in its map's coordinates and not clipped to it (the padding
        rows of a window), that the output rows [o0, o1) of ``node`` read; None when it reads no rows (a
        Crop's reference); all of it for a per-channel operand (Scale/Bias by a blob of another size)."""
        if node.kind in ("conv", "pool"):
            return row_reads(o0, o1, *self._window(node))
        if node.kind == "deconv":              # input i reaches outputs [i*s - p, i*s - p + extent)
            ext, s, p = self._window(node)
            return _ceil_div(o0 + p - ext + 1, s), (o1 - 1 + p) // s + 1
        if node.kind == "crop":
            if i == 1:
                return None
            off = self._crop_offsets(node.layer)[2]
            return o0 + off, o1 + off
        size = rows[node.bottoms[i]]
        return (0, size) if size != rows[node.tops[0]] else (o0, o1)

    def _needs(self, node: _Node, i: int, o0: int, o1: int, rows: Dict[str, int]) -> Optional[Tuple[int, int]]:
        """:meth:`_reads` clipped to the bottom's map."""
        r = self._reads(node, i, o0, o1, rows)
        size = rows[node.bottoms[i]]
        return None if r is None else (max(0, r[0]), min(size, r[1]))

    def _ready(self, node: _Node, done: Dict[str, int], rows: Dict[str, int]) -> int:
        """How many of the top's rows can be computed from the bottoms' rows computed so far: the
        inverse of :meth:`_reads` (the last output row whose rows read are all there)."""
        top = rows[node.tops[0]]
        n = top
        for i, b in enumerate(node.bottoms):
            a = done[b]
            if a >= rows[b] or (node.kind == "crop" and i == 1):
                continue
            if node.kind in ("conv", "pool"):
                ext, s, p = self._window(node)
                k = (a + p - ext) // s + 1          # o*s - p + ext <= a
            elif node.kind == "deconv":
                ext, s, p = self._window(node)
                k = a * s - p                       # (o + p) // s + 1 <= a
            elif node.kind == "crop":
                k = a - self._crop_offsets(node.layer)[2]
            elif rows[b] != top:
                k = 0                               # a per-channel operand: wait for all of it
            else:
                k = a
            n = min(n, max(0, k))
        return n

    @staticmethod
    def _crop_offsets(m) -> List[int]:
        cax, offs = m.offsets(4)
        off = [0, 0, 0, 0]
        for j, o in enumerate(offs):
            off[cax + j] = o
        return off

    # ------------------------------------------------------------ running
    def run(self, feed: Mapping[str, torch.Tensor], chunk: int, size: Tuple[int, int], cols: Tuple[int, int],
            emit: Callable[[str, int, int, torch.Tensor], None],
            band_done: Optional[Callable[[], None]] = None, held_rows: Optional[Dict[str, int]] = None) -> None:
        """Stream one column window of an image through the net.

        ``feed``: {input blob: (1, C, H, c1 - c0) tensor}, the window's columns
        of the preprocessed image of ``size`` (H, W); ``cols``: (c0, c1).
        ``emit(output blob, r0, r1, rows)`` receives each output's rows
        [r0, r1) (a (1, C, r1 - r0, n) tensor of the window's map) as soon as they
        are computed, in order. ``band_done()`` after each band of ``chunk`` input rows.
        ``held_rows``: filled with the most rows each map (version) held at once.
        """
        h, w = size
        rows, ncols = self.sizes(h, w, cols[0], cols[1])
        done: Dict[str, int] = {}
        held: Dict[str, Optional[torch.Tensor]] = {}
        first: Dict[str, int] = {}
        for b, v in self.inputs.items():
            done[v], held[v], first[v] = 0, feed[b], 0
        for node in self.nodes:
            for t in node.tops:
                done[t], held[t], first[t] = 0, None, 0
        outs = {v: o for o, v in self.outputs.items()}
        sent = {v: 0 for v in outs}

        def take(v: str, r0: int, r1: int) -> torch.Tensor:
            if not first[v] <= r0 <= r1 <= done[v]:
                raise TilingError(f"internal: rows [{r0}, {r1}) of {v} asked, [{first[v]}, {done[v]}) held")
            return held[v][:, :, r0 - first[v]:r1 - first[v]]

        def trim(v: str) -> None:
            if v in self.inputs.values():
                return
            low = sent[v] if v in outs else done[v]
            for node, i in self.readers.get(v, ()):
                t = node.tops[0] if node.tops else None
                if t is None or done[t] >= rows[t]:
                    continue
                need = self._needs(node, i, done[t], done[t] + 1, rows)
                if need is not None:
                    low = min(low, need[0])
            if held[v] is None or low <= first[v]:
                return
            if low >= done[v]:
                held[v] = None
            else:
                rest = held[v][:, :, low - first[v]:]
                # a few rows kept of a band: copied, so that the band's storage goes
                held[v] = rest.clone() if 2 * rest.shape[2] <= held[v].shape[2] else rest
            first[v] = low

        # At most about one band's worth of rows per call (scaled to each map's resolution), so that
        # the image's top and bottom padding (100 rows in the FCNs) and the rows a coarse layer
        # releases at once are worked through in several passes, not held all at the same time.
        cap = {t: max(1, -(-chunk * rows[t] // h)) for node in self.nodes for t in node.tops}
        with torch.inference_mode():
            # the plain kernels exactly when the fast net's whole-image forward would run the plain net
            plain = self.fast is None or self.fast.runs_plain(dict(feed))
            for end in range(min(chunk, h), h + chunk, chunk):
                end = min(end, h)
                for v in self.inputs.values():
                    done[v] = end
                moved = True
                while moved:
                    moved = False
                    for node in self.nodes:
                        if node.kind == "silence" or not node.tops:
                            continue
                        t0 = node.tops[0]
                        o0 = done[t0]
                        o1 = min(self._ready(node, done, rows), o0 + cap[t0])
                        if o1 > o0:
                            ys = self._compute(node, o0, o1, take, rows, ncols, plain)
                            for t, y in zip(node.tops, ys):
                                held[t] = y if held[t] is None else torch.cat([held[t], y], 2)
                                done[t] = o1
                                if held_rows is not None:
                                    held_rows[t] = max(held_rows.get(t, 0), held[t].shape[2])
                            del ys, y
                            moved = True
                        for b in node.bottoms:
                            trim(b)
                    for v, o in outs.items():
                        if done[v] > sent[v]:
                            emit(o, sent[v], done[v], take(v, sent[v], done[v]))
                            sent[v] = done[v]
                            trim(v)
                _trim_heap()
                if band_done is not None:
                    band_done()
                if end == h:
                    break
        missing = [o for v, o in outs.items() if sent[v] < rows[v]]
        if missing:
            raise TilingError(f"internal: streaming left rows of {', '.join(missing)} uncomputed")

    def _compute(self, node: _Node, o0: int, o1: int, take, rows, ncols, plain: bool) -> List[torch.Tensor]:
        """The top rows [o0, o1) of ``node`` from its bottoms' held rows."""
        m, kind = node.layer, node.kind
        b = node.bottoms[0]
        size = rows[b]
        if kind in ("conv", "pool"):
            lo, hi = self._reads(node, 0, o0, o1, rows)
            a = min(max(lo, 0), size)
            z = max(min(hi, size), a)
            x = take(b, a, z)
            top, bottom = a - lo, hi - z       # rows of the map's padding (some rows may be all padding)
            if kind == "conv":
                x = _pad_rows(x, top, bottom)          # the image's own zero padding, written out
                pad = (0, m.window.pad[1])
                if not plain and x.dim() == 4 and x.is_floating_point():
                    return [self.fast._kernel(m)(x, node.relu, pad=pad, origin=(o0, 0))]
                y = _conv2d(x, m.blobs[0], m.bias(), m.stride, pad, m.dilation, m.group)
                return [torch.relu_(y) if node.relu else y]
            k, s, p = m.kernel, m.stride, m.pad
            cin, cout = ncols[b], ncols[node.tops[0]]
            right = (cout - 1) * s[1] + k[1] - cin - p[1]
            if m.method == "MAX":
                xp = F.pad(_pad_rows(x, top, bottom, float("-inf")), (p[1], right), value=float("-inf"))
                return [F.max_pool2d(xp, k, s).clamp_min(-FLT_MAX)]
            xp = F.pad(_pad_rows(x, top, bottom), (p[1], right), value=0.0)
            sums = F.avg_pool2d(xp, k, s, divisor_override=1)
            dh = _ave_divisor(size, rows[node.tops[0]], k[0], s[0], p[0], x)[o0:o1]
            dw = _ave_divisor(cin, cout, k[1], s[1], p[1], x)
            return [sums / (dh[:, None] * dw[None, :])]
        if kind == "deconv":
            _, s, p = self._window(node)
            i0, i1 = self._needs(node, 0, o0, o1, rows)
            x = take(b, i0, i1)
            start = i0 * s - p           # the whole-map row of the first row of x's deconvolution
            return [ops.deconv2d_crop(x, m.blobs[0], m.bias(), m.stride, (0, m.pad[1]), m.dilation, m.group,
                                      (o0 - start, 0), (o1 - o0, ncols[node.tops[0]]))]
        if kind == "crop":
            off = self._crop_offsets(m)
            x = take(b, *self._reads(node, 0, o0, o1, rows))
            ch = self._channels(node.tops[0]) if off[1] or m.offsets(4)[0] <= 1 else x.shape[1]
            return [x[:, off[1]:off[1] + ch, :, off[3]:off[3] + ncols[node.tops[0]]]]
        xs = [take(v, *self._reads(node, i, o0, o1, rows)) for i, v in enumerate(node.bottoms)]
        return list(m(*xs, inplace=False))


# ---------------------------------------------------------------- planning and running an image

def plan_image(net, size: Tuple[int, int], tile: Optional[int] = None, budget: Optional[int] = None,
               geometry: Optional[Geometry] = None, stream: Optional[int] = None) -> TilePlan:
    """How an image of ``size`` (H, W) runs: whole, in exact tiles, or streamed.

    ``tile``: 0 the whole image; N exact tiles of N x N input pixels
    (:func:`fcn_repro.tiles.plan_tiles`); None (automatic): the whole image
    when its estimated forward memory fits ``budget`` (default
    ``fcn_repro.limits``' ``forward_bytes``), else streamed when the net can
    be (every row computed once; bands as tall as half the budget allows, up
    to 8 strides, at the full width, or one stride's band in column windows
    when the width alone is too much), else exact tiles within the budget.
    ``stream``: force streaming in bands of this many input rows (``tile``,
    if given, is then the column window). The plan's ``notes`` say what was
    decided and why.
    """
    geo = geometry or Geometry(net)
    h, w = (int(v) for v in size)
    budget = limits.current().forward_bytes if budget is None else int(budget)
    if stream is not None:
        if int(stream) < 1:
            raise TilingError(f"stream {stream}: rows per band must be at least 1")
        Stream(net, geo)                  # refuses a net it cannot stream, naming the layer
    elif tile is not None:
        return plan_tiles(net, size, tile, budget, geometry=geo)
    try:
        out = (geo.out_span(0, h, 0, h).size, geo.out_span(1, w, 0, w).size)
    except _TooSmall:
        return plan_tiles(net, size, 0, geometry=geo)   # the whole forward says why in its own words
    if stream is not None:
        win, cols = _fit_axis(geo, 1, w, min(int(tile), w) if tile else w, asked_by_user=bool(tile))
        return TilePlan((h, w), out, (h, win), [AxisTile(0, h, 0, out[0], 0)], cols, [], int(stream))
    est = geo.peak_bytes(h, w)
    if est <= budget:
        return plan_tiles(net, size, 0, geometry=geo)
    try:
        st = Stream(net, geo)
    except StreamError:
        return plan_tiles(net, size, None, budget, geometry=geo)
    half = budget // 2
    step = geo.stride[0]
    chunk, win = step, w
    full = st.sizes(h, w, 0, w)
    for k in (8, 6, 4, 3, 2, 1):
        if st.band_bytes(full, h, k * step) <= half:
            chunk = k * step
            break
    else:
        sx = geo.stride[1]
        lo, hi = smallest_window(geo, 1, w) // sx, w // sx     # the widest window (in strides) that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if st.band_bytes(st.sizes(h, w, 0, mid * sx), h, step) <= half:
                lo = mid
            else:
                hi = mid - 1
        win = max(lo * sx, smallest_window(geo, 1, w))
    win, cols = _fit_axis(geo, 1, w, win, asked_by_user=False)
    streamed = TilePlan((h, w), out, (h, win), [AxisTile(0, h, 0, out[0], 0)], cols, [], chunk)
    streamed.notes.append(f"{over_budget(w, h, est, budget)}: {streamed.describe()}")
    return streamed


def run_image(net, feed: Mapping[str, np.ndarray], plan: TilePlan, heads: Sequence[str], device: torch.device,
              scores: Optional[Sink] = None, probabilities: Optional[Sink] = None, progress: Optional[bool] = None,
              desc: str = "image", geometry: Optional[Geometry] = None) -> Dict[str, np.ndarray]:
    """Run a :func:`plan_image` plan on one image's preprocessed inputs ``feed`` ({blob: (C, H, W)}).

    Returns {head: (H', W') uint8 labels}; ``scores`` / ``probabilities`` as
    :func:`fcn_repro.tiles.run_tiled`'s (filled band by band when streamed).
    ``progress``: a bar per tile or band (default: on a terminal, when there
    is more than one).
    """
    if not plan.stream:
        return run_tiled(net, feed, plan, heads, device, scores, probabilities, progress, desc)
    outs = Outputs(plan.out_size, scores, probabilities)
    stream = Stream(net, geometry)
    with progress_bar(total=plan.count, desc=desc, unit="band", enabled=show_progress(plan, progress),
                      dynamic_ncols=True, leave=False) as bar:
        for c in plan.cols:
            x = {b: torch.from_numpy(np.ascontiguousarray(v[:, :, c.start:c.stop]))[None].to(device)
                 for b, v in feed.items()}
            xs = slice(c.at, c.at + c.keep1 - c.keep0)

            def emit(h: str, r0: int, r1: int, y: torch.Tensor, xs=xs, c=c) -> None:
                if h in heads:
                    outs.put(h, y[0, :, :, xs], (slice(r0, r1), slice(c.keep0, c.keep1)))

            stream.run(x, plan.stream, plan.size, (c.start, c.stop), emit, band_done=lambda: bar.update(1))
            del x
    return outs.labels
