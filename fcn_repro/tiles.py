"""Tiled inference that gives exactly the whole-image answer, in bounded memory.

A fully convolutional net computes each output pixel from a bounded window
of its input, so a big image can be run window by window. The usual way
(overlapping tiles blended at the seams) changes the result; this module's
tiles do not: every kept output pixel is computed from exactly the input,
and the same zero padding, that the whole-image forward uses for it, so the
scores equal the whole-image forward's up to the rounding of the
convolution kernels (a kernel may sum in another order on another size).

How. Along each axis (rows, then columns; every supported layer acts on them
separately) the net's geometry is walked through its own plan
(:mod:`fcn_repro.caffe.plan`), reading each layer's window
(:mod:`fcn_repro.caffe.shapes`: kernel, stride, pad, dilation and the
output-size rules of Convolution, Pooling with Caffe's CEIL rounding and
Deconvolution) and each Crop's offsets. For an input window ``[y0, y1)`` of
an image of ``H`` rows it gives every blob's :class:`Span`: the blob's
whole-image length, where the window's map of it starts in the whole map,
its length, and the *valid* part ``[lo, hi)``, the positions whose value is
exactly the whole-image value. A position is valid when everything it reads
is valid or is padding in both forwards: reads past the whole map's edge
are the same zero padding (or, for pooling, the same clipped window) in
both, while reads past the window's edge inside the image are padding only
in the tile. The net's first convolution pads the image by 100 in the FCNs:
that padding is genuine only at the image border, which is why the windows
that touch the border are cut exactly there and the others carry margins.

Alignment: a tile's maps are whole maps shifted by whole positions only when
the window starts at a multiple of every strided layer's input spacing;
:func:`Geometry` takes that spacing (``stride``) from the coordinate maps of
:mod:`fcn_repro.caffe.coord_map`. The margins follow from the walk (no table
per net): a window ``[y0, y1)`` keeps the output rows that are valid, and
the planner picks, for each next band of output rows, the latest aligned
window start whose valid part still begins at that band.

``tile`` (the window, in input pixels along each axis; what bounds memory)
must leave room for the margins and one stride of output: a smaller one is
enlarged to the smallest that does, and :attr:`TilePlan.notes` says so.
``tile=None`` picks the window from the memory budget
(``fcn_repro.limits``' ``forward_bytes``: the estimated peak of the live
blobs of one forward, from the plan's liveness), and does not tile at all
when the whole image fits it. Nets with a layer that mixes the whole map
(global pooling, InnerProduct, MVN) cannot be tiled exactly: refused.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from fcn_repro import limits
from fcn_repro.caffe.coord_map import blob_coord_maps
from fcn_repro.caffe.shapes import caffe_pool_out, conv_out, deconv_out
from fcn_repro.errors import FcnReproError
from fcn_repro.progress import bar as progress_bar

__all__ = ["TilingError", "Span", "Geometry", "AxisTile", "TilePlan", "plan_tiles", "run_tiled",
           "POINTWISE", "Outputs"]

#: layer types that act on each spatial position by itself (a position reads only that position of its
#: bottoms). Unlike coord_map's coordinate-preserving set, MVN (normalizes over the whole map) and
#: LRN WITHIN_CHANNEL (a spatial window) are not here: they are handled or refused by their dependency.
POINTWISE = frozenset({"ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power", "Exp", "Log",
                       "Dropout", "BatchNorm", "Eltwise", "Split", "Threshold", "Clip", "Swish", "Bias",
                       "Scale"})


class TilingError(FcnReproError):
    """The net cannot be run in exact tiles (names the layer), or a tile size that makes no sense."""


class _TooSmall(Exception):
    """A window too small for the net (some map would be empty)."""


@dataclass(frozen=True)
class Span:
    """One blob along one axis, for one input window, in whole-image coordinates of that blob.

    ``size``: the blob's length in the whole-image forward. ``off``, ``n``: the
    window's map covers whole positions ``[off, off + n)``. ``lo``, ``hi``:
    the valid positions (equal to the whole-image forward's), ``lo == hi``
    when none is.
    """
    size: int
    off: int
    n: int
    lo: int
    hi: int

    def valid(self, lo: int, hi: int) -> "Span":
        lo, hi = max(lo, self.off), min(hi, self.off + self.n, self.size)
        return Span(self.size, self.off, self.n, lo, max(lo, hi))


def _base(net):
    """The plain Net behind a net or its fast wrapper (fcn_repro.fast.FastNet keeps it as ``.net``)."""
    inner = getattr(net, "net", None)
    return inner if inner is not None and hasattr(inner, "plan") else net


def _window_rule(sp: Span, out_size: int, out_n: int, k: int, s: int, p: int) -> Span:
    """A sliding window (extent k, stride s, pad p) over ``sp``: output o reads [o*s - p, o*s - p + k)."""
    if sp.off % s:
        raise TilingError(f"internal: a window start {sp.off} not aligned to stride {s}")
    off = sp.off // s
    if out_n < 1:
        raise _TooSmall()
    lo = 0 if sp.lo == 0 else -(-(sp.lo + p) // s)
    hi = out_size if sp.hi == sp.size else (sp.hi + p - k) // s + 1
    return Span(out_size, off, out_n, 0, 0).valid(lo, hi)


def _deconv_rule(sp: Span, k: int, s: int, p: int, d: int) -> Span:
    """Output o of a Deconvolution receives inputs i with i*s - p + t = o, 0 <= t < extent."""
    size, n = deconv_out(sp.size, k, s, p, d), deconv_out(sp.n, k, s, p, d)
    if n < 1:
        raise _TooSmall()
    ext = d * (k - 1) + 1
    lo = 0 if sp.lo == 0 else (sp.lo - 1) * s - p + ext
    hi = size if sp.hi == sp.size else sp.hi * s - p
    return Span(size, sp.off * s, n, 0, 0).valid(lo, hi)


def _same_frame(layer, spans: List[Span]) -> Span:
    """Positions of blobs combined position by position: the same frame, valid where all are."""
    first = spans[0]
    for sp in spans[1:]:
        if (sp.size, sp.off, sp.n) != (first.size, first.off, first.n):
            raise TilingError(f"layer {layer.name!r} ({layer.type_name}) combines blobs that are not aligned "
                              f"position by position ({first} vs {sp}); it cannot be tiled exactly")
    return first.valid(max(sp.lo for sp in spans), min(sp.hi for sp in spans))


class Geometry:
    """The tiling geometry of a built net (:class:`fcn_repro.caffe.Net` or its fast wrapper).

    ``stride``: (rows, columns) a window start must be a multiple of.
    ``channels``: blob -> channel count (from the build). Raises
    :class:`TilingError` for a net with a layer that has no bounded window.
    """

    def __init__(self, net):
        base = _base(net)
        self.filename = getattr(base, "filename", "<net>")
        self.inputs = list(base.inputs)
        self.outputs = list(base.outputs)
        self.plan = base.plan
        self.layers = [m for st in self.plan for m in st.layers]
        self.channels = {b: int(s[1]) for b, s in getattr(base, "blob_shapes", {}).items()
                         if len(s) == 4 and s[1] is not None}
        for m in self.layers:
            self._check(m)
        maps = blob_coord_maps(base.netparam, phase=base.phase, filename=self.filename)
        stride = [1, 1]
        for m in self.layers:
            if m.type_name in ("Convolution", "Pooling"):
                for t in m.top_names:
                    for my_mx in maps.get(t, {}).values():
                        for ax in (0, 1):
                            stride[ax] = math.lcm(stride[ax], my_mx[ax].scale.numerator)
        self.stride = tuple(stride)

    def _check(self, m) -> None:
        t = m.type_name
        why = None
        if t == "Pooling" and m.global_pooling:
            why = "global pooling reads the whole map"
        elif t in ("Concat", "Softmax") and m.axis_param not in (1, -3):
            why = f"it acts along axis {m.axis_param}, not the channels"
        elif t == "LRN" and m.region != "ACROSS_CHANNELS" and m.size > 1:
            why = None   # a window: handled in _step
        elif t not in POINTWISE | {"Convolution", "Deconvolution", "Pooling", "Crop", "Concat", "Softmax",
                                   "LRN", "Silence"}:
            why = "its output position has no bounded input window"
        if why:
            raise TilingError(f"{self.filename}: layer {m.name!r} ({t}) cannot be tiled exactly: {why}; "
                              "run the whole image (tile 0)")

    # ------------------------------------------------------------ the walk
    def spans(self, axis: int, size: int, start: int, stop: int) -> Dict[str, Span]:
        """Every blob's :class:`Span` along ``axis`` (0 rows, 1 columns) for the input window [start, stop)
        of an image ``size`` long. Raises _TooSmall when a map of the window would be empty."""
        if not 0 <= start < stop <= size:
            raise TilingError(f"window [{start}, {stop}) outside an image of {size}")
        sp = Span(size, start, stop - start, start, stop)
        env: Dict[str, Span] = {b: sp for b in self.inputs}
        for m in self.layers:
            tops = self._step(m, axis, [env[b] for b in m.bottom_names])
            for t, s in zip(m.top_names, tops):
                env[t] = s
        return env

    def _step(self, m, axis: int, bs: List[Span]) -> List[Span]:
        t = m.type_name
        if t in ("Convolution", "Pooling"):
            w = m.window
            k, s, p = (w.extent if t == "Convolution" else w.kernel)[axis], w.stride[axis], w.pad[axis]
            if t == "Convolution":
                size, n = (conv_out(x, w.kernel[axis], s, p, w.dilation[axis]) for x in (bs[0].size, bs[0].n))
            else:
                ceil, any_pad = m.round_mode == "CEIL", any(w.pad)
                size, n = (caffe_pool_out(x, k, s, p, ceil, any_pad) for x in (bs[0].size, bs[0].n))
            return [_window_rule(bs[0], size, n, k, s, p)] * len(m.top_names)
        if t == "Deconvolution":
            w = m.window
            return [_deconv_rule(bs[0], w.kernel[axis], w.stride[axis], w.pad[axis], w.dilation[axis])]
        if t == "LRN" and m.region != "ACROSS_CHANNELS":
            half = (m.size - 1) // 2
            return [_window_rule(bs[0], bs[0].size, bs[0].n, m.size, 1, half)]
        if t == "Crop":
            a, b = bs
            cax, offs = m.offsets(4)
            if axis + 2 < cax:
                return [a]
            if a.off != b.off:
                raise TilingError(f"{self.filename}: layer {m.name!r} (Crop) aligns blobs whose windows start "
                                  f"at different positions ({a.off} vs {b.off})")
            c = offs[axis + 2 - cax]
            return [Span(b.size, a.off, b.n, 0, 0).valid(a.lo - c, a.hi - c)]
        if t == "Silence":
            return []
        src = bs[:1] if t in ("Scale", "Bias") and len(bs) > 1 and bs[1].size != bs[0].size else bs
        return [_same_frame(m, src)] * len(m.top_names)

    def out_span(self, axis: int, size: int, start: int, stop: int) -> Span:
        """The outputs' common Span for a window (every output must share it)."""
        env = self.spans(axis, size, start, stop)
        outs = [env[o] for o in self.outputs]
        if any(o != outs[0] for o in outs[1:]):
            raise TilingError(f"{self.filename}: the outputs {', '.join(self.outputs)} are not at one "
                              "resolution and position; tile them separately")
        return outs[0]

    # ------------------------------------------------------------ memory
    def peak_bytes(self, h: int, w: int, itemsize: int = 4) -> int:
        """Estimated peak bytes of the live blobs of one forward on an h x w input (the plan's liveness)."""
        ry, rx = self.spans(0, h, 0, h), self.spans(1, w, 0, w)
        nbytes = {b: self.channels.get(b, 1) * ry[b].n * rx[b].n * itemsize for b in ry if b in rx}
        live = {b: nbytes[b] for b in self.inputs}
        peak = sum(live.values())
        for st in self.plan:
            for t in st.top_names:
                if t not in st.bottom_names or not st.inplace_ok:
                    live[t] = nbytes.get(t, 0)
            peak = max(peak, sum(live.values()))
            for d in st.drop:
                live.pop(d, None)
        return peak


# ---------------------------------------------------------------- planning

@dataclass(frozen=True)
class AxisTile:
    """One band along an axis: input window [start, stop), kept output [keep0, keep1) (whole coordinates),
    and where the kept part starts in the window's output (``at``)."""
    start: int
    stop: int
    keep0: int
    keep1: int
    at: int


@dataclass
class TilePlan:
    """The tiles of one image size: rows x columns bands, and what the planner decided."""
    size: Tuple[int, int]
    out_size: Tuple[int, int]
    window: Tuple[int, int]
    rows: List[AxisTile]
    cols: List[AxisTile]
    notes: List[str] = field(default_factory=list)
    #: > 0: the rows are streamed layer by layer (:mod:`fcn_repro.streaming`) in bands of this many
    #: input rows, each row of every map computed once; ``rows`` is then the one whole band
    stream: int = 0

    @property
    def bands(self) -> int:
        """Bands of rows: streamed bands, or rows of tiles."""
        return -(-self.size[0] // self.stream) if self.stream else len(self.rows)

    @property
    def count(self) -> int:
        """Units of work (tiles, or streamed bands times column windows): what the progress bar counts."""
        return self.bands * len(self.cols)

    @property
    def tiled(self) -> bool:
        return self.count > 1 or self.stream > 0

    @property
    def margins(self) -> Tuple[int, int]:
        """The widest margin (input pixels computed but not kept, on one side of a tile), rows and columns."""
        return _margin(self.rows), _margin(self.cols)

    @property
    def overhead(self) -> float:
        """The fraction of the tiles' input that is margin (computed twice): 1 - image / sum of windows."""
        work = sum(r.stop - r.start for r in self.rows) * sum(c.stop - c.start for c in self.cols)
        return 1.0 - self.size[0] * self.size[1] / work

    def describe(self) -> str:
        if not self.tiled:
            return f"{self.size[1]}x{self.size[0]}: whole image"
        my, mx = self.margins
        if self.stream:
            cols = ("" if len(self.cols) == 1 else
                    f", in {len(self.cols)} column windows of at most {self.window[1]} pixels (margins up to "
                    f"{mx}; {100 * self.overhead:.0f}% of their input is margin)")
            return (f"{self.size[1]}x{self.size[0]} streamed layer by layer in bands of {self.stream} rows "
                    f"(every row of every map computed once){cols}")
        return (f"{self.size[1]}x{self.size[0]} in {len(self.rows)}x{len(self.cols)} tiles of at most "
                f"{self.window[1]}x{self.window[0]} input pixels (margins up to {mx}x{my}; "
                f"{100 * self.overhead:.0f}% of the tiles' input is margin)")


def _plan_axis(geo: Geometry, axis: int, size: int, window: int) -> List[AxisTile]:
    whole = geo.out_span(axis, size, 0, size)
    if window >= size:
        return [AxisTile(0, size, 0, whole.size, 0)]
    step = geo.stride[axis]
    tiles: List[AxisTile] = []
    pos, prev = 0, 0
    while pos < whole.size:
        start = min(size - 1, pos * size // whole.size) // step * step
        got = None
        while start >= prev:
            try:
                sp = geo.out_span(axis, size, start, min(size, start + window))
            except _TooSmall:
                sp = None
            if sp is not None and sp.lo <= pos:
                got = (start, sp)
                break
            start -= step
        if got is None:
            raise _TooSmall()
        start, sp = got
        if sp.hi - pos < min(step, whole.size - pos):
            raise _TooSmall()
        tiles.append(AxisTile(start, min(size, start + window), pos, sp.hi, pos - sp.off))
        pos, prev = sp.hi, start
    return tiles


def plan_tiles(net, size: Tuple[int, int], tile: Optional[int] = None, budget: Optional[int] = None,
               geometry: Optional[Geometry] = None) -> TilePlan:
    """The tiles for an image of ``size`` (H, W).

    tile: the window in input pixels (a window of tile x tile; 0: the whole
    image; None: the largest square whose estimated forward memory fits
    ``budget``, default ``fcn_repro.limits``' ``forward_bytes``, and the
    whole image when that fits). A tile too small for the net's margins is
    enlarged (said so in ``notes``). :func:`fcn_repro.streaming.plan_image`
    is the planner the tools use: it streams instead where the net allows.
    """
    geo = geometry or Geometry(net)
    h, w = (int(v) for v in size)
    notes: List[str] = []
    try:
        out = (geo.out_span(0, h, 0, h).size, geo.out_span(1, w, 0, w).size)
    except _TooSmall:
        # the image is smaller than the net takes: the whole forward says so in its own words
        return TilePlan((h, w), (0, 0), (h, w), [AxisTile(0, h, 0, 0, 0)], [AxisTile(0, w, 0, 0, 0)], notes)
    if tile is not None and tile < 0:
        raise TilingError(f"tile {tile}: must be 0 (whole image) or a size in pixels")
    if tile == 0:
        return TilePlan((h, w), out, (h, w), _plan_axis(geo, 0, h, h), _plan_axis(geo, 1, w, w), notes)
    if tile is None:
        budget = limits.current().forward_bytes if budget is None else int(budget)
        est = geo.peak_bytes(h, w)
        if est <= budget:
            return TilePlan((h, w), out, (h, w), _plan_axis(geo, 0, h, h), _plan_axis(geo, 1, w, w), notes)
        wy, wx = _budget_window(geo, h, w, budget)
        notes.append(f"{over_budget(w, h, est, budget)}: tiled in windows of {wx}x{wy}")
    else:
        wy, wx = min(int(tile), h), min(int(tile), w)
    asked = (wy, wx)
    (wy, rows), (wx, cols) = (_fit_axis(geo, ax, n, win, asked_by_user=tile is not None)
                              for ax, n, win in ((0, h, wy), (1, w, wx)))
    if (wy, wx) != asked:
        notes.append(f"tile {asked[1]}x{asked[0]} is too small for this net (its margins of up to "
                     f"{max(minimal_margin(geo, 1, w), 0)}x{max(minimal_margin(geo, 0, h), 0)} pixels a side "
                     f"would take more than half of it): enlarged to {wx}x{wy}, the margins plus about "
                     f"{asked[1]}x{asked[0]} kept")
    return TilePlan((h, w), out, (wy, wx), rows, cols, notes)


def over_budget(w: int, h: int, est: int, budget: int) -> str:
    """What the planners say when an image's whole forward would exceed the memory budget."""
    return (f"the whole {w}x{h} image would need about {est / 2**30:.1f} GiB for one forward, over "
            f"the budget of {budget / 2**30:.1f} GiB (forward_bytes)")


def smallest_window(geo: Geometry, axis: int, size: int) -> int:
    """The smallest window along ``axis`` (a multiple of the stride, or the whole axis) the planner can use."""
    step, win = geo.stride[axis], geo.stride[axis]
    while win < size:
        try:
            _plan_axis(geo, axis, size, win)
            return win
        except _TooSmall:
            win += step
    return size


def minimal_margin(geo: Geometry, axis: int, size: int) -> int:
    """The widest margin (input pixels computed, not kept) of the smallest window's tiles along ``axis``."""
    return _margin(_plan_axis(geo, axis, size, smallest_window(geo, axis, size)))


def _margin(tiles: Sequence[AxisTile]) -> int:
    return max([t.keep0 - t.start for t in tiles] + [t.stop - t.keep1 for t in tiles] + [0])


def _fit_axis(geo: Geometry, axis: int, size: int, window: int,
              asked_by_user: bool = True) -> Tuple[int, List[AxisTile]]:
    """(window, tiles) along an axis. ``window`` when its margins (both sides together) take at most half
    of it; else it is too small (its tiles would compute mostly margins, or nothing at all): enlarged to
    the smallest window the net allows plus the asked size, so that a tile keeps about what was asked.
    A window from the memory budget (``asked_by_user`` False) is kept whenever the net allows it, else
    enlarged to the smallest one only."""
    try:
        tiles = _plan_axis(geo, axis, size, window)
        if len(tiles) == 1 or 4 * _margin(tiles) <= window or not asked_by_user:
            return window, tiles
    except _TooSmall:
        pass
    step = geo.stride[axis]
    extra = max(0, -(-window // step) * step - step) if asked_by_user else 0
    win = min(size, smallest_window(geo, axis, size) + extra)
    return win, _plan_axis(geo, axis, size, win)


def _budget_window(geo: Geometry, h: int, w: int, budget: int) -> Tuple[int, int]:
    """The largest window (a multiple of the stride; square unless the image is narrower) within budget."""
    sy, sx = geo.stride
    step = max(sy, sx)

    def fits(a: int, b: int) -> bool:
        try:
            return geo.peak_bytes(a, b) <= budget
        except _TooSmall:
            return True

    lo, hi = 1, max(h, w) // step + 1
    while lo < hi:          # largest k with a (k*step)-square window within budget
        mid = (lo + hi + 1) // 2
        if fits(min(h, mid * step), min(w, mid * step)):
            lo = mid
        else:
            hi = mid - 1
    wy, wx = min(h, lo * step), min(w, lo * step)
    if wx == w:              # a narrow image: taller windows
        while wy + sy <= h and fits(wy + sy, wx):
            wy += sy
    elif wy == h:
        while wx + sx <= w and fits(wy, wx + sx):
            wx += sx
    return wy, wx


# ---------------------------------------------------------------- running

Sink = Callable[[str, Tuple[int, int, int]], np.ndarray]


class Outputs:
    """What a tiled or streamed run writes: {head: (H', W') uint8 labels}, and the scores /
    probabilities through their sinks, sink(head, (C, H', W')) -> a writable float array (in memory or a
    file), allocated on the first part of each head."""

    def __init__(self, out_size: Tuple[int, int], scores: Optional["Sink"] = None,
                 probabilities: Optional["Sink"] = None):
        self.out_size = out_size
        self.scores, self.probabilities = scores, probabilities
        self.labels: Dict[str, np.ndarray] = {}
        self._sc: Dict[str, np.ndarray] = {}
        self._pr: Dict[str, np.ndarray] = {}

    def put(self, h: str, o: torch.Tensor, dst: Tuple[slice, slice]) -> None:
        """The kept part ``o`` (C, rows, cols) of head ``h`` into the outputs at ``dst``."""
        o = o.float() if o.dtype in (torch.float16, torch.bfloat16) else o
        if h not in self.labels:
            self.labels[h] = np.empty(self.out_size, np.uint8)
            if self.scores is not None:
                self._sc[h] = self.scores(h, (o.shape[0],) + self.out_size)
            if self.probabilities is not None:
                self._pr[h] = self.probabilities(h, (o.shape[0],) + self.out_size)
        self.labels[h][dst] = o.argmax(0).to(torch.uint8).cpu().numpy()
        if h in self._sc:
            self._sc[h][(slice(None),) + dst] = o.cpu().numpy()
        if h in self._pr:
            self._pr[h][(slice(None),) + dst] = torch.softmax(o, 0).cpu().numpy()


def show_progress(plan: TilePlan, progress: Optional[bool]) -> bool:
    """A bar by default when stderr is a terminal and there is more than one tile or band."""
    return (sys.stderr.isatty() and plan.count > 1) if progress is None else bool(progress)


def run_tiled(net, feed: Mapping[str, np.ndarray], plan: TilePlan, heads: Sequence[str],
              device: torch.device, scores: Optional[Sink] = None, probabilities: Optional[Sink] = None,
              progress: Optional[bool] = None, desc: str = "tiles") -> Dict[str, np.ndarray]:
    """Run ``net`` tile by tile on one image's preprocessed inputs ``feed`` ({blob: (C, H, W)}).

    Returns {head: (H', W') uint8 labels}. ``scores`` / ``probabilities``:
    sink(head, (C, H', W')) -> a writable float array (in memory or a file)
    that the kept part of each tile is written into. ``progress``: a bar per
    tile (default: when stderr is a terminal and there is more than one tile).
    A streamed plan (``plan.stream``) runs through :func:`fcn_repro.streaming.run_image`.
    """
    if plan.stream:
        raise TilingError("a streamed plan runs through fcn_repro.streaming.run_image")
    outs = Outputs(plan.out_size, scores, probabilities)
    with progress_bar(total=plan.count, desc=desc, unit="tile", enabled=show_progress(plan, progress),
                      dynamic_ncols=True, leave=False) as bar:
        for r in plan.rows:
            for c in plan.cols:
                x = {b: torch.from_numpy(np.ascontiguousarray(v[:, r.start:r.stop, c.start:c.stop]))[None]
                     .to(device) for b, v in feed.items()}
                with torch.inference_mode():
                    out = net(**x)
                del x
                ys, xs = slice(r.at, r.at + r.keep1 - r.keep0), slice(c.at, c.at + c.keep1 - c.keep0)
                for h in heads:
                    outs.put(h, out[h][0, :, ys, xs], (slice(r.keep0, r.keep1), slice(c.keep0, c.keep1)))
                del out
                bar.update(1)
    return outs.labels
