"""Binary ``.caffemodel`` files: Caffe's NetParameter in protobuf wire format.

Read and written here without protoc, Caffe or the protobuf package. Only the
fields weights need are decoded (see caffe.proto; numbers in FACTS.md):

* NetParameter: ``name`` 1, ``layers`` 2 (V1), ``layer`` 100 (V2)
* LayerParameter (V2): ``name`` 1, ``type`` 2, ``bottom`` 3, ``top`` 4,
  ``blobs`` 7
* V1LayerParameter: ``bottom`` 2, ``top`` 3, ``name`` 4, ``type`` 5 (enum,
  mapped to the V2 type string with :data:`~fcn_repro.caffe.schema.V1_LAYER_TYPES`),
  ``blobs`` 6
* BlobProto: decoded and encoded in :mod:`.wire` (shared with the solver
  state, :mod:`.solverstate`)

Every other field (layer parameters, phase, ParamSpecs, ...) is skipped
without being decoded; for V2 files its raw bytes are remembered (as offsets)
so that a ``.caffemodel`` -> ``.caffemodel`` conversion carries it over
unchanged.

Memory
------
The file is read into memory once (:func:`fcn_repro.limits.read_regular`),
and a packed float field becomes an ``np.frombuffer`` view of that buffer: no
second copy, and the arrays are writable (a write never reaches the file).
The buffer lives as long as any returned array. The file is not
memory-mapped: a mapping whose file another program truncates kills the
process with SIGBUS at the next read of a vanished page, while a read sees
the file shrink and raises :class:`CaffeModelError`. Copies are made only
where the stored layout is not one contiguous little-endian float run:
unpacked (one tag per value) or split packed fields, and ``double_data``.
``copy=True`` returns arrays that own their memory instead (copied out of the
buffer, which is then let go).

Arrays are in the stored shapes: the BlobShape, or, where the blob gives any
of the legacy ``num``/``channels``/``height``/``width`` fields, that 4-D shape
(Caffe's ``Blob::FromProto`` prefers the legacy fields the same way). A V1
InnerProduct weight of (O, I) therefore comes back as (1, 1, O, I).
``double_data`` (float64 values) is converted to float32 as Caffe's
``Blob<float>::FromProto`` does, unless ``keep_dtype=True``; the info records
say which was stored.

Errors are :class:`CaffeModelError` (a ``ValueError``) with ``.filename`` and
``.offset`` (byte offset in the file), naming the layer and blob when known.
No length read from the file is trusted before it is checked against the
bytes that remain, so a hostile file can not make the reader allocate more
than the file's size, loop, or recurse.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from fcn_repro import limits
from fcn_repro.caffe import schema
from fcn_repro.caffe.prototxt import Message
from fcn_repro.caffe.schema import V1_LAYER_TYPES
from fcn_repro.caffe.solverstate import (  # noqa: F401  (importable from here, as before)
    SolverStateContents, decode_solverstate, encode_solverstate, read_solverstate, write_solverstate,
)
from fcn_repro.caffe.weightfile import BlobInfo, LayerInfo, ModelInfo, as_array, check_kind
from fcn_repro.caffe.wire import (
    BlobPlan, BlobRecord, Wire, blob_array, decode_blob, encode_str, expect_wire, int32,
    key, length_delimited, pieces_size, varint_bytes, write_pieces,
)
from fcn_repro.errors import CaffeModelError, WeightsError

__all__ = [
    "WeightsError", "CaffeModelError", "BlobInfo", "LayerInfo", "ModelInfo", "CaffeLayer",
    "read_caffemodel", "load_caffemodel", "caffemodel_info", "decode_caffemodel",
    "write_caffemodel", "encode_caffemodel", "caffemodel_layers", "CaffeModelContents",
    "layers_from_weights", "SolverStateContents", "read_solverstate", "decode_solverstate",
    "write_solverstate", "encode_solverstate",
]


_NET = schema.numbers("NetParameter")
_V2 = schema.numbers("LayerParameter")
_V1 = schema.numbers("V1LayerParameter")
_LAYER_FIELDS = {v1: tuple(nums[k] for k in ("name", "type", "bottom", "top", "blobs"))
                 for v1, nums in ((False, _V2), (True, _V1))}


class _Layer:
    __slots__ = ("name", "type", "bottom", "top", "blobs", "extras", "tagpos")

    def __init__(self, tagpos: int) -> None:
        self.name = ""
        self.type = ""
        self.bottom: list[str] = []
        self.top: list[str] = []
        self.blobs: list[BlobRecord] = []
        self.extras: list[tuple[int, int, int]] = []   # (field, start, end) raw spans
        self.tagpos = tagpos

    def info(self) -> LayerInfo:
        return LayerInfo(self.name, self.type, tuple(b.info(i) for i, b in enumerate(self.blobs)),
                         tuple(self.bottom), tuple(self.top))


class _Net:
    __slots__ = ("name", "has_name", "version", "layers", "extras")

    def __init__(self) -> None:
        self.name = ""
        self.has_name = False
        self.version = "v2"
        self.layers: list[_Layer] = []
        self.extras: list[tuple[int, int, int]] = []


def _decode_layer(w: Wire, start: int, end: int, tagpos: int, v1: bool, index: int) -> _Layer:
    layer = _Layer(tagpos)
    # field numbers: V2 LayerParameter / V1LayerParameter
    f_name, f_type, f_bottom, f_top, f_blobs = _LAYER_FIELDS[v1]
    try:
        for field, wire, tp, s, e in w.fields(start, end):
            if field == f_name:
                expect_wire(w, "layer name", wire, 2, tp)
                layer.name = w.string(s, e)
            elif field == f_type:
                if v1:
                    expect_wire(w, "V1 layer type", wire, 0, tp)
                    v, _ = w.varint(s, e)
                    # an unknown enum value stays NONE in proto2, which Caffe's
                    # upgrade turns into the empty type string
                    layer.type = V1_LAYER_TYPES.get(int32(v), "") if int32(v) != 0 else ""
                else:
                    expect_wire(w, "layer type", wire, 2, tp)
                    layer.type = w.string(s, e)
            elif field == f_bottom:
                expect_wire(w, "layer bottom", wire, 2, tp)
                layer.bottom.append(w.string(s, e))
            elif field == f_top:
                expect_wire(w, "layer top", wire, 2, tp)
                layer.top.append(w.string(s, e))
            elif field == f_blobs:
                expect_wire(w, "layer blob", wire, 2, tp)
                try:
                    layer.blobs.append(decode_blob(w, s, e, tp))
                except CaffeModelError as err:
                    raise CaffeModelError(err.reason, err.filename, offset=err.offset,
                                          layer=layer.name or f"#{index}", blob=len(layer.blobs)) from None
            elif v1 and field == _V1["layer"]:
                raise w.err("V0 net (a 'layer' message nested in V1 'layers') is not supported", tp)
            elif not v1:
                layer.extras.append((field, tp, e))
    except CaffeModelError as err:
        if err.layer is not None:
            raise
        raise CaffeModelError(err.reason, err.filename, offset=err.offset,
                              layer=layer.name or f"#{index}") from None
    return layer


def _decode_net(w: Wire) -> _Net:
    net = _Net()
    saw_v1 = saw_v2 = False
    for field, wire, tp, s, e in w.fields(0, w.size):
        if field == _NET["layer"] or field == _NET["layers"]:
            expect_wire(w, "layer" if field == _NET["layer"] else "V1 layers", wire, 2, tp)
            if field == _NET["layer"]:
                saw_v2 = True
            else:
                saw_v1 = True
            if saw_v1 and saw_v2:
                # UpgradeV1Net refuses nets that hold both
                raise w.err("net holds both V2 'layer' (field 100) and V1 'layers' (field 2)", tp)
            net.layers.append(_decode_layer(w, s, e, tp, field == _NET["layers"], len(net.layers)))
        elif field == _NET["name"]:
            expect_wire(w, "net name", wire, 2, tp)
            net.name, net.has_name = w.string(s, e), True
        else:
            net.extras.append((field, tp, e))
    net.version = "v1" if saw_v1 else "v2"
    if not net.layers:
        raise CaffeModelError("no layers (neither V2 'layer' nor V1 'layers'): not a caffemodel",
                              w.filename, offset=0)
    return net


# ------------------------------------------------------------ value access

class _Loaded:
    """A caffemodel read into memory (or given as bytes) and its decoded structure."""

    def __init__(self, path: str | os.PathLike | None = None, data: bytes | None = None,
                 filename: str | None = None):
        if data is not None:
            self.filename = filename or "<bytes>"
            self.buf: Any = data
        else:
            self.filename = os.fspath(path)  # type: ignore[arg-type]
            self.buf = limits.read_regular(self.filename, "caffemodel", error=CaffeModelError)
        self.size = len(self.buf)
        if self.size == 0:
            raise CaffeModelError("empty file", self.filename, offset=0)
        self.net = _decode_net(Wire(self.buf, self.filename))
        self.budget = limits.Budget(self.filename, error=CaffeModelError)
        if data is None:
            self.budget.charge(self.size, "the file's bytes")   # read into memory: copies come on top

    def arrays(self, layer: _Layer, keep_dtype: bool, copy: bool = False) -> list[np.ndarray]:
        for i, b in enumerate(layer.blobs):
            if copy or _materialized(b, keep_dtype):   # a new array, not a view of the buffer
                self.budget.charge(b.count * (8 if b.dtype == "float64" and keep_dtype else 4),
                                   f"blob of shape {b.shape}", offset=b.tagpos, layer=layer.name, blob=i)
        out = [blob_array(self.buf, b, keep_dtype) for b in layer.blobs]
        if copy:
            out = [a if _materialized(b, keep_dtype) else a.copy() for a, b in zip(out, layer.blobs)]
        return out

    def info(self) -> ModelInfo:
        return ModelInfo(self.filename, "caffemodel-" + self.net.version, self.net.name,
                         tuple(layer.info() for layer in self.net.layers), self.size)

    def raw(self, start: int, end: int) -> memoryview:
        return memoryview(self.buf)[start:end]


def _open(path: str | os.PathLike) -> _Loaded:
    check_kind(path, expect="caffemodel")
    return _Loaded(path)


def _materialized(b: BlobRecord, keep_dtype: bool) -> bool:
    """Whether :func:`blob_array` must copy the blob (not one packed run of the stored type)."""
    return len(b.segments) != 1 or b.segments[0][0] != "p" or (b.dtype == "float64" and not keep_dtype)


def _load(m: _Loaded, copy: bool, keep_dtype: bool, keep_empty: bool) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    repeats: list[_Layer] = []
    for layer in m.net.layers:
        if not layer.blobs and not keep_empty:
            continue
        if layer.name in out:
            repeats.append(layer)
        out[layer.name] = m.arrays(layer, keep_dtype, copy)
    if repeats:
        # Caffe's CopyTrainedLayersFrom copies source layers by name in file
        # order, so of two layers with one name the last one wins. One warning
        # per file, however many repeats (each distinct warning is remembered).
        first = repeats[0]
        more = f" and {len(repeats) - 1} more" if len(repeats) > 1 else ""
        warnings.warn(f"{m.filename}: byte {first.tagpos}: a second layer named {first.name!r}{more}; "
                      "the later layer's blobs replace the earlier one's, as in Caffe", stacklevel=3)
    return out


def load_caffemodel(path: str | os.PathLike, *, copy: bool = False, keep_dtype: bool = False,
                    keep_empty: bool = False) -> dict[str, list[np.ndarray]]:
    """Layer name -> blobs (float32 arrays in stored shapes), in file order.

    ``copy=False`` (default): views of the file's bytes read into memory (see the
    module docstring); ``copy=True``: arrays that own their memory.
    ``keep_dtype``: ``double_data`` blobs stay float64. ``keep_empty``: also
    list layers without blobs (ReLU, Pooling, ... have none).
    """
    m = _open(path)
    return _load(m, copy, keep_dtype, keep_empty)


def decode_caffemodel(data: bytes, filename: str = "<bytes>", *, keep_dtype: bool = False,
                      keep_empty: bool = False) -> dict[str, list[np.ndarray]]:
    """:func:`load_caffemodel` for bytes in memory (arrays are read-only views)."""
    return _load(_Loaded(data=data, filename=filename), False, keep_dtype, keep_empty)


def caffemodel_info(path: str | os.PathLike) -> ModelInfo:
    """Names, types, blob shapes/dtypes/sizes of every layer (values not read)."""
    return _open(path).info()


def read_caffemodel(path: str | os.PathLike, *, copy: bool = False, keep_dtype: bool = False) -> Message:
    """The file as a NetParameter-like :class:`Message` (V1 upgraded to V2 names).

    ``name`` (if stored), then one ``layer`` per stored layer with ``name``,
    ``type``, ``bottom``/``top`` and ``blobs`` (numpy arrays in stored shapes).
    Layer parameters other than these are not decoded.
    """
    m = _open(path)
    net = Message()
    if m.net.has_name:
        net.add("name", m.net.name)
    for layer in m.net.layers:
        lm = Message(name=layer.name)
        if layer.type:
            lm.add("type", layer.type)
        lm.add("bottom", layer.bottom)
        lm.add("top", layer.top)
        for a in m.arrays(layer, keep_dtype, copy):
            lm.fields.append(("blobs", a))
        net.add("layer", lm)
    return net


# ------------------------------------------------------------------- writer

@dataclasses.dataclass
class CaffeLayer:
    """A layer to write: name, type, blobs and, optionally, what else it had.

    ``legacy[i]`` writes blob i with the legacy num/channels/height/width
    fields (it must be 4-D) instead of a BlobShape, the way V1 files store
    them, so Caffe accepts it where it accepted the original. ``extras`` are
    raw, already-encoded LayerParameter fields ``(field_number, bytes)`` (tag
    included), merged in field-number order as protobuf serializes.
    """
    name: str
    type: str = ""
    blobs: Sequence[Any] = ()
    bottom: Sequence[str] = ()
    top: Sequence[str] = ()
    legacy: Sequence[bool] = ()
    extras: Sequence[tuple[int, Any]] = ()


def _layer_pieces(layer: CaffeLayer) -> tuple[list[Any], int]:
    """Encoded pieces of one LayerParameter (bytes and value memoryviews)."""
    where = f"layer {layer.name!r}"
    legacy = list(layer.legacy) + [False] * (len(layer.blobs) - len(layer.legacy))
    plans = [BlobPlan(as_array(b, f"{where} blob {i}"), legacy[i], f"{where} blob {i}")
             for i, b in enumerate(layer.blobs)]
    f_name, f_type, f_bottom, f_top, f_blobs = _LAYER_FIELDS[False]
    known: list[tuple[int, list[Any]]] = [(f_name, [length_delimited(f_name, encode_str(layer.name))])]
    if layer.type:
        known.append((f_type, [length_delimited(f_type, encode_str(layer.type))]))
    known += [(f_bottom, [length_delimited(f_bottom, encode_str(b))]) for b in layer.bottom]
    known += [(f_top, [length_delimited(f_top, encode_str(t))]) for t in layer.top]
    for p in plans:
        known.append((f_blobs, [key(f_blobs, 2) + varint_bytes(p.size)] + p.pieces))
    extras = [(f, [bytes(raw) if not isinstance(raw, memoryview) else raw]) for f, raw in layer.extras]
    # stable merge by field number: known fields first within the same number
    merged = sorted(known + extras, key=lambda t: t[0])
    pieces = [x for _, ps in merged for x in ps]
    return pieces, pieces_size(pieces)


def _net_pieces(layers: Iterable[CaffeLayer], net_name: str | None,
                net_extras: Sequence[tuple[int, Any]] = ()) -> tuple[list[Any], int]:
    pieces: list[tuple[int, list[Any]]] = []
    if net_name is not None:
        pieces.append((_NET["name"], [length_delimited(_NET["name"], encode_str(net_name))]))
    pieces += [(f, [raw]) for f, raw in net_extras]
    for layer in layers:
        lp, size = _layer_pieces(layer)
        pieces.append((_NET["layer"], [key(_NET["layer"], 2) + varint_bytes(size)] + lp))
    flat = [x for _, ps in sorted(pieces, key=lambda t: t[0]) for x in ps]
    return flat, pieces_size(flat)


def encode_caffemodel(layers: Iterable[CaffeLayer], net_name: str | None = "") -> bytes:
    """A V2 NetParameter's bytes (for small nets and tests; files: :func:`write_caffemodel`)."""
    pieces, _ = _net_pieces(layers, net_name)
    return b"".join(bytes(p) for p in pieces)


