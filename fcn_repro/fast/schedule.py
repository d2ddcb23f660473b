"""What the fast path does at each step of a net's plan, and on which windows.

:func:`fast_steps` reads the builder's public plan (:mod:`fcn_repro.caffe.plan`)
and marks the steps the fast path runs on structured blobs (convolutions,
simple MAX pooling, ReLU, Dropout at TEST), fusing a convolution with the
in-place ReLU that follows it. :func:`walk` is the one geometry walk over
those steps; :func:`schedule` chooses the output window of every structured
step for given input shapes; :func:`conv_flops` counts convolution work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from fcn_repro.caffe.layers.convolution import Convolution
from fcn_repro.caffe.layers.dropout import Dropout
from fcn_repro.caffe.layers.pooling import Pooling
from fcn_repro.caffe.layers.relu import ReLU
from fcn_repro.caffe.plan import LayerStep, Plan, Step

from .geometry import Geo, _area, _clip, _inside, _union, conv_geo, conv_reads, input_geo, pool_geo, pool_reads

__all__ = ["FastStep", "fast_steps", "walk", "schedule", "conv_flops"]

# Rough machine constants for choosing between computing a few more pixels
# and copying a window (only the choice depends on them, never the result).
_FLOP_RATE = 1.0e11     # FLOP/s of a convolution
_COPY_RATE = 1.6e10     # bytes/s of a strided copy (read + write)

STRUCTURED = ("conv", "pool", "relu", "identity")


@dataclass
class FastStep:
    """One plan step as the fast path runs it.

    ``kind``: "conv" (structured convolution), "dense" (a convolution run on
    the materialized input), "pool" (simple MAX pooling), "relu",
    "identity" (Dropout at TEST), "plain" (the plan step itself, on
    materialized bottoms). ``relu``: the in-place ReLU step fused into a
    convolution (its plan step, for its drop list).
    """
    kind: str
    step: Step
    relu: Optional[Step] = None

    @property
    def layer(self):
        return self.step.layers[0]


def _is_conv(m) -> bool:
    return type(m) is Convolution      # not a Deconvolution (a subclass)


def fast_steps(plan: Plan) -> list:
    """The plan's steps with the fast path's kinds (see :class:`FastStep`)."""
    steps = list(plan)
    out = []
    i = 0
    while i < len(steps):
        st = steps[i]
        kind, fused = "plain", None
        if isinstance(st, LayerStep) and not st.loss:
            m = st.layer
            if _is_conv(m) and len(st.bottoms) == 1 and len(st.tops) == 1:
                kind = "conv"
                # Fuse the following in-place ReLU (Caffe's relu after every conv) when it is the
                # only reader of the convolution's top.
                nx = steps[i + 1] if i + 1 < len(steps) else None
                if (isinstance(nx, LayerStep) and isinstance(nx.layer, ReLU) and nx.bottom_names == st.top_names
                        and nx.inplace_ok and nx.layer.negative_slope == 0.0 and not nx.loss):
                    fused = nx
            elif isinstance(m, Pooling) and m.simple_max:
                kind = "pool"
            elif isinstance(m, ReLU):
                kind = "relu"
            elif isinstance(m, Dropout) and m.is_identity:
                kind = "identity"
        out.append(FastStep(kind, st, fused))
        i += 2 if fused is not None else 1
    # A convolution none of whose readers keeps the structure (FCN's score
    # layers, read by Crop/Eltwise/Deconvolution) runs dense on the
    # materialized input: it is cheap, and its background would cost more
    # small operations than it saves.
    for i, s in enumerate(out):
        if s.kind == "conv" and not _feeds_structured(out, i):
            s.kind = "dense"
    return out


def _feeds_structured(steps: list, i: int) -> bool:
    """Whether the top of step i reaches a conv or pool (through ReLU / Dropout) before it is replaced."""
    names = set(steps[i].step.top_names)
    for s in steps[i + 1:]:
        reads = names & set(s.step.bottom_names)
        if reads and s.kind in ("conv", "pool"):
            return True
        if reads and s.kind in ("relu", "identity"):
            names |= set(s.step.top_names)
            continue
        names -= set(s.step.top_names)
        if not names:
            return False
    return False


def walk(steps: Sequence[FastStep], shapes: dict) -> dict:
    """The geometry walk: step index -> (input Geo, output Geo, producer step index or None).

    ``shapes``: input blob -> (N, C, H, W). Covers the structured steps and
    the dense convolutions whose input geometry is known; the producer is the
    conv/pool step that computes the window the step reads (None: a net input).
    """
    geo: dict = {}          # blob name -> (Geo, producer step index or None)
    info: dict = {}
    for n, shp in shapes.items():
        if len(shp) == 4:
            geo[n] = (input_geo(shp[1], shp[2], shp[3]), None)
    for i, s in enumerate(steps):
        st, m = s.step, s.layer
        src = geo.get(st.bottom_names[0]) if st.bottoms else None
        if src is not None and s.kind in STRUCTURED + ("dense",):
            g_in, prod = src
            if s.kind in ("conv", "dense"):
                g_out = conv_geo(g_in, m.num_output, m.window)[0]
            elif s.kind == "pool":
                g_out = pool_geo(g_in, m.window)[0]
            else:
                g_out = g_in
            info[i] = (g_in, g_out, prod)
            if s.kind != "dense":
                owner = i if s.kind in ("conv", "pool") else prod
                for t in st.top_names:
                    geo[t] = (g_out, owner)
                continue
        for t in st.top_names:
            geo.pop(t, None)
    return info


def _reads(s: FastStep, g_in: Geo, win: tuple) -> tuple:
    if s.kind == "conv":
        return conv_reads(win, s.layer.window)
    return pool_reads(win, s.layer.window, g_in.hw)


def _px_cost(s: FastStep, g_in: Geo) -> float:
    """Seconds per output pixel of a structured step (rough)."""
    m = s.layer
    k = m.window.kernel
    if s.kind == "conv":
        return 2 * m.num_output * g_in.c // m.group * k[0] * k[1] / _FLOP_RATE
    return g_in.c * 4 * (k[0] * k[1] + 1) / _COPY_RATE


def _extend(steps, info, boxes: dict, pools: bool) -> dict:
    """Greedy, backward: a producer computes what its reader needs when that is cheaper than a copy."""
    want = dict(boxes)
    for i in sorted(want, reverse=True):
        g_in, _, prod = info[i]
        r = _clip(_reads(steps[i], g_in, want[i]), g_in.hw)
        if prod is None or prod not in want or _inside(r, want[prod]) or not _area(r):
            continue
        if steps[prod].kind == "pool" and not pools:
            continue
        bigger = _union(want[prod], r)
        cost_more = (_area(bigger) - _area(want[prod])) * _px_cost(steps[prod], info[prod][0])
        cost_copy = _area(r) * g_in.c * 8 / _COPY_RATE
        if cost_more < cost_copy:
            want[prod] = bigger
    return want


def _cost(steps, info, want: dict) -> float:
    """Estimated seconds of a window assignment: the steps' work plus the copies of what they read."""
    total = 0.0
    for i, win in want.items():
        g_in, _, prod = info[i]
        total += _area(win) * _px_cost(steps[i], g_in)
        r = _reads(steps[i], g_in, win)
        c = _clip(r, g_in.hw)
        src = want.get(prod) if prod is not None else (0, g_in.hw[0], 0, g_in.hw[1])
        symmetric = c[0] - r[0] == r[1] - c[1] and c[2] - r[2] == r[3] - c[3]
        view = src is not None and _inside(c, src) and symmetric and (c[2], c[3]) == (src[2], src[3])
        if not view:
            total += _area(r) * g_in.c * 8 / _COPY_RATE
    return total


