"""torch.export of a built :class:`~fcn_repro.caffe.net.Net` with dynamic batch, height and width.

``export_program(net)`` traces the net once, at an example size, into a
``torch.export.ExportedProgram`` in which every size that depends on the
input (pooled sizes with Caffe's ceil rule, Crop offsets and windows,
deconvolution sizes) is computed from the input's symbolic size, so the one
program runs every input size exactly as Caffe would. The program keeps the
net's parameters and the project's ops (``torch.ops.fcn_repro.*``): load a
saved program with ``fcn_repro`` imported.

Its inputs are positional, in ``net.inputs`` order; its output is the dict
``{output blob: scores}`` of ``Net.forward``.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator, Optional, Sequence

import torch
from torch.export import Dim

from fcn_repro.caffe.layers.input import Input
from fcn_repro.errors import FcnReproError
from fcn_repro.caffe.layers.pooling import Pooling

__all__ = ["ExportError", "export_program", "example_inputs", "check_exportable", "check_static_size",
           "DEFAULT_EXAMPLE_SIZE"]

# The example size a dynamic export traces at when the prototxt declares none
# (deploy prototxts declare a placeholder). Not square and not 0/1, so that no
# axis is specialised by torch.export's duck sizing or its 0/1 rule.
DEFAULT_EXAMPLE_SIZE = (96, 112)
EXAMPLE_BATCH = 2

# Layer types whose TEST-phase forward traces to standard PyTorch ops (or to
# the fcn_repro ops, which fcn_repro.export translates to ONNX), at any size.
TRACEABLE = frozenset({
    "Input", "Convolution", "Deconvolution", "Crop", "Eltwise", "Pooling", "ReLU", "Dropout", "Concat",
    "LRN", "Scale", "Softmax", "Split", "Silence",
})
# ... and those that fix the input size (their parameters are shaped by it).
STATIC_ONLY = {
    "InnerProduct": "its weight is shaped by the flattened input, so the input size is fixed",
    "Flatten": "its output length depends on the input size",
    "Reshape": "its target shape is written for one input size",
}
# ... and those with no export at all.
NO_EXPORT = {
    "SoftmaxWithLoss": "a loss needs labels and yields a training objective, not scores",
    "Accuracy": "a metric needs labels and yields a number, not scores",
}


class ExportError(FcnReproError):
    """A net that cannot be exported: the message names the net file, the layer, its type and what to do."""


def check_exportable(net, dynamic: bool = True) -> None:
    """Raise :class:`ExportError` for a TRAIN-phase net or a layer with no translation."""
    where = net.filename
    if net.phase != "TEST":
        raise ExportError(f"the net was built in the {net.phase} phase; export runs the TEST phase "
                          "(a TRAIN net draws random Dropout masks and computes losses from labels). Build it "
                          "with Net(prototxt, weights, phase='TEST')", where)
    for name, ltype in zip(net.layer_names, net.layer_types):
        m = net.layer(name)
        if ltype in NO_EXPORT:
            raise ExportError(f"type {ltype} has no export: {NO_EXPORT[ltype]}. Export the deploy net (the "
                              "net without its loss and accuracy layers, e.g. prototxt/<net>/deploy.prototxt)",
                              where, layer=name)
        if ltype in STATIC_ONLY or (isinstance(m, Pooling) and m.global_pooling):
            if dynamic:
                why = STATIC_ONLY.get(ltype, "global pooling's kernel is the input size")
                raise ExportError(f"type {ltype} cannot be exported with a dynamic input size: {why}. Export "
                                  "at one size (--static HxW, or to_onnx(..., static=(H, W)))", where, layer=name)
            continue
        if ltype not in TRACEABLE and not isinstance(m, Input):
            raise ExportError(f"type {ltype} has no export translation. Remove the layer from the deploy "
                              "net, or add its translation to fcn_repro.export (fcn_repro/export/program.py "
                              "lists the exportable types)", where, layer=name)


def input_channels(net, blob: str) -> int:
    shape = net.blob_shapes.get(blob)
    if not shape or len(shape) != 4 or shape[1] is None:
        raise ExportError(f"input {blob!r} has no declared channel count (shape {shape}); build the net with "
                          "input_shapes={blob: (N, C, H, W)}", net.filename)
    return int(shape[1])


def example_inputs(net, size: Optional[Sequence[int]] = None, batch: int = EXAMPLE_BATCH,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Random example inputs (N, C, H, W), one per ``net.inputs`` entry, in that order."""
    if not net.inputs:
        raise ExportError("the net has no inputs to export", net.filename)
    h, w = (int(size[0]), int(size[1])) if size is not None else DEFAULT_EXAMPLE_SIZE
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(batch, input_channels(net, b), h, w, generator=g, dtype=dtype)
                 for b in net.inputs)


