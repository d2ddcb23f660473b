"""ONNX export of a built :class:`~fcn_repro.caffe.net.Net`, checked with onnxruntime.

``to_onnx(net, path)`` writes one ONNX file that runs every input size (and
batch) exactly as Caffe would: the net is traced once by
:func:`fcn_repro.export.program.export_program` with symbolic sizes, so the
pooled sizes (Caffe's ceil rule, explicit padding), Crop offsets and windows
are computed inside the graph from the input's shape. The project's ops get
ONNX translations here:

* ``fcn_repro::deconv2d`` (Caffe Deconvolution) -> ``ConvTranspose`` with
  strides, pads, dilations, group and bias (Caffe's weight layout
  (Cin, Cout/group, kh, kw) is ONNX's);
* ``fcn_repro::deconv2d_crop`` (Deconvolution -> Crop) -> ``ConvTranspose`` +
  ``Slice`` of the kept window;
* ``fcn_repro::crop_sum`` (Crop -> Eltwise SUM) -> ``Slice`` of b at the
  offsets to a's height and width (read from a's shape in the graph), then
  ``Mul`` by the coefficients that are not 1 and ``Add``.

Dropout (TEST phase) leaves no node. Input and output names are the Caffe
blob names. onnx, onnxscript and onnxruntime are optional dependencies
(``pip install "fcn_repro[onnx]"``), imported only here.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from fcn_repro import ops
from fcn_repro.labels import LabelSet
from fcn_repro.outputs import output_path

from .program import (ExportError, check_exportable, check_static_size, example_inputs, export_program,
                      input_channels, quiet_shape_solver)

__all__ = ["to_onnx", "check_onnx", "OnnxExport", "DEFAULT_OPSET", "translation_table", "HEADS_KEY", "INPUTS_KEY",
           "read_metadata"]

DEFAULT_OPSET = 18
#: the ONNX metadata key of the classes of each score output (JSON: blob -> LabelSet.to_json())
HEADS_KEY = "fcn_repro.heads"
#: the ONNX metadata key of each input's preprocessing (JSON: blob -> [{read, channels, mean, scale,
#: value}], :meth:`fcn_repro.predict.Transforms.describe`): channel order, mean and input scale
INPUTS_KEY = "fcn_repro.inputs"


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise ExportError(f"fcn_repro.export needs {module} ({e}); install the optional dependencies with "
                          "`pip install \"fcn_repro[onnx]\"` (onnx, onnxscript, onnxruntime)") from None


def translation_table() -> dict:
    """{fcn_repro op overload: onnxscript translation} for torch.onnx.export's custom_translation_table."""
    _require("onnxscript")
    from onnxscript import opset18 as op

    def _pads(pad):
        return [int(pad[0]), int(pad[1]), int(pad[0]), int(pad[1])]

    def _conv_transpose(x, weight, bias, stride, pad, dilation, groups):
        kw = dict(strides=[int(s) for s in stride], pads=_pads(pad), dilations=[int(d) for d in dilation],
                  group=int(groups))
        if bias is None:
            return op.ConvTranspose(x, weight, **kw)
        return op.ConvTranspose(x, weight, bias, **kw)

    def deconv2d(x, weight, bias, stride, pad, dilation, groups):
        return _conv_transpose(x, weight, bias, stride, pad, dilation, groups)

    def deconv2d_crop(x, weight, bias, stride, pad, dilation, groups, offsets, out_size):
        y = _conv_transpose(x, weight, bias, stride, pad, dilation, groups)
        starts = [int(offsets[0]), int(offsets[1])]
        ends = [starts[0] + int(out_size[0]), starts[1] + int(out_size[1])]
        return op.Slice(y, op.Constant(value_ints=starts), op.Constant(value_ints=ends),
                        op.Constant(value_ints=[2, 3]))

    def crop_sum(a, b, offsets, c0=1.0, c1=1.0):
        # Caffe's Crop of b to a's spatial size, the size read from a's shape in
        # the graph, so the window follows the input size.
        hw = op.Slice(op.Shape(a), op.Constant(value_ints=[2]), op.Constant(value_ints=[4]))
        starts = op.Constant(value_ints=[int(offsets[0]), int(offsets[1])])
        crop = op.Slice(b, starts, op.Add(starts, hw), op.Constant(value_ints=[2, 3]))
        if float(c0) != 1.0:
            a = op.Mul(a, op.CastLike(op.Constant(value_float=float(c0)), a))
        if float(c1) != 1.0:
            crop = op.Mul(crop, op.CastLike(op.Constant(value_float=float(c1)), crop))
        return op.Add(a, crop)

    table = {torch.ops.fcn_repro.deconv2d.default: deconv2d,
             torch.ops.fcn_repro.crop_sum.default: crop_sum,
             torch.ops.fcn_repro.deconv2d_crop.default: deconv2d_crop}
    return table