def write_caffemodel(path: str | os.PathLike, layers: Iterable[CaffeLayer], net_name: str | None = "",
                     *, net_extras: Sequence[tuple[int, Any]] = (),
                     progress: Callable[[int], None] | None = None) -> int:
    """Write a V2 ``.caffemodel`` atomically; returns the file size in bytes.

    Blobs get a BlobShape and packed ``data`` (float32) or ``double_data``
    (float64 arrays), as Caffe's ``Net::ToProto`` writes them; fields are
    emitted in field-number order, so a file read with :func:`_Loaded` and
    written back with its extras is byte-identical to what Caffe wrote.
    ``progress(n)`` is called with each chunk's byte count.
    """
    pieces, size = _net_pieces(list(layers), net_name, net_extras)
    write_pieces(path, pieces, progress)
    return size


def layers_from_weights(weights: dict[str, Sequence[Any]], types: dict[str, str] | None = None) -> list[CaffeLayer]:
    """:class:`CaffeLayer` records for a ``{layer: [blob, ...]}`` dict."""
    types = types or {}
    return [CaffeLayer(str(name), str(types.get(name, "")), list(blobs)) for name, blobs in weights.items()]


@dataclasses.dataclass
class CaffeModelContents:
    """A caffemodel as layer records, ready to be written back (see :func:`caffemodel_layers`)."""
    info: ModelInfo
    layers: list[CaffeLayer]
    net_name: str | None                       # None: the file has no name field
    net_extras: list[tuple[int, memoryview]]   # undecoded NetParameter fields (V2)


def caffemodel_layers(path: str | os.PathLike, *, keep_dtype: bool = True) -> CaffeModelContents:
    """Everything needed to write a file back: info, layer records, net-level fields.

    For V2 files the records carry the undecoded fields (layer parameters,
    phase, ...) as raw views, so :func:`write_caffemodel` reproduces Caffe's
    file byte for byte; V1 files give name, type, bottom, top and blobs
    (flagged legacy where they used the legacy dims), since V1 layer
    parameters have other field numbers than V2 ones.
    """
    m = _open(path)
    layers = []
    for layer in m.net.layers:
        extras = [(f, m.raw(s, e)) for f, s, e in layer.extras]
        layers.append(CaffeLayer(layer.name, layer.type, m.arrays(layer, keep_dtype),
                                 list(layer.bottom), list(layer.top),
                                 [b.legacy for b in layer.blobs], extras))
    # NetParameter itself is the same message in V1 and V2 files (only its
    # layer field differs), so its other fields carry over either way
    net_extras = [(f, m.raw(s, e)) for f, s, e in m.net.extras]
    return CaffeModelContents(m.info(), layers, m.net.name if m.net.has_name else None, net_extras)
