"""Crop offsets from the graph: each blob's coordinate map, composed layer by layer.

Crop offsets (what Caffe's Python ``coord_map`` did for the FCN nets; this is
our own derivation). Along one spatial axis a Convolution or Pooling with
kernel k, stride s, pad p and dilation d centres output position o on input
position ``s*o + (d*(k-1)/2 - p)``: an affine map of coordinates. A
Deconvolution is the adjoint of such a convolution, so its output position o
maps to input position ``(o - (d*(k-1)/2 - p)) / s``. Elementwise layers
(ReLU, Dropout, LRN, Scale, Eltwise, Concat along channels, ...) keep
coordinates; a Crop shifts them by its offset. Composing these maps from
every data blob (a layer with no bottoms, or a layer whose output has no
coordinate relation to its input: InnerProduct, global pooling, ...) gives
each blob ``x_root = a*x + b`` per root and axis, computed exactly with
fractions. ``Crop(A, B)`` must place A's position ``y + offset`` on B's
position ``y``, so ``a_A*(y + offset) + b_A = a_B*y + b_B`` for all y: the
scales must be equal and ``offset = (b_B - b_A) / a_A``, which must be a
non-negative integer. Every root the two bottoms share must give the same
offset; bottoms sharing no root, different scales, or a fractional or
negative offset are errors that name the file, the layer and the blobs.
For FCN-32s this gives 19, for FCN-16s 5 and 27, for FCN-8s 5, 9 and 31,
and for FCN-AlexNet 18.

:func:`compute_crop_offsets`, :func:`check_crop_offsets` and
:func:`blob_coord_maps` run the same analysis over any parsed prototxt.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable

from fcn_repro.caffe.prototxt import Message, is_v1_net, parse_prototxt, upgrade_net
from fcn_repro.caffe.shapes import conv_window, layer_included, pool_window
from fcn_repro.errors import FcnReproError

__all__ = ["CoordMapError", "AxisMap", "compute_crop_offsets", "check_crop_offsets", "blob_coord_maps"]


class CoordMapError(FcnReproError):
    """Crop offsets cannot be derived from the graph (names file, layer, blobs)."""


# --------------------------------------------------------- coordinate maps

@dataclass(frozen=True)
class AxisMap:
    """Along one axis, a blob position x lies at ``scale*x + shift`` of its root."""

    scale: Fraction
    shift: Fraction

    def through_conv(self, k: int, s: int, p: int, d: int) -> "AxisMap":
        # output o is centred on input s*o + (d*(k-1)/2 - p)
        c = Fraction(d * (k - 1), 2) - p
        return AxisMap(self.scale * s, self.scale * c + self.shift)

    def through_deconv(self, k: int, s: int, p: int, d: int) -> "AxisMap":
        # the adjoint: output o corresponds to input (o - c) / s
        c = Fraction(d * (k - 1), 2) - p
        return AxisMap(self.scale / s, self.shift - self.scale * c / s)

    def shifted(self, off: int) -> "AxisMap":
        return AxisMap(self.scale, self.shift + self.scale * off)

    def __str__(self) -> str:
        return f"input = {self.scale}*x {'+' if self.shift >= 0 else '-'} {abs(self.shift)}"


@dataclass(frozen=True)
class _Root:
    blob: str
    layer: str
    reason: str | None   # None for data; else why coordinates restart here


@dataclass(frozen=True)
class _Conflict:
    layer: str
    maps: tuple


_IDENTITY = {
    "ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power", "Exp", "Log",
    "Dropout", "LRN", "BatchNorm", "MVN", "Eltwise", "Split", "Threshold", "Clip", "Swish",
    "Bias", "Scale",
}
_FIRST_BOTTOM_ONLY = {"Scale", "Bias"}  # a second bottom supplies the factor, not the image


def _spatial_geometry(layer: Message, ltype: str, where: str):
    """((k, s, p, d) per spatial axis) or a reason string when unmappable.

    The window comes from :mod:`fcn_repro.caffe.shapes` (the one parser of
    kernel/stride/pad/dilation, both spellings)."""
    def err(msg: str) -> CoordMapError:
        return CoordMapError(f"{where}: {msg}")

    if ltype == "Pooling":
        pp = layer.sub("pooling_param")
        if pp.get("global_pooling", False):
            return "global pooling collapses the spatial axes"
        win = pool_window(pp, err)
    else:
        cp = layer.sub("convolution_param")
        if int(cp.get("axis", 1)) != 1:
            return "convolution over a non-default axis"
        if max(len(cp.getall(f)) for f in ("kernel_size", "stride", "pad", "dilation")) > 2:
            return "not a 2-D spatial layer"
        win = conv_window(cp, err)
    return tuple(zip(win.kernel, win.stride, win.pad, win.dilation))


def _explicit_offsets(layer: Message) -> tuple[int, tuple[int, int]]:
    """(axis, (offset_y, offset_x)) that a Crop applies to the spatial axes."""
    cp = layer.sub("crop_param")
    axis = int(cp.get("axis", 2))
    axis = axis + 4 if axis < 0 else axis
    offs = [int(v) for v in cp.getall("offset")]
    naxes = 4 - axis
    if not offs:
        per = [0] * naxes
    elif len(offs) == 1:
        per = offs * naxes
    else:
        per = offs
    full = [0] * axis + per  # offsets for axes 0..3
    return axis, (full[2] if axis <= 2 else 0, full[3])


class _Analysis:
    """One pass over the layers, in order, tracking every blob's coordinate maps."""

    def __init__(self, net: Message, only: Iterable[str] | None, phase: str | None, filename: str):
        if is_v1_net(net) or net.has("input"):
            net = upgrade_net(net)
        self.filename = filename
        self.only = None if only is None else set(only)
        self.offsets: dict[str, tuple[int, ...]] = {}
        self.maps: dict[str, dict[_Root, Any]] = {}
        for layer in net.getall("layer"):
            if phase is None or layer_included(layer, phase, error=lambda m: CoordMapError(f"{filename}: {m}")):
                self.step(layer)
        if self.only is not None:
            missing = self.only - set(self.offsets)
            if missing:
                raise CoordMapError(f"{filename}: no Crop layer named {', '.join(sorted(missing))}")

    def blob(self, name: str, layer: str) -> dict[_Root, Any]:
        if name not in self.maps:
            raise CoordMapError(f"{self.filename}: layer {layer!r} reads blob {name!r}, which no "
                                f"earlier layer produces")
        return self.maps[name]

    def restart(self, layer: str, tops: list[str], reason: str | None) -> None:
        for t in tops:
            self.maps[t] = {_Root(t, layer, reason): (AxisMap(Fraction(1), Fraction(0)),) * 2}

    def step(self, layer: Message) -> None:
        name, ltype = str(layer.get("name", "")), str(layer.get("type", ""))
        bottoms = [str(b) for b in layer.getall("bottom")]
        tops = [str(t) for t in layer.getall("top")]
        where = f"{self.filename}: layer {name!r} ({ltype})"
        if not bottoms:
            self.restart(name, tops, None)
            return
        if ltype in ("Convolution", "Deconvolution", "Pooling"):
            geo = _spatial_geometry(layer, ltype, where)
            if isinstance(geo, str):
                self.restart(name, tops, f"layer {name!r} ({ltype}): {geo}")
                return
            src = self.blob(bottoms[0], name)
            res: dict[_Root, Any] = {}
            for root, m in src.items():
                if isinstance(m, _Conflict):
                    res[root] = m
                elif ltype == "Deconvolution":
                    res[root] = tuple(a.through_deconv(*g) for a, g in zip(m, geo))
                else:
                    res[root] = tuple(a.through_conv(*g) for a, g in zip(m, geo))
            for t in tops:
                self.maps[t] = res
            return
        if ltype == "Crop":
            self.crop(layer, name, bottoms, tops, where)
            return
        identity = ltype in _IDENTITY
        if ltype == "Softmax":
            identity = int(layer.sub("softmax_param").get("axis", 1)) == 1
        if ltype == "Concat":
            cp = layer.sub("concat_param")
            identity = int(cp.get("axis", cp.get("concat_dim", 1))) == 1
        if ltype == "Silence":
            return
        if not identity:
            self.restart(name, tops, f"layer {name!r} ({ltype}) has no coordinate map")
            return
        srcs = bottoms[:1] if ltype in _FIRST_BOTTOM_ONLY else bottoms
        res = {}
        for b in srcs:
            for root, m in self.blob(b, name).items():
                if root not in res:
                    res[root] = m
                elif res[root] != m and not isinstance(res[root], _Conflict):
                    res[root] = _Conflict(name, (res[root], m))
        for t in tops:
            self.maps[t] = res

    def crop(self, layer: Message, name: str, bottoms: list[str], tops: list[str], where: str) -> None:
        if len(bottoms) != 2:
            raise CoordMapError(f"{where}: Crop needs 2 bottoms, got {len(bottoms)}")
        a_name, b_name = bottoms
        A, B = self.blob(a_name, name), self.blob(b_name, name)
        compute = self.only is None or name in self.only
        if compute:
            cp = layer.sub("crop_param")
            axis = int(cp.get("axis", 2))
            axis = axis + 4 if axis < 0 else axis
            if axis not in (2, 3):
                raise CoordMapError(f"{where}: crop axis {axis} includes the batch or channel axis, "
                                    f"which has no coordinate map; give the offsets explicitly")
            offs = self.solve(A, B, axis, a_name, b_name, where)
            self.offsets[name] = offs
            spatial = (offs[0], offs[1]) if axis == 2 else (0, offs[0])
        else:
            axis, spatial = _explicit_offsets(layer)
        res: dict[_Root, Any] = {}
        for root, m in A.items():
            res[root] = m if isinstance(m, _Conflict) else (m[0].shifted(spatial[0]), m[1].shifted(spatial[1]))
        for t in tops:
            self.maps[t] = res

    def solve(self, A: dict, B: dict, axis: int, a_name: str, b_name: str, where: str) -> tuple[int, ...]:
        def roots(maps: dict) -> str:
            parts = []
            for r in maps:
                parts.append(f"{r.blob!r}" + (f" (coordinates restart at {r.reason})" if r.reason else ""))
            return ", ".join(parts)

        common = [r for r in A if r in B]
        if not common:
            raise CoordMapError(
                f"{where}: bottoms {a_name!r} and {b_name!r} share no input, so their alignment is "
                f"undefined: {a_name!r} derives from {roots(A)}; {b_name!r} from {roots(B)}")
        result: tuple[int, ...] | None = None
        first_root = None
        axes = (0, 1) if axis == 2 else (1,)
        for r in common:
            ma, mb = A[r], B[r]
            for m, bn in ((ma, a_name), (mb, b_name)):
                if isinstance(m, _Conflict):
                    raise CoordMapError(
                        f"{where}: blob {bn!r} is ambiguous with respect to {r.blob!r}: layer "
                        f"{m.layer!r} combines bottoms with different coordinate maps "
                        f"({', '.join('(' + ', '.join(map(str, x)) + ')' for x in m.maps)})")
            offs = []
            for ax in axes:
                a, b = ma[ax], mb[ax]
                axname = "yx"[ax]
                if a.scale != b.scale:
                    raise CoordMapError(
                        f"{where}: bottoms {a_name!r} and {b_name!r} have different scales along "
                        f"{axname} with respect to {r.blob!r} (one step is {a.scale} vs {b.scale} "
                        f"input pixels); a Crop cannot align them")
                off = (b.shift - a.shift) / a.scale
                if off.denominator != 1:
                    raise CoordMapError(
                        f"{where}: aligning {b_name!r} ({b}) inside {a_name!r} ({a}) along {axname} "
                        f"needs a fractional offset {off} (with respect to {r.blob!r})")
                if off < 0:
                    raise CoordMapError(
                        f"{where}: {b_name!r} starts {-off} positions before {a_name!r} along "
                        f"{axname} (with respect to {r.blob!r}); a Crop offset cannot be negative")
                offs.append(int(off))
            t = tuple(offs)
            if result is None:
                result, first_root = t, r
            elif t != result:
                raise CoordMapError(
                    f"{where}: the offset depends on the input: {result} with respect to "
                    f"{first_root.blob!r} but {t} with respect to {r.blob!r}")
        assert result is not None
        return result