def schedule(steps: Sequence[FastStep], shapes: dict, views: bool = True) -> dict:
    """Step index -> the output window each structured conv/pool step computes, for these input shapes.

    Starts from the data boxes, then (``views``) walks the steps backward: a
    conv or pool reads a window of its input; when that window exceeds what
    the producer computes, the producer computes the larger window if that
    costs less than copying it (a few halo rows on a big map), else the
    reader copies it (small maps, where a larger window would cascade).
    """
    info = {i: v for i, v in walk(steps, shapes).items() if steps[i].kind != "dense"}
    boxes = {i: v[1].box for i, v in info.items() if steps[i].kind in ("conv", "pool")}
    if not views:
        return boxes
    # Candidate policies, each judged by an estimate of its total cost.
    cands = [_extend(steps, info, boxes, pools) for pools in (True, False)] + [dict(boxes)]
    return min(cands, key=lambda w: _cost(steps, info, w))


def conv_flops(steps: Sequence[FastStep], input_shape: Sequence[int], input_name: str,
                background: bool = True, want: Optional[dict] = None) -> dict:
    """{conv layer: multiply-add FLOPs (2 per MAC)} on ``input_shape`` (N, C, H, W).

    With ``background``, a structured convolution counts its data box (or
    its window in ``want``, halos included); else, and for dense
    convolutions, every output pixel (what Caffe computes).
    """
    res: dict = {}
    for i, (g, g_out, _) in walk(steps, {input_name: tuple(input_shape)}).items():
        s = steps[i]
        if s.kind not in ("conv", "dense"):
            continue
        m = s.layer
        k = m.window.kernel
        per_px = 2 * g.c // m.group * k[0] * k[1] * m.num_output
        full = (0, g_out.ay.size, 0, g_out.ax.size)
        win = (want or {}).get(i, g_out.box) if background and s.kind == "conv" else full
        res[m.name] = per_px * _area(win) * input_shape[0]
    return res