def check_static_size(net, size: Sequence[int], batch: int = EXAMPLE_BATCH) -> None:
    """Refuse an export size at which a blob of the net would exceed the blob budget.

    Every blob's shape at ``size`` (H, W) and ``batch`` is worked out by a
    forward on fake tensors (no memory is allocated) and checked against
    ``blob_elements`` (:mod:`fcn_repro.limits`) by the layer that makes it,
    so ``--static 100000x100000`` is refused by name before the example
    input (and the check's forward) would allocate hundreds of GB.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    h, w = (int(v) for v in size)
    makers = {t: net.layer(n) for n in net.layer_names for t in net.layer(n).top_names}
    for b in net.inputs:   # the example input itself, before any layer runs
        makers[b].check_blob_size((batch, input_channels(net, b), h, w), f"input blob {b!r} at {h}x{w}")
    keep = net.keep_blobs
    try:
        net.keep_blobs = True
        with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
            net(**{b: torch.empty(batch, input_channels(net, b), h, w) for b in net.inputs})
            tops = {name: [tuple(t.shape) for t in ts] for name, ts in net.layer_tops.items()}
    except FcnReproError:
        raise
    except Exception:   # fake tensors can not run some op: the trace itself will tell
        return
    finally:
        net.keep_blobs = keep
    for name, shapes in tops.items():
        layer = net.layer(name)
        for t, shape in zip(layer.top_names, shapes):
            layer.check_blob_size(shape, f"top blob {t!r} at {h}x{w}")


@contextlib.contextmanager
def quiet_shape_solver() -> Iterator[None]:
    """Silence torch's symbolic-shape solver (and ONNX exporter) warnings while tracing.

    The solver logs a traceback whenever sympy cannot simplify a Caffe size
    formula (floor divisions); it then keeps the formula as it is, which is
    what we want: the warning is noise to a user of the exporter.
    """
    logs = [logging.getLogger(n) for n in ("torch.fx.experimental.symbolic_shapes", "torch.onnx", "onnxscript")]
    old = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # torch's own pytree deprecation, raised inside torch.export/torch.onnx
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        for log, level in zip(logs, old):
            log.setLevel(level)


def export_program(net, example: Optional[Sequence[torch.Tensor]] = None, *, static: Optional[Sequence[int]] = None,
                   dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``net`` with dynamic batch, height and width.

    Args:
        net: a built TEST-phase :class:`~fcn_repro.caffe.net.Net`.
        example: example inputs in ``net.inputs`` order (default: random,
            batch 2, at ``static`` or at :data:`DEFAULT_EXAMPLE_SIZE`).
        static: (H, W) to export at one spatial size instead of any.
        dynamic_batch: the batch size stays dynamic (default).

    Returns the ExportedProgram; ``program.module()(*inputs)`` returns
    ``{output blob: tensor}`` for inputs of any size (any batch). A process that loads
    a saved program with ``torch.export.load`` imports ``fcn_repro.ops`` first (it
    registers the custom ops the program calls).
    """
    check_exportable(net, dynamic=static is None)
    if static is not None:
        check_static_size(net, static)
    if example is None:
        example = example_inputs(net, static)
    example = tuple(example)
    if len(example) != len(net.inputs):
        raise ExportError(f"{len(example)} example inputs for the net's inputs {net.inputs}", net.filename)
    spec = {}
    if dynamic_batch:
        spec[0] = Dim.DYNAMIC
    if static is None:
        spec[2] = spec[3] = Dim.DYNAMIC
    was_training = net.training
    net.eval()
    try:
        with quiet_shape_solver():
            return torch.export.export(net, example, dynamic_shapes={"args": tuple(dict(spec) for _ in example)})
    finally:
        net.train(was_training)