def _load(net: Message | str | os.PathLike) -> tuple[Message, str]:
    if isinstance(net, Message):
        return net, "<net>"
    return parse_prototxt(net), os.fspath(net) if not isinstance(net, str) or "\n" not in net else "<text>"


def compute_crop_offsets(net: Message | str | os.PathLike, *, only: Iterable[str] | None = None,
                         phase: str | None = None, filename: str | None = None) -> dict[str, tuple[int, ...]]:
    """Crop layer name -> offsets (one per cropped spatial axis) derived from the graph.

    ``only`` restricts the computation to the named Crop layers; the other
    Crops are taken at their written offsets. ``phase`` ("TRAIN"/"TEST")
    applies Caffe's include/exclude rules first. For a crop along axis 2 the
    tuple is ``(offset_y, offset_x)``; along axis 3 ``(offset_x,)``.
    """
    msg, fname = _load(net)
    return _Analysis(msg, only, phase, filename or fname).offsets


def check_crop_offsets(net: Message | str | os.PathLike, *, phase: str | None = None,
                       filename: str | None = None) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Crop layers whose written offsets differ from the computed ones.

    Returns ``{layer: (written, computed)}``, both per cropped spatial axis;
    empty when every Crop is aligned.
    """
    msg, fname = _load(net)
    if is_v1_net(msg) or msg.has("input"):
        msg = upgrade_net(msg)
    computed = _Analysis(msg, None, phase, filename or fname).offsets
    bad = {}
    for layer in msg.getall("layer"):
        nm = layer.get("name")
        if nm in computed:
            axis, (oy, ox) = _explicit_offsets(layer)
            written = (oy, ox) if axis <= 2 else (ox,)
            if written != computed[nm]:
                bad[nm] = (written, computed[nm])
    return bad


def blob_coord_maps(net: Message | str | os.PathLike, *, phase: str | None = None,
                    filename: str | None = None) -> dict[str, dict[str, tuple[AxisMap, AxisMap]]]:
    """Every blob's coordinate maps: ``{blob: {root blob: (map_y, map_x)}}``.

    After in-place layers a blob holds its last writer's map. Crops are taken
    at their written offsets. Ambiguous maps (an Eltwise of misaligned
    bottoms) are left out.
    """
    msg, fname = _load(net)
    an = _Analysis(msg, [], phase, filename or fname)
    return {b: {r.blob: m for r, m in roots.items() if not isinstance(m, _Conflict)}
            for b, roots in an.maps.items()}
