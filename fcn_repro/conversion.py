"""Caffe weights between .caffemodel (V1/V2) and Caffe HDF5: read, check against a net, convert.

The library side of ``python -m fcn_repro.convert`` (:func:`convert` returns
the report the CLI prints). Formats: a ``.caffemodel`` (V1 or V2) or
``.caffemodel.h5`` / ``.h5`` in (told apart by content); out, by suffix, Caffe's
HDF5 layout (which ``CopyTrainedLayersFromHDF5`` loads) or a V2 ``.caffemodel``,
written atomically (:mod:`fcn_repro.outputs`).

A check against a net (``prototxt``) checks every blob against the parameter shapes of the net
(built with :class:`fcn_repro.caffe.Net`, on the meta device where it can: no
memory for the parameters) the way Caffe's ``CopyTrainedLayersFrom`` does: a
layer found in both must have as many blobs as the net gives it and each
blob its shape, where a blob stored with the legacy num/channels/height/width
fields also fits a parameter whose shape, left-padded with ones to 4 axes,
equals it (Caffe's ``Blob::ShapeEquals``; HDF5 has no such leniency). Blobs so
matched are written in the net's shapes. Net layers with parameters that IN
lacks ("missing") and IN layers with blobs that the net lacks ("unused") are
reported; ``strict`` makes them failures.

Legacy shapes without a net: a V1 file stores an InnerProduct weight
(O, I) as (1, 1, O, I) and biases as (1, 1, 1, O). Written to ``.caffemodel``
they keep the legacy fields, so Caffe reads them exactly as before. Caffe's
HDF5 loader wants the net's shapes, so for ``.h5`` output the blobs of
Convolution, Deconvolution and InnerProduct layers are given the shapes those
layers have in Caffe ((O, I) weights, (O,) biases); a legacy blob of any
other layer type needs the net (or ``keep_legacy_shapes`` to write it
as stored anyway).

Nothing is ever unpickled.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Sequence

import numpy as np

from fcn_repro.caffe.caffemodel import CaffeLayer, CaffeModelContents, caffemodel_layers, write_caffemodel
from fcn_repro.caffe.hdf5 import save_hdf5
from fcn_repro.caffe.match import MatchReport, match_weights
from fcn_repro.caffe.weights import detect_format, load_weights, weights_format_for, weights_info
from fcn_repro.progress import bar as progress_bar

from fcn_repro.errors import FcnReproError

__all__ = ["check_weights", "check_failed", "check_messages", "expected_shapes", "convert", "shape_str",
           "ConversionError"]


class ConversionError(FcnReproError):
    """A conversion asked for that can not be done as asked (options that do not go together, legacy
    shapes without a net to say the real ones)."""

_LARGE = 64 << 20     # progress bar from this many bytes on


# ------------------------------------------------------------------- check

def check_weights(info: Any, expected: dict[str, list[tuple[int, ...]]], prototxt: str = "<net>",
                  net_layers_with_params: Sequence[str] | None = None, source: str = "<weights>") -> MatchReport:
    """Check a :class:`~fcn_repro.caffe.caffemodel.ModelInfo` against ``expected`` with the
    one weight matcher (:mod:`fcn_repro.caffe.match`: Caffe's exact-or-legacy-4-D rule).

    ``expected``: net layer name -> parameter shapes in Caffe order (layers
    without parameters map to ``[]``), as ``net.params`` gives them.
    """
    layers = list(net_layers_with_params) if net_layers_with_params is not None else None
    return match_weights([(layer.name, layer.blobs) for layer in info.layers], expected,
                         source=source, target=prototxt, layers=layers)


def check_failed(rep: MatchReport, strict: bool) -> bool:
    """A blob or count that does not fit, or a net layer the file lacks (a whole head
    missing would score garbage); with ``strict`` also a file layer the net lacks."""
    return rep.failed(strict) or bool(rep.missing)


def check_messages(rep: MatchReport, filename: str, strict: bool) -> list[str]:
    out = [f"error: {e}" for e in rep.errors(False)]
    if rep.missing:
        out.append(f"error: net layers with parameters not in {filename}: {', '.join(rep.missing)}")
    if rep.unexpected:
        out.append(f"{'error' if strict else 'warning'}: layers of {filename} not in the net: "
                   f"{', '.join(rep.unexpected)}")
    return out


def expected_shapes(prototxt: str, phase: str = "TEST") -> tuple[dict[str, list[tuple]], dict[str, str]]:
    """(layer -> parameter shapes, layer -> type) of the net, via :class:`fcn_repro.caffe.Net`.

    Built on torch's meta device when that works (shapes only, no memory for
    a 500 MB net's parameters), else normally.
    """
    import torch   # lazy: reading and converting weights stay free of torch

    from fcn_repro.caffe import Net
    try:
        with torch.device("meta"):
            net = Net(prototxt, phase=phase)
    except Exception:  # noqa: BLE001 - some layer may not build on meta; build for real
        net = Net(prototxt, phase=phase)
    shapes = {name: [tuple(int(d) for d in p.shape) for p in net.params.get(name, [])] for name in net.layer_names}
    types = dict(zip(net.layer_names, net.layer_types))
    return shapes, types


# ----------------------------------------------------------------- convert

# Parameter shapes of the V1-era layer types in Caffe, for legacy 4-D blobs:
# (weight rank, bias rank). Convolution/Deconvolution weights are 4-D anyway.
_MODERN_RANKS = {"Convolution": (4, 1), "Deconvolution": (4, 1), "InnerProduct": (2, 1)}


def _modern_shape(layer_type: str, index: int, shape: tuple) -> tuple | None:
    ranks = _MODERN_RANKS.get(layer_type)
    if ranks is None or index > 1 or len(shape) != 4:
        return None
    rank = ranks[index]
    if any(d != 1 for d in shape[:4 - rank]):
        return None
    return shape[4 - rank:]


def shape_str(shape: Sequence[int]) -> str:
    """``2x3x4`` (``scalar`` for a 0-d shape)."""
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


@dataclasses.dataclass
class _Plan:
    layers: list            # CaffeLayer records to write (blobs possibly reshaped)
    rows: list[dict]        # table rows: one per blob
    empty: list[str]        # layers without blobs
    notes: list[str]


def _plan(contents: Any, info: Any, out_fmt: str | None, check: MatchReport | None,
          net_types: dict[str, str], keep_legacy: bool) -> _Plan:
    coerced = {(lay, i): shape for lay, i, _, shape in (check.coerced if check else [])}
    layers, rows, empty, notes = [], [], [], []
    blocked = []
    for rec, li in zip(contents.layers, info.layers):
        if not li.blobs:
            empty.append(li.name)
        ltype = rec.type or net_types.get(rec.name, "")
        blobs, legacy = [], []
        for b, arr in zip(li.blobs, rec.blobs):
            shape, is_legacy = b.shape, b.legacy_shape
            if (rec.name, b.index) in coerced:
                shape, is_legacy = coerced[(rec.name, b.index)], False
            elif is_legacy and out_fmt == "hdf5" and not keep_legacy:
                modern = _modern_shape(ltype, b.index, b.shape)
                if modern is not None:
                    shape, is_legacy = modern, False
                    if modern != b.shape:
                        notes.append(f"{rec.name}[{b.index}]: legacy {shape_str(b.shape)} written as "
                                     f"{shape_str(shape)} ({ltype})")
                elif check is None:
                    blocked.append(f"{rec.name}[{b.index}] ({ltype or 'type unknown'}, {shape_str(b.shape)})")
            if shape != b.shape:
                arr = arr.reshape(shape)
            blobs.append(arr)
            legacy.append(is_legacy)
            rows.append({"layer": rec.name, "type": ltype, "blob": b.index, "shape": list(shape),
                         "stored_shape": list(b.shape), "legacy_shape": b.legacy_shape,
                         "dtype": b.dtype, "bytes": b.nbytes})
        extras = rec.extras if out_fmt == "caffemodel" else ()
        layers.append(CaffeLayer(rec.name, ltype, blobs, rec.bottom, rec.top, legacy, extras))
    if blocked:
        raise ConversionError(
            "these blobs have legacy 4-D shapes that Caffe's HDF5 loader would refuse, and their layer "
            "types do not say the real shapes: " + ", ".join(blocked)
            + "; pass --prototxt NET to give the net's shapes, or --keep-legacy-shapes to write them as stored")
    return _Plan(layers, rows, empty, notes)


def _read(path: str) -> tuple[Any, Any]:
    """(contents with layer records, info) for either format."""
    if detect_format(path) == "caffemodel":
        c = caffemodel_layers(path)
        return c, c.info
    info = weights_info(path)
    w = load_weights(path, keep_dtype=True, keep_empty=True)
    layers = [CaffeLayer(li.name, "", w[li.name], legacy=[False] * len(w[li.name])) for li in info.layers]
    return CaffeModelContents(info, layers, None, []), info


def _write(plan: _Plan, contents: Any, out: str, out_fmt: str, quiet: bool) -> None:
    total = sum(r["bytes"] for r in plan.rows)
    with progress_bar(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"writing {os.path.basename(out)}", enabled=not (quiet or total < _LARGE),
                      leave=False) as bar:
        if out_fmt == "hdf5":
            save_hdf5(out, {lay.name: list(lay.blobs) for lay in plan.layers}, progress=bar.update)
        else:
            # a caffemodel from a caffemodel keeps the net's name and fields; from HDF5: empty name, as Caffe
            name = contents.net_name if contents.net_name is not None else ""
            # progress counts every byte written; cap the bar at the values' total
            write_caffemodel(out, plan.layers, name, net_extras=contents.net_extras,
                             progress=lambda n: bar.update(min(n, max(0, bar.total - bar.n))))


def convert(inp: str, out: str | None = None, prototxt: str | None = None, *, strict: bool = False,
            keep_legacy_shapes: bool = False, phase: str = "TEST", quiet: bool = True) -> dict:
    """Library form of the CLI: returns the JSON report (``report["ok"]``).

    Raises :class:`~fcn_repro.caffe.WeightsError` / ``PrototxtError`` /
    ``OSError`` for bad input, :class:`ConversionError` for bad usage; a failed
    check returns ``ok: False`` and writes nothing.
    """
    out_fmt = weights_format_for(out) if out else None
    if strict and not prototxt:
        raise ConversionError("--strict needs --prototxt (it makes missing/unused layers failures)")
    if out and os.path.isdir(out):
        raise ConversionError(f"{out}: is a directory")
    contents, info = _read(inp)
    check, net_types = None, {}
    if prototxt:
        expected, net_types = expected_shapes(prototxt, phase)
        check = check_weights(info, expected, prototxt, source=inp)
    report: dict = {"input": inp, "input_format": info.format, "net_name": info.net_name,
                    "file_bytes": info.file_size, "output": out, "output_format": out_fmt,
                    "check": check.to_json(strict) if check else None}
    failed = bool(check and check_failed(check, strict))
    if check:
        report["check"]["ok"] = not failed
        report["check"]["unused"] = report["check"]["unexpected"]
        report["check"]["messages"] = check_messages(check, inp, strict)
    plan = _plan(contents, info, None if failed else out_fmt, check, net_types, keep_legacy_shapes)
    report["blobs"] = plan.rows
    report["empty_layers"] = plan.empty
    report["notes"] = plan.notes
    report["totals"] = {
        "layers": len(info.layers), "layers_with_blobs": len(info.layers) - len(plan.empty),
        "blobs": len(plan.rows), "values": int(sum(int(np.prod(r["stored_shape"])) for r in plan.rows)),
        "bytes": int(sum(r["bytes"] for r in plan.rows)),
    }
    report["ok"] = not failed
    report["written"] = False
    if out and not failed:
        _write(plan, contents, out, out_fmt, quiet)
        report["written"] = True
        report["output_bytes"] = os.path.getsize(out)
    return report