def fast_copy(net) -> tuple[nn.Module, list[str]]:
    """A copy of ``net`` whose diagonal Deconvolutions are depthwise (``--fast``).

    FCN's upsampling layers hold a fixed bilinear kernel on the channel
    diagonal and zeros elsewhere (checked on the weight, as the C++ op's fast
    path does). The copy gives such a layer ``group = C`` and the (C, 1, kh, kw)
    diagonal as its weight: the same sums without the zero products, so C
    times fewer multiplications in the runtime. The exported file is frozen,
    so the check made now stays true for it. Returns (copy, changed layers).
    """
    fast = copy.deepcopy(net)
    fast.fuse = fast.fuse  # a new plan, bound to the copied layers
    changed = []
    for name, ltype in zip(fast.layer_names, fast.layer_types):
        if ltype != "Deconvolution":
            continue
        d = fast.layer(name)
        w = d.blobs[0]
        if d.group != 1 or w.shape[0] != w.shape[1] or not ops.weight_is_diagonal(w.detach()):
            continue
        c = w.shape[0]
        idx = torch.arange(c)
        d.blobs[0] = nn.Parameter(w.detach()[idx, idx].unsqueeze(1).clone(), requires_grad=False)
        d.group = c
        changed.append(name)
    return fast, changed


@dataclass
class OnnxExport:
    """What :func:`to_onnx` wrote (and, with ``check``, how it compared)."""
    path: str
    inputs: list
    outputs: list
    opset: int
    dynamic: bool
    static: Optional[tuple] = None
    depthwise: list = field(default_factory=list)
    checks: list = field(default_factory=list)
    #: score blob -> class names, as written into the file's metadata (``fcn_repro.heads``)
    classes: dict = field(default_factory=dict)

    def __str__(self) -> str:
        size = "any batch, height and width" if self.dynamic else f"any batch at {self.static[0]}x{self.static[1]}"
        lines = [f"wrote {self.path}: opset {self.opset}, inputs {self.inputs}, outputs {self.outputs}, {size}"]
        for blob, names in self.classes.items():
            lines.append(f"  {blob}: {len(names)} classes: {', '.join(names)}")
        if self.depthwise:
            lines.append(f"  depthwise (diagonal) deconvolutions: {', '.join(self.depthwise)}")
        for c in self.checks:
            lines.append(f"  check {c['size'][0]}x{c['size'][1]} {c['output']}: max relative difference "
                         f"{c['max_rel']:.3g}, argmax agreement {100 * c['argmax_agree']:.4f}%")
        return "\n".join(lines)


def to_onnx(net, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET, static: Optional[Sequence[int]] = None,
            example: Optional[Sequence[torch.Tensor]] = None, fast: bool = False, check: bool = False,
            check_sizes: Optional[Sequence[Sequence[int]]] = None,
            program: Optional[torch.export.ExportedProgram] = None,
            labels: Optional[Mapping[str, LabelSet]] = None,
            preprocessing: Optional[Mapping[str, list]] = None) -> OnnxExport:
    """Export ``net`` to an ONNX file at ``path`` (written atomically).

    Args:
        net: a built TEST-phase :class:`~fcn_repro.caffe.net.Net` (weights loaded).
        opset: the ONNX opset (default 18).
        static: (H, W) for a file that takes that one spatial size; default:
            any batch, height and width.
        example: example inputs to trace with (default: random).
        fast: export diagonal Deconvolutions as depthwise ConvTranspose (see
            :func:`fast_copy`); equal to float rounding.
        check: run the file in onnxruntime against ``net``'s forward at
            ``check_sizes`` (default: one size other than the example's) and
            record the max relative difference and the argmax agreement.
        program: the ExportedProgram of ``net`` made by :func:`export_program`
            with the same ``static``, when the caller has one (no second trace).
        labels: score blob -> :class:`~fcn_repro.labels.LabelSet`: the classes, written
            into the file's metadata as ``fcn_repro.heads`` (JSON: blob -> ``LabelSet.to_json()``).
        preprocessing: input blob -> its preprocessing (channel order, mean, scale;
            :meth:`fcn_repro.predict.Transforms.describe`), written as ``fcn_repro.inputs``.

    The dynamic axes are named ``batch``, ``height`` and ``width`` (a second input
    with sizes of its own: ``<blob>_height``, ...), in the inputs and in every output
    shape that follows them. :func:`read_metadata` reads the metadata back.

    Raises :class:`ExportError` for a TRAIN-phase net, a layer without a
    translation, an opset the exporter can not write for this net (it is
    checked in the file, not taken on trust) or a missing optional
    dependency, and :class:`~fcn_repro.caffe.layers.base.BlobLimitError` for a
    ``static`` size at which a blob would pass the blob budget; nothing is
    written then.
    """
    _require("onnx")
    _require("onnxscript")
    static = (int(static[0]), int(static[1])) if static is not None else None
    check_exportable(net, dynamic=static is None)
    if int(opset) < 1:
        raise ExportError(f"opset {opset}: an ONNX opset is a positive number (default {DEFAULT_OPSET})",
                          net.filename)
    if static is not None:
        check_static_size(net, static)
    if example is None:
        example = example_inputs(net, static)
    if fast and program is not None:
        raise ExportError("to_onnx: fast=True exports a modified copy of the net; do not pass a program")
    src, depthwise = fast_copy(net) if fast else (net, [])
    if program is None:
        program = export_program(src, example, static=static)
    buf = io.BytesIO()
    try:
        # The exporter prints its progress and logs a warning per missing
        # torchvision op; the caller gets our one-line summary instead.
        with quiet_shape_solver(), contextlib.redirect_stdout(io.StringIO()):
            onnx_program = torch.onnx.export(program, (), dynamo=True, opset_version=int(opset),
                                             input_names=list(net.inputs), output_names=list(net.outputs),
                                             custom_translation_table=translation_table(), verbose=False)
    except Exception as e:  # the exporter's own errors name its op, not our layer
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ExportError(f"torch.onnx could not translate the net: {type(e).__name__}: {first}",
                          net.filename) from e
    import onnx

    proto = onnx_program.model_proto
    wrote = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if wrote != int(opset):   # the exporter converts from its own opset and keeps its own where it can not
        raise ExportError(f"opset {opset} is not available for this net: the exporter could only write opset "
                          f"{wrote} (its version converter has no way from {wrote} to {opset} for one of the "
                          f"net's ops); nothing was written. Export with --opset {wrote}", net.filename)
    _name_dynamic_axes(proto, list(net.inputs))
    heads = {b: ls for b, ls in (labels or {}).items() if b in net.outputs}
    props = {}
    if heads:
        props[HEADS_KEY] = json.dumps({b: ls.to_json() for b, ls in heads.items()})
    if preprocessing:
        props[INPUTS_KEY] = json.dumps({b: v for b, v in preprocessing.items() if b in net.inputs})
    if props:
        onnx.helper.set_model_props(proto, props)
    onnx.save_model(proto, buf)
    path = os.fspath(path)
    with output_path(path, buf.getbuffer().nbytes) as tmp:   # room checked first; OSError -> OutputError
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
    result = OnnxExport(path=path, inputs=list(net.inputs), outputs=list(net.outputs), opset=int(opset),
                        dynamic=static is None, static=static, depthwise=depthwise,
                        classes={b: list(ls.names) for b, ls in heads.items()})
    if check:
        if check_sizes is None:
            h, w = static if static is not None else (int(example[0].shape[2]) + 7, int(example[0].shape[3]) + 13)
            check_sizes = [(h, w)]
        result.checks = check_onnx(path, net, check_sizes)
    return result


