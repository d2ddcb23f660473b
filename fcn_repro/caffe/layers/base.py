"""The base class of every layer module, the layer registry and shape helpers.

A layer module mirrors one Caffe ``LayerParameter``: it is built from the
(V2) layer message, learns its bottom shapes in :meth:`Layer.setup` (Caffe's
``LayerSetUp`` + ``Reshape`` at net init: that is when parameter blobs get
their shapes), and computes its tops in :meth:`Layer.forward`. Backward is
autograd's; layers whose Caffe gradient is not autograd's gradient of the
forward (SoftmaxWithLoss) carry their own ``autograd.Function``.

Shapes at setup time are tuples whose entries may be ``None`` (unknown: a
``Python`` data layer's spatial size, say). Only what parameter shapes need
must be known; the rest is checked again on the real tensors at forward time,
because a deploy prototxt's input shape is a placeholder (any size runs, as
with Caffe's ``Net::Reshape``).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from fcn_repro import limits
from fcn_repro.caffe.prototxt import Message
from fcn_repro.errors import FcnReproError, LimitError

Shape = tuple  # tuple[Optional[int], ...]

# Caffe type string -> layer class.
LAYER_TYPES: dict[str, type["Layer"]] = {}


def register(*type_names: str) -> Callable[[type["Layer"]], type["Layer"]]:
    """Class decorator: make the class the implementation of these Caffe types."""
    def deco(cls: type["Layer"]) -> type["Layer"]:
        for t in type_names:
            if t in LAYER_TYPES and LAYER_TYPES[t] is not cls:
                raise RuntimeError(f"Caffe layer type {t!r} registered twice "
                                   f"({LAYER_TYPES[t].__name__} and {cls.__name__})")
            LAYER_TYPES[t] = cls
        if not getattr(cls, "type_name", ""):
            cls.type_name = type_names[0]
        return cls
    return deco


class NetError(FcnReproError):
    """A net that cannot be built or run: the message names file, layer and blob."""


class LayerError(NetError):
    """An error inside one layer (bad parameters, bad bottom shapes)."""


class BlobLimitError(LimitError, NetError):
    """A blob (parameter or top) over the ``blob_elements`` limit of :mod:`fcn_repro.limits`."""


class Layer(nn.Module):
    """One Caffe layer.

    Attributes set by the net before :meth:`setup`: ``name``, ``type_name``,
    ``bottom_names``, ``top_names``, ``phase`` ("TRAIN"/"TEST"), ``filename``.
    ``blobs`` is an ``nn.ParameterList`` holding the layer's parameter blobs in
    Caffe order and Caffe shapes (what ``net.params[name]`` lists).
    """

    type_name: str = ""
    # Bottom / top counts, as Caffe's ExactNumBottomBlobs & co. None: no constraint.
    exact_bottoms: Optional[int] = None
    min_bottoms: Optional[int] = None
    max_bottoms: Optional[int] = None
    exact_tops: Optional[int] = None
    min_tops: Optional[int] = None
    max_tops: Optional[int] = None
    # True when every top is a tensor of its own (not an alias or a view of a
    # bottom): a following in-place layer may then overwrite it.
    fresh_output: bool = True
    # True when forward(..., inplace=True) may overwrite its (single) bottom.
    inplace_capable: bool = False
    # Loss layers weigh their first top by 1 unless loss_weight says otherwise
    # (Caffe's LossLayer::LayerSetUp).
    is_loss: bool = False

    def __init__(self, param: Message, name: str = "", phase: str = "TEST",
                 bottom_names: Sequence[str] = (), top_names: Sequence[str] = (),
                 filename: str = "<net>", type_name: str = ""):
        super().__init__()
        if type_name:
            self.type_name = type_name  # the prototxt's spelling (several types share a class)
        self.param = param
        self.name = name
        self.phase = phase
        self.bottom_names = list(bottom_names)
        self.top_names = list(top_names)
        self.filename = filename
        self.blobs = nn.ParameterList()
        self._check_counts()

    # ------------------------------------------------------------------ errors
    def where(self) -> str:
        return f"{self.filename}: layer {self.name!r} ({self.type_name})"

    def error(self, msg: str) -> LayerError:
        return LayerError(f"{self.where()}: {msg}")

    def _check_counts(self) -> None:
        nb, nt = len(self.bottom_names), len(self.top_names)
        for what, n, exact, lo, hi in (("bottom", nb, self.exact_bottoms, self.min_bottoms, self.max_bottoms),
                                       ("top", nt, self.exact_tops, self.min_tops, self.max_tops)):
            if exact is not None and n != exact:
                raise self.error(f"takes exactly {exact} {what} blob(s), got {n}")
            if lo is not None and n < lo:
                raise self.error(f"takes at least {lo} {what} blob(s), got {n}")
            if hi is not None and n > hi:
                raise self.error(f"takes at most {hi} {what} blob(s), got {n}")

    # ------------------------------------------------------------- parameters
    def add_blob(self, shape: Sequence[Optional[int]], what: str = "") -> nn.Parameter:
        """Append a parameter blob of ``shape`` (filled later by weights or fillers)."""
        if any(s is None for s in shape):
            raise self.error(
                f"cannot size parameter blob {len(self.blobs)} ({what or 'weights'}): shape "
                f"{_fmt_shape(shape)} depends on an unknown dimension of bottom(s) {self.bottom_names}, "
                "whose producer (a Python/Data layer) declares no shapes: pass "
                "Net(..., input_shapes={blob: (N, C, H, W)})")
        self.check_blob_size(shape, f"parameter blob {len(self.blobs)} ({what or 'weights'})")
        p = nn.Parameter(torch.empty(tuple(int(s) for s in shape), dtype=torch.float32))
        self.blobs.append(p)
        return p

    def check_blob_size(self, shape: Sequence[Optional[int]], what: str) -> None:
        """Refuse a blob whose known element count is over the ``blob_elements`` limit
        (:mod:`fcn_repro.limits`: FCN_REPRO_MAX_BLOB_ELEMENTS, ``Net(max_blob_elements=N)``), before
        anything is allocated; the error names the file, the layer, its type and the shape."""
        if any(s is None for s in shape):
            return
        n = 1
        for s in shape:
            n *= max(int(s), 0)
        limits.check("blob_elements", n, f"{self.type_name} {what} of shape {_fmt_shape(shape)}", self.filename,
                     error=BlobLimitError, layer=self.name)

    # --------------------------------------------------------------- protocol
    def setup(self, bottom_shapes: list[Shape]) -> list[Shape]:
        """Create parameter blobs; return the top shapes (entries may be None)."""
        raise NotImplementedError

    def forward(self, *bottoms: torch.Tensor, inplace: bool = False) -> list[torch.Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name!r}, bottoms={self.bottom_names}, tops={self.top_names}"


# --------------------------------------------------------------- small helpers

def _fmt_shape(shape: Sequence[Any]) -> str:
    return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"


fmt_shape = _fmt_shape


def canonical_axis(axis: int, ndim: int, layer: Layer, what: str = "axis") -> int:
    """Caffe's Blob::CanonicalAxisIndex: negative axes count from the end."""
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise layer.error(f"{what} {axis} out of range for a {ndim}-D bottom")
    return axis + ndim if axis < 0 else axis


def enum_value(v: Any, names: Sequence[str], field: str, layer: Layer) -> str:
    """An enum field given by name (``MAX``) or number (``0``) -> its name."""
    if v is None:
        return names[0]
    if isinstance(v, bool):
        raise layer.error(f"{field}: expected one of {list(names)}, got {v!r}")
    if isinstance(v, int):
        if 0 <= v < len(names):
            return names[v]
        raise layer.error(f"{field}: enum number {v} out of range (expected one of {list(names)})")
    s = str(v).upper()
    if s not in names:
        raise layer.error(f"{field}: expected one of {list(names)}, got {v!r}")
    return s

