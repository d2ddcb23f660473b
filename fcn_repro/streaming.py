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
rounding of the kernels, as the tiles' do (tests/test_tiles.py).

The rows each output row reads come from the one place that knows a layer's
window (``layer.window``: kernel extent, stride, pad, dilation) and the
sizes from :class:`fcn_repro.tiles.Geometry` (itself built on
:mod:`fcn_repro.caffe.shapes`). Columns are not streamed: a band of rows spans
the whole width, or a column window of an exact-tiles plan (margins along the
columns only) when even a few rows of the full width exceed the budget.

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

import torch
import torch.nn.functional as F

from fcn_repro import ops
from fcn_repro.caffe.layers.convolution import _conv2d
from fcn_repro.caffe.layers.pooling import FLT_MAX, _ave_divisor
from fcn_repro.tiles import POINTWISE, Geometry, Span, TilingError, _base

__all__ = ["StreamError", "Stream", "row_reads"]


class StreamError(TilingError):
    """The net has a layer that cannot be streamed by rows (names it); exact tiles still may run it."""


def row_reads(o0: int, o1: int, extent: int, stride: int, pad: int) -> Tuple[int, int]:
    """The rows [lo, hi) of a window layer's bottom (extent, stride, pad; unclipped) that its
    output rows [o0, o1) read: output o reads [o*stride - pad, o*stride - pad + extent)."""
    return o0 * stride - pad, (o1 - 1) * stride - pad + extent


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class _Node:
    """One layer in single-assignment form: bottoms and tops are version names (``name@k``)."""
    layer: object
    kind: str            # conv, deconv, pool, crop, point, silence
    bottoms: List[str]
    tops: List[str]


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
        self.readers: Dict[str, List[Tuple[_Node, int]]] = {}
        for n in self.nodes:
            for i, b in enumerate(n.bottoms):
                self.readers.setdefault(b, []).append((n, i))

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

    def band_bytes(self, h: int, w: int, c0: int, c1: int, chunk: int, itemsize: int = 4) -> int:
        """Estimated peak bytes of the buffers while streaming bands of ``chunk`` input rows: the widest
        map's rows for one band (plus a few rows of halo) four times over (a reader's buffer, its padded
        copy, the new rows, the buffer they are appended to)."""
        rows, cols = self.sizes(h, w, c0, c1)
        widest = max(self._channels(v) * cols[v] * itemsize * (chunk * rows[v] / h + 8) for v in rows)
        return int(4 * widest)

    # ------------------------------------------------------------ row rules
    def _needs(self, node: _Node, i: int, o0: int, o1: int, rows: Dict[str, int]) -> Optional[Tuple[int, int]]:
        """The rows [lo, hi) of bottom i that output rows [o0, o1) of ``node`` read (clipped to the map),
        or None when it reads no rows (a Crop's reference), or all of it (a per-channel operand)."""
        m, b, size = node.layer, node.bottoms[i], rows[node.bottoms[i]]
        if node.kind in ("conv", "pool"):
            w = m.window
            ext = w.extent[0] if node.kind == "conv" else w.kernel[0]
            lo, hi = row_reads(o0, o1, ext, w.stride[0], w.pad[0])
        elif node.kind == "deconv":
            w = m.window
            s, p, ext = w.stride[0], w.pad[0], w.extent[0]
            lo, hi = _ceil_div(o0 + p - ext + 1, s), (o1 - 1 + p) // s + 1
        elif node.kind == "crop":
            if i == 1:
                return None
            off = self._crop_offsets(m)[2]
            lo, hi = o0 + off, o1 + off
        elif size != rows[node.tops[0]]:
            return 0, size            # Scale/Bias by a per-channel blob: all of it, once there
        else:
            lo, hi = o0, o1
        return max(0, lo), min(size, hi)

    def _ready(self, node: _Node, done: Dict[str, int], rows: Dict[str, int]) -> int:
        """How many of the top's rows can be computed from the bottoms' rows computed so far."""
        m = node.layer
        top = rows[node.tops[0]]
        n = top
        for i, b in enumerate(node.bottoms):
            a = done[b]
            if a >= rows[b] or (node.kind == "crop" and i == 1):
                continue
            if node.kind in ("conv", "pool"):
                w = m.window
                ext = w.extent[0] if node.kind == "conv" else w.kernel[0]
                k = max(0, (a + w.pad[0] - ext) // w.stride[0] + 1)
            elif node.kind == "deconv":
                k = max(0, a * m.window.stride[0] - m.window.pad[0])
            elif node.kind == "crop":
                k = max(0, a - self._crop_offsets(m)[2])
            elif rows[b] != top:
                k = 0                 # a per-channel operand: wait for all of it
            else:
                k = a
            n = min(n, k)
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
            band_done: Optional[Callable[[], None]] = None) -> None:
        """Stream one column window of an image through the net.

        ``feed``: {input blob: (1, C, H, c1 - c0) tensor}, the window's columns
        of the preprocessed image of ``size`` (H, W); ``cols``: (c0, c1).
        ``emit(output blob, r0, r1, rows)`` receives each output's rows
        [r0, r1) (a (1, C, r1 - r0, n) tensor of the window's map) as soon as they
        are computed, in order. ``band_done()`` after each band of ``chunk`` input rows.
        """
        h, w = size
        rows, ncols = self.sizes(h, w, cols[0], cols[1])
        plain = self.fast is None or not getattr(self.fast, "enabled", True) or not all(
            bool(torch.isfinite(x).all()) for x in feed.values() if x.is_floating_point())
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
                held[v] = held[v][:, :, low - first[v]:]
            first[v] = low

        with torch.inference_mode():
            for end in range(min(chunk, h), h + chunk, chunk):
                end = min(end, h)
                for v in self.inputs.values():
                    done[v] = end
                for node in self.nodes:
                    if node.kind == "silence" or not node.tops:
                        continue
                    o0, o1 = done[node.tops[0]], self._ready(node, done, rows)
                    if o1 > o0:
                        ys = self._compute(node, o0, o1, take, rows, ncols, plain)
                        for t, y in zip(node.tops, ys):
                            held[t] = y if held[t] is None else torch.cat([held[t], y], 2)
                            done[t] = o1
                    for b in node.bottoms:
                        trim(b)
                for v, o in outs.items():
                    if done[v] > sent[v]:
                        emit(o, sent[v], done[v], take(v, sent[v], done[v]))
                        sent[v] = done[v]
                        trim(v)
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
            w = m.window
            ext = w.extent[0] if kind == "conv" else w.kernel[0]
            lo, hi = row_reads(o0, o1, ext, w.stride[0], w.pad[0])
            x = take(b, max(0, lo), min(size, hi))
            top, bottom = max(0, -lo), max(0, hi - size)
            if kind == "conv":
                if top or bottom:
                    x = F.pad(x, (0, 0, top, bottom))     # the image's own zero padding, written out
                pad = (0, w.pad[1])
                if not plain and x.dim() == 4 and x.is_floating_point():
                    return [self.fast._kernel(m)(x, False, pad=pad)]
                return [_conv2d(x, m.blobs[0], m.bias(), m.stride, pad, m.dilation, m.group)]
            k, s, p = m.kernel, m.stride, m.pad
            cin, cout = ncols[b], ncols[node.tops[0]]
            right = (cout - 1) * s[1] + k[1] - cin - p[1]
            if m.method == "MAX":
                xp = F.pad(x, (p[1], right, top, bottom), value=float("-inf"))
                return [F.max_pool2d(xp, k, s).clamp_min(-FLT_MAX)]
            xp = F.pad(x, (p[1], right, top, bottom), value=0.0)
            sums = F.avg_pool2d(xp, k, s, divisor_override=1)
            dh = _ave_divisor(size, rows[node.tops[0]], k[0], s[0], p[0], x)[o0:o1]
            dw = _ave_divisor(cin, cout, k[1], s[1], p[1], x)
            return [sums / (dh[:, None] * dw[None, :])]
        if kind == "deconv":
            w = m.window
            s, p, ext = w.stride[0], w.pad[0], w.extent[0]
            i0, i1 = max(0, _ceil_div(o0 + p - ext + 1, s)), min(size, (o1 - 1 + p) // s + 1)
            x = take(b, i0, i1)
            start = i0 * s - p           # the whole-map row of the first row of x's deconvolution
            return [ops.deconv2d_crop(x, m.blobs[0], m.bias(), m.stride, (0, m.pad[1]), m.dilation, m.group,
                                      (o0 - start, 0), (o1 - o0, ncols[node.tops[0]]))]
        if kind == "crop":
            off = self._crop_offsets(m)
            x = take(b, o0 + off[2], o1 + off[2])
            ch = self._channels(node.tops[0]) if off[1] or m.offsets(4)[0] <= 1 else x.shape[1]
            return [x[:, off[1]:off[1] + ch, :, off[3]:off[3] + ncols[node.tops[0]]]]
        xs = [take(v, o0, o1) if rows[v] == rows[node.tops[0]] else take(v, 0, rows[v]) for v in node.bottoms]
        return list(m(*xs, inplace=False))