def _name_dynamic_axes(proto, inputs: Sequence[str]) -> None:
    """Replace the exporter's symbols (s33, s69, ...) by readable names, everywhere they appear."""
    import re

    graph = proto.graph
    rename: dict = {}
    for k, vi in enumerate(v for v in graph.input if v.name in inputs):
        for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
            sym = dim.dim_param
            if not sym or sym in rename or axis not in (0, 2, 3):
                continue
            base = {0: "batch", 2: "height", 3: "width"}[axis]
            name = base if base not in rename.values() else f"{vi.name}_{base}"
            rename[sym] = name
    if not rename:
        return
    token = re.compile("|".join(rf"\b{re.escape(s)}\b" for s in sorted(rename, key=len, reverse=True)))
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = token.sub(lambda m: rename[m.group(0)], dim.dim_param)


def read_metadata(path: str | os.PathLike) -> dict:
    """The fcn_repro metadata of an exported ONNX file: {"heads": {blob: LabelSet JSON},
    "inputs": {blob: preprocessing}} (an absent key: an empty dict)."""
    onnx = _require("onnx")
    props = {p.key: p.value for p in onnx.load(os.fspath(path), load_external_data=False).metadata_props}
    return {"heads": json.loads(props.get(HEADS_KEY, "{}")), "inputs": json.loads(props.get(INPUTS_KEY, "{}"))}


def check_onnx(path: str | os.PathLike, net, sizes: Sequence[Sequence[int]], batch: int = 1,
               seed: int = 0) -> list[dict]:
    """Run the ONNX file in onnxruntime (CPU) and ``net`` on the same random inputs.

    Returns one dict per (size, output): ``size``, ``output``, ``max_rel``
    (max |onnx - ours| / max |ours|) and ``argmax_agree`` (fraction of pixels
    whose argmax over classes is the same).
    """
    ort = _require("onnxruntime")
    sess = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    rows = []
    g = torch.Generator().manual_seed(seed)
    for h, w in sizes:
        xs = {b: torch.randn(batch, input_channels(net, b), int(h), int(w), generator=g) * 50 for b in net.inputs}
        with torch.no_grad():
            ours = net(**xs)
        theirs = dict(zip(names, sess.run(None, {b: x.numpy() for b, x in xs.items()})))
        for o in net.outputs:
            r = ours[o].numpy()
            t = theirs[o]
            if t.shape != r.shape:
                rows.append({"size": (int(h), int(w)), "output": o, "max_rel": float("inf"), "argmax_agree": 0.0,
                             "shape": t.shape})
                continue
            scale = float(np.abs(r).max()) or 1.0
            rows.append({"size": (int(h), int(w)), "output": o,
                         "max_rel": float(np.abs(t - r).max()) / scale,
                         "argmax_agree": float((t.argmax(1) == r.argmax(1)).mean())})
    return rows
