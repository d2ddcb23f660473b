"""Binary ``.caffemodel`` files: Caffe's NetParameter in protobuf wire format.

Read and written here without protoc, Caffe or the protobuf package. Only the
fields weights need are decoded (see caffe.proto; numbers in FACTS.md):

* NetParameter: ``name`` 1, ``layers`` 2 (V1), ``layer`` 100 (V2)
* LayerParameter (V2): ``name`` 1, ``type`` 2, ``bottom`` 3, ``top`` 4,
  ``blobs`` 7
* V1LayerParameter: ``bottom`` 2, ``top`` 3, ``name`` 4, ``type`` 5 (enum,
  mapped to the V2 type string with :data:`~fcn_repro.caffe.prototxt.V1_LAYER_TYPES`),
  ``blobs`` 6
* BlobProto: ``num`` 1, ``channels`` 2, ``height`` 3, ``width`` 4 (legacy
  4-D shape), ``data`` 5, ``diff`` 6, ``shape`` 7 (BlobShape, ``dim`` 1),
  ``double_data`` 8, ``double_diff`` 9

Every other field (layer parameters, phase, ParamSpecs, ...) is skipped
without being decoded; for V2 files its raw bytes are remembered (as offsets)
so that a ``.caffemodel`` -> ``.caffemodel`` conversion carries it over
unchanged.

Memory
------
The file is memory-mapped private and copy-on-write (``mmap.ACCESS_COPY``)
and a packed float field becomes an ``np.frombuffer`` view of the mapping: no
copy, no read until a value is used, and the arrays are writable, but a write
only changes this process's page, never the file. The mapping lives as long as
any returned array. Copies are made only where the stored layout is not one
contiguous little-endian float run: unpacked (one tag per value) or split
packed fields, and ``double_data``. ``copy=True`` reads every blob into fresh
arrays instead (read into ``np.empty``, so peak memory stays one copy)
and lets the mapping go; use it when the file may be rewritten in place by
another program while the arrays are in use (a mapped file truncated under a
process raises SIGBUS). Our own writers replace files by renaming, which is
safe.

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
import mmap
import os
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from fcn_repro.caffe.prototxt import V1_LAYER_TYPES, Message
from fcn_repro.errors import FcnReproError

__all__ = [
    "WeightsError", "CaffeModelError", "BlobInfo", "LayerInfo", "ModelInfo", "CaffeLayer",
    "read_caffemodel", "load_caffemodel", "caffemodel_info", "decode_caffemodel",
    "write_caffemodel", "encode_caffemodel", "caffemodel_layers", "CaffeModelContents",
    "layers_from_weights", "SolverStateContents", "read_solverstate", "decode_solverstate",
    "write_solverstate", "encode_solverstate",
]


# ------------------------------------------------------------------- errors

class WeightsError(FcnReproError):
    """A weights file that can not be read (or written) as asked.

    ``filename``, and where they apply ``offset`` (byte offset), ``layer`` and
    ``blob`` (index), are attributes; ``reason`` is the message without them.
    """

    def __init__(self, reason: str, filename: str = "<bytes>", **where):
        super().__init__(reason, filename, **where)


class CaffeModelError(WeightsError):
    """A binary .caffemodel that is truncated, corrupt or not a caffemodel."""


# ------------------------------------------------------------- info records

@dataclasses.dataclass(frozen=True)
class BlobInfo:
    """One stored blob, without its values."""
    index: int
    shape: tuple[int, ...]
    dtype: str            # stored value type: "float32" or "float64"
    nbytes: int           # bytes of the stored values
    legacy_shape: bool    # shape came from the legacy num/channels/height/width fields
    offset: int | None    # byte offset of the first stored value (None: not in one place)

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One layer of a weights file: its name, Caffe type string and blobs."""
    name: str
    type: str
    blobs: tuple[BlobInfo, ...]
    bottom: tuple[str, ...] = ()
    top: tuple[str, ...] = ()

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.blobs)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a weights file holds. ``format``: caffemodel-v1, caffemodel-v2 or hdf5."""
    filename: str
    format: str
    net_name: str
    layers: tuple[LayerInfo, ...]
    file_size: int

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    @property
    def num_blobs(self) -> int:
        return sum(len(layer.blobs) for layer in self.layers)

    @property
    def num_values(self) -> int:
        return sum(b.count for layer in self.layers for b in layer.blobs)


# --------------------------------------------------------------- wire format

_WIRE_NAMES = {0: "varint", 1: "fixed64", 2: "length-delimited", 3: "start-group",
               4: "end-group", 5: "fixed32"}
_MAX_GROUP_DEPTH = 100     # protobuf's default recursion limit
_MAX_FIELD = (1 << 29) - 1
_INT_MAX = (1 << 31) - 1


class _Wire:
    """Bounds-checked protobuf wire-format reading over a byte buffer.

    Every method takes the end of the enclosing message, so no read can run
    past it, whatever lengths the data claims.
    """

    __slots__ = ("buf", "filename", "size")

    def __init__(self, buf: Any, filename: str):
        self.buf = buf          # bytes, or mmap: indexing gives ints, slicing bytes
        self.filename = filename
        self.size = len(buf)

    def err(self, reason: str, offset: int) -> CaffeModelError:
        return CaffeModelError(reason, self.filename, offset=offset)

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        buf, start, result, shift = self.buf, pos, 0, 0
        while True:
            if pos >= end:
                what = "file" if end == self.size else "enclosing message"
                raise self.err(f"truncated varint (the {what} ends at byte {end})", start)
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result & 0xFFFFFFFFFFFFFFFF, pos
            shift += 7
            if shift >= 70:
                raise self.err("varint longer than 10 bytes", start)

    def tag(self, pos: int, end: int) -> tuple[int, int, int]:
        t, p = self.varint(pos, end)
        field, wire = t >> 3, t & 7
        if field == 0 or field > _MAX_FIELD:
            raise self.err(f"invalid field number {field} (tag {t:#x})", pos)
        if wire not in _WIRE_NAMES:
            raise self.err(f"invalid wire type {wire} for field {field}", pos)
        return field, wire, p

    def skip(self, field: int, wire: int, pos: int, end: int, tagpos: int) -> tuple[int, int]:
        """Skip one field's payload at ``pos``; returns (payload_start, next_pos)."""
        if wire == 0:
            _, p = self.varint(pos, end)
            return pos, p
        if wire == 1 or wire == 5:
            n = 8 if wire == 1 else 4
            if pos + n > end:
                raise self.err(f"field {field} ({_WIRE_NAMES[wire]}) needs {n} bytes, "
                               f"only {end - pos} remain", tagpos)
            return pos, pos + n
        if wire == 2:
            n, p = self.varint(pos, end)
            if n > end - p:
                raise self.err(f"field {field} claims {n} bytes but only {end - p} remain "
                               "(truncated or corrupt length)", tagpos)
            return p, p + n
        if wire == 3:
            return pos, self._skip_group(field, pos, end, tagpos)
        raise self.err(f"unexpected end-group for field {field}", tagpos)

    def _skip_group(self, field: int, pos: int, end: int, tagpos: int) -> int:
        # Groups are deprecated and caffe.proto has none, but a protobuf parser
        # skips unknown ones, so we do too: iteratively, depth-limited.
        stack = [field]
        while stack:
            tp = pos
            f, w, pos = self.tag(pos, end)
            if w == 4:
                if f != stack[-1]:
                    raise self.err(f"end-group for field {f} closes group {stack[-1]}", tp)
                stack.pop()
            elif w == 3:
                if len(stack) >= _MAX_GROUP_DEPTH:
                    raise self.err(f"groups nested deeper than {_MAX_GROUP_DEPTH}", tp)
                stack.append(f)
            else:
                _, pos = self.skip(f, w, pos, end, tp)
        return pos

    def fields(self, start: int, end: int):
        """Yield ``(field, wire, tagpos, payload_start, next_pos)`` for each field."""
        pos = start
        while pos < end:
            tagpos = pos
            field, wire, pos = self.tag(pos, end)
            s, pos = self.skip(field, wire, pos, end, tagpos)
            yield field, wire, tagpos, s, pos

    def string(self, s: int, e: int) -> str:
        # proto2 strings are bytes; undecodable bytes survive a round trip
        return bytes(self.buf[s:e]).decode("utf-8", "surrogateescape")

    def run_length(self, start: int, end: int, tag: int, width: int) -> int:
        """How many consecutive ``tag byte + width bytes`` records start at ``start``.

        Unpacked repeated floats store one tag per value; scanning them with
        numpy in growing chunks keeps a 100M-value blob fast and linear.
        """
        rec = 1 + width
        total = (end - start) // rec
        done, chunk = 0, 256
        while done < total:
            n = min(chunk, total - done)
            tags = np.frombuffer(self.buf, np.uint8, count=n * rec, offset=start + done * rec)[::rec]
            bad = np.flatnonzero(tags != tag)
            if bad.size:
                return done + int(bad[0])
            done += n
            chunk *= 4
        return total


# ----------------------------------------------------------- decoded records

def _int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


class _Blob:
    """Where a blob's values are and what shape they have (no values read)."""
    __slots__ = ("shape", "legacy", "dtype", "count", "segments", "nbytes", "offset", "tagpos")

    def __init__(self) -> None:
        self.shape: tuple[int, ...] = ()
        self.legacy = False
        self.dtype = "float32"
        self.count = 0
        # (kind, start, n): kind "p" = packed run at start, "u" = n unpacked
        # records (tag + value) starting at start; itemsize from dtype
        self.segments: list[tuple[str, int, int]] = []
        self.nbytes = 0
        self.offset: int | None = None
        self.tagpos = 0

    def info(self, index: int) -> BlobInfo:
        return BlobInfo(index, self.shape, self.dtype, self.nbytes, self.legacy, self.offset)


class _Layer:
    __slots__ = ("name", "type", "bottom", "top", "blobs", "extras", "tagpos")

    def __init__(self, tagpos: int) -> None:
        self.name = ""
        self.type = ""
        self.bottom: list[str] = []
        self.top: list[str] = []
        self.blobs: list[_Blob] = []
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


# Single-byte tags of the unpacked encodings of the value fields.
_TAG_DATA_U = (5 << 3) | 5          # data, fixed32
_TAG_DIFF_U = (6 << 3) | 5          # diff, fixed32
_TAG_DDATA_U = (8 << 3) | 1         # double_data, fixed64
_TAG_DDIFF_U = (9 << 3) | 1         # double_diff, fixed64


def _expect(w: _Wire, what: str, wire: int, want: int, tagpos: int) -> None:
    if wire != want:
        raise w.err(f"{what} has wire type {_WIRE_NAMES[wire]}, expected {_WIRE_NAMES[want]}", tagpos)


def _decode_blob(w: _Wire, start: int, end: int, tagpos: int) -> _Blob:
    blob = _Blob()
    blob.tagpos = tagpos
    legacy: list[int | None] = [None, None, None, None]
    dims: list[int] | None = None
    segs = {4: [], 8: []}          # itemsize -> segments of data / double_data
    nvals = {4: 0, 8: 0}
    pos = start
    while pos < end:
        tp = pos
        field, wire, pos = w.tag(pos, end)
        if field in (5, 6, 8, 9):
            width = 4 if field in (5, 6) else 8
            name = {5: "data", 6: "diff", 8: "double_data", 9: "double_diff"}[field]
            if wire == 2:
                s, pos = w.skip(field, wire, pos, end, tp)
                n = pos - s
                if n % width:
                    raise w.err(f"packed {name} is {n} bytes, not a multiple of {width}", tp)
                if field in (5, 8) and n:
                    segs[width].append(("p", s, n // width))
                    nvals[width] += n // width
            elif wire == (5 if width == 4 else 1):
                tag = {5: _TAG_DATA_U, 6: _TAG_DIFF_U, 8: _TAG_DDATA_U, 9: _TAG_DDIFF_U}[field]
                k = w.run_length(tp, end, tag, width)
                if k == 0:  # the record is cut short by the end of the message
                    raise w.err(f"{name} value needs {width} bytes, only {end - pos} remain", tp)
                if field in (5, 8):
                    segs[width].append(("u", tp, k))
                    nvals[width] += k
                pos = tp + k * (1 + width)
            else:
                raise w.err(f"blob field {name} has wire type {_WIRE_NAMES[wire]}", tp)
        elif field in (1, 2, 3, 4):
            _expect(w, ("num", "channels", "height", "width")[field - 1], wire, 0, tp)
            v, pos = w.varint(pos, end)
            legacy[field - 1] = _int32(v)
        elif field == 7:
            _expect(w, "blob shape", wire, 2, tp)
            s, pos = w.skip(field, wire, pos, end, tp)
            # a repeated singular message merges: its repeated dims concatenate
            dims = (dims or []) + _decode_shape(w, s, pos)
        else:
            _, pos = w.skip(field, wire, pos, end, tp)

    if any(v is not None for v in legacy):
        # Blob::FromProto: any legacy dim present -> (num, channels, height, width), default 0
        blob.shape = tuple(v or 0 for v in legacy)  # type: ignore[misc]
        blob.legacy = True
    else:
        blob.shape = tuple(dims or ())
    nonzero = 1
    for i, d in enumerate(blob.shape):
        if d < 0:
            raise w.err(f"negative dimension {d} at axis {i} of shape {blob.shape}", tagpos)
        nonzero *= d or 1
    if nonzero > _INT_MAX:
        # Caffe's Blob::Reshape: "blob size exceeds INT_MAX" (its dims and count are int)
        raise w.err(f"blob shape {blob.shape} exceeds Caffe's INT_MAX elements", tagpos)
    count = 1
    for d in blob.shape:
        count *= d
    # Caffe takes double_data when there is any, else data, and needs exactly count values
    width = 8 if nvals[8] else 4
    blob.dtype = "float64" if width == 8 else "float32"
    blob.segments = segs[width]
    blob.count = nvals[width]
    blob.nbytes = blob.count * width
    if blob.segments:
        kind, s, _ = blob.segments[0]
        if len(blob.segments) == 1:
            blob.offset = s if kind == "p" else None
    if blob.count != count:
        raise w.err(f"blob has {blob.count} values but its shape {blob.shape} needs {count}", tagpos)
    return blob


def _decode_shape(w: _Wire, start: int, end: int) -> list[int]:
    dims: list[int] = []
    for field, wire, tp, s, e in w.fields(start, end):
        if field != 1:
            continue
        if wire == 2:  # packed int64 varints
            p = s
            while p < e:
                v, p = w.varint(p, e)
                dims.append(_int64(v))
        elif wire == 0:
            v, _ = w.varint(s, e)
            dims.append(_int64(v))
        else:
            raise w.err(f"shape dim has wire type {_WIRE_NAMES[wire]}", tp)
        if len(dims) > 32:
            # Caffe's kMaxBlobAxes; also keeps a hostile shape from growing a huge list
            raise w.err(f"blob shape has more than 32 axes ({len(dims)}+)", tp)
    return dims


def _decode_layer(w: _Wire, start: int, end: int, tagpos: int, v1: bool, index: int) -> _Layer:
    layer = _Layer(tagpos)
    # field numbers: V2 LayerParameter / V1LayerParameter
    f_name, f_type, f_bottom, f_top, f_blobs = (4, 5, 2, 3, 6) if v1 else (1, 2, 3, 4, 7)
    try:
        for field, wire, tp, s, e in w.fields(start, end):
            if field == f_name:
                _expect(w, "layer name", wire, 2, tp)
                layer.name = w.string(s, e)
            elif field == f_type:
                if v1:
                    _expect(w, "V1 layer type", wire, 0, tp)
                    v, _ = w.varint(s, e)
                    # an unknown enum value stays NONE in proto2, which Caffe's
                    # upgrade turns into the empty type string
                    layer.type = V1_LAYER_TYPES.get(_int32(v), "") if _int32(v) != 0 else ""
                else:
                    _expect(w, "layer type", wire, 2, tp)
                    layer.type = w.string(s, e)
            elif field == f_bottom:
                _expect(w, "layer bottom", wire, 2, tp)
                layer.bottom.append(w.string(s, e))
            elif field == f_top:
                _expect(w, "layer top", wire, 2, tp)
                layer.top.append(w.string(s, e))
            elif field == f_blobs:
                _expect(w, "layer blob", wire, 2, tp)
                try:
                    layer.blobs.append(_decode_blob(w, s, e, tp))
                except CaffeModelError as err:
                    raise CaffeModelError(err.reason, err.filename, offset=err.offset,
                                          layer=layer.name or f"#{index}", blob=len(layer.blobs)) from None
            elif v1 and field == 1:
                raise w.err("V0 net (a 'layer' message nested in V1 'layers') is not supported", tp)
            elif not v1:
                layer.extras.append((field, tp, e))
    except CaffeModelError as err:
        if err.layer is not None:
            raise
        raise CaffeModelError(err.reason, err.filename, offset=err.offset,
                              layer=layer.name or f"#{index}") from None
    return layer


def _decode_net(w: _Wire) -> _Net:
    net = _Net()
    saw_v1 = saw_v2 = False
    for field, wire, tp, s, e in w.fields(0, w.size):
        if field == 100 or field == 2:
            _expect(w, "layer" if field == 100 else "V1 layers", wire, 2, tp)
            if field == 100:
                saw_v2 = True
            else:
                saw_v1 = True
            if saw_v1 and saw_v2:
                # UpgradeV1Net refuses nets that hold both
                raise w.err("net holds both V2 'layer' (field 100) and V1 'layers' (field 2)", tp)
            net.layers.append(_decode_layer(w, s, e, tp, field == 2, len(net.layers)))
        elif field == 1:
            _expect(w, "net name", wire, 2, tp)
            net.name, net.has_name = w.string(s, e), True
        else:
            net.extras.append((field, tp, e))
    net.version = "v1" if saw_v1 else "v2"
    if not net.layers:
        raise CaffeModelError("no layers (neither V2 'layer' nor V1 'layers'): not a caffemodel",
                              w.filename, offset=0)
    return net


# ------------------------------------------------------------ value access

def _blob_array(buf: Any, blob: _Blob, keep_dtype: bool) -> np.ndarray:
    """The blob's values in its stored shape, viewing ``buf`` where possible."""
    dt = np.dtype("<f8" if blob.dtype == "float64" else "<f4")
    width = dt.itemsize
    parts = []
    for kind, start, n in blob.segments:
        if kind == "p":
            parts.append(np.frombuffer(buf, dt, count=n, offset=start))
        else:  # n records of (1 tag byte + value): a strided view, copied below
            base = np.frombuffer(buf, np.uint8, count=n * (1 + width), offset=start)
            parts.append(np.ndarray((n,), dt, buffer=base, offset=1, strides=(1 + width,)))
    if len(parts) == 1 and blob.segments[0][0] == "p":
        arr = parts[0]
    elif parts:
        arr = np.concatenate(parts)
    else:
        arr = np.empty(0, dt)
    if not np.little_endian:  # values are stored little-endian
        arr = arr.astype(dt.newbyteorder("="))
    if blob.dtype == "float64" and not keep_dtype:
        arr = arr.astype(np.float32)
    return arr.reshape(blob.shape)


def _blob_array_read(f: Any, blob: _Blob, keep_dtype: bool, filename: str) -> np.ndarray:
    """Like :func:`_blob_array` but read from the open file ``f`` into a fresh array."""
    width = 8 if blob.dtype == "float64" else 4
    dt = np.dtype("<f8" if width == 8 else "<f4")
    out = np.empty(blob.count, dt)
    o = 0
    for kind, start, n in blob.segments:
        f.seek(start)
        if kind == "p":
            view = memoryview(out[o:o + n]).cast("B")
            got = 0
            while got < view.nbytes:
                r = f.readinto(view[got:])
                if not r:
                    raise CaffeModelError("file shrank while being read", filename, offset=start + got)
                got += r
        else:
            raw = f.read(n * (1 + width))
            if len(raw) != n * (1 + width):
                raise CaffeModelError("file shrank while being read", filename, offset=start)
            out[o:o + n] = np.ndarray((n,), dt, buffer=raw, offset=1, strides=(1 + width,))
        o += n
    if not np.little_endian:
        out = out.astype(dt.newbyteorder("="))
    if blob.dtype == "float64" and not keep_dtype:
        out = out.astype(np.float32)
    return out.reshape(blob.shape)


class _Mapped:
    """An open caffemodel: its mapping (or bytes) and decoded structure."""

    def __init__(self, path: str | os.PathLike | None = None, data: bytes | None = None,
                 filename: str | None = None):
        if data is not None:
            self.filename = filename or "<bytes>"
            self.buf: Any = data
            self.size = len(data)
        else:
            self.filename = os.fspath(path)  # type: ignore[arg-type]
            with open(self.filename, "rb") as f:
                self.size = os.fstat(f.fileno()).st_size
                if self.size == 0:
                    raise CaffeModelError("empty file", self.filename, offset=0)
                self.buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        self.net = _decode_net(_Wire(self.buf, self.filename))

    def arrays(self, layer: _Layer, keep_dtype: bool, f: Any = None) -> list[np.ndarray]:
        if f is not None:
            return [_blob_array_read(f, b, keep_dtype, self.filename) for b in layer.blobs]
        return [_blob_array(self.buf, b, keep_dtype) for b in layer.blobs]

    def release(self) -> None:
        """Unmap now (only when no view of the mapping was handed out: ``copy=True``)."""
        if isinstance(self.buf, mmap.mmap):
            try:
                self.buf.close()
            except BufferError:  # a view is still alive somewhere: the GC unmaps later
                pass

    def info(self) -> ModelInfo:
        return ModelInfo(self.filename, "caffemodel-" + self.net.version, self.net.name,
                         tuple(layer.info() for layer in self.net.layers), self.size)

    def raw(self, start: int, end: int) -> memoryview:
        return memoryview(self.buf)[start:end]


def _open(path: str | os.PathLike) -> _Mapped:
    from fcn_repro.caffe.weights import check_kind  # sniffs files of another kind
    check_kind(path, expect="caffemodel")
    return _Mapped(path)


def _load(m: _Mapped, copy: bool, keep_dtype: bool, keep_empty: bool) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    f = open(m.filename, "rb", buffering=0) if copy else None
    try:
        for layer in m.net.layers:
            if not layer.blobs and not keep_empty:
                continue
            if layer.name in out:
                # Caffe's CopyTrainedLayersFrom copies source layers by name in
                # file order, so of two layers with one name the last one wins
                warnings.warn(f"{m.filename}: byte {layer.tagpos}: a second layer named {layer.name!r}; "
                              "its blobs replace the first one's, as in Caffe", stacklevel=3)
            out[layer.name] = m.arrays(layer, keep_dtype, f)
    finally:
        if f is not None:
            f.close()
    if copy:
        m.release()
    return out


def load_caffemodel(path: str | os.PathLike, *, copy: bool = False, keep_dtype: bool = False,
                    keep_empty: bool = False) -> dict[str, list[np.ndarray]]:
    """Layer name -> blobs (float32 arrays in stored shapes), in file order.

    ``copy=False`` (default): views of a private copy-on-write mapping (see the
    module docstring); ``copy=True``: fresh arrays, no mapping kept.
    ``keep_dtype``: ``double_data`` blobs stay float64. ``keep_empty``: also
    list layers without blobs (ReLU, Pooling, ... have none).
    """
    m = _open(path)
    return _load(m, copy, keep_dtype, keep_empty)


def decode_caffemodel(data: bytes, filename: str = "<bytes>", *, keep_dtype: bool = False,
                      keep_empty: bool = False) -> dict[str, list[np.ndarray]]:
    """:func:`load_caffemodel` for bytes in memory (arrays are read-only views)."""
    return _load(_Mapped(data=data, filename=filename), False, keep_dtype, keep_empty)


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
    f = open(m.filename, "rb", buffering=0) if copy else None
    try:
        for layer in m.net.layers:
            lm = Message(name=layer.name)
            if layer.type:
                lm.add("type", layer.type)
            lm.add("bottom", layer.bottom)
            lm.add("top", layer.top)
            for a in m.arrays(layer, keep_dtype, f):
                lm.fields.append(("blobs", a))
            net.add("layer", lm)
    finally:
        if f is not None:
            f.close()
    if copy:
        m.release()
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


def _varint_bytes(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint_bytes((field << 3) | wire)


def _ld(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint_bytes(len(payload)) + payload


def _str(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _as_array(x: Any, where: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):   # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype == np.float64:
        return a
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{where}: cannot store {a.dtype} values as a Caffe blob")
    return a.astype(np.float32, copy=False)


class _BlobPlan:
    """A blob's encoded pieces (header bytes and a view of its values), size known up front."""
    __slots__ = ("pieces", "size")

    def __init__(self, arr: np.ndarray, legacy: bool, where: str):
        width = arr.dtype.itemsize
        values = memoryview(np.ascontiguousarray(arr, "<f8" if width == 8 else "<f4").reshape(-1)).cast("B")
        n = values.nbytes
        # BlobProto fields in field-number order, as protobuf serializes them:
        # legacy dims 1-4, data 5, shape 7, double_data 8
        dims = bytearray()
        if legacy:
            if arr.ndim != 4:
                raise ValueError(f"{where}: legacy num/channels/height/width needs a 4-D blob, "
                                 f"got shape {arr.shape}")
            for f, d in zip((1, 2, 3, 4), arr.shape):
                dims += _key(f, 0) + _varint_bytes(int(d))
        shape = b"" if legacy else _ld(7, _ld(1, b"".join(_varint_bytes(int(d)) for d in arr.shape))
                                        if arr.ndim else b"")
        key = (_key(5 if width == 4 else 8, 2) + _varint_bytes(n)) if n else b""
        if width == 4:
            self.pieces: list[Any] = [bytes(dims) + key, values, shape]
        else:
            self.pieces = [bytes(dims) + shape + key, values]
        self.size = len(dims) + len(key) + n + len(shape)


def _layer_pieces(layer: CaffeLayer) -> tuple[list[Any], int]:
    """Encoded pieces of one LayerParameter (bytes and value memoryviews)."""
    where = f"layer {layer.name!r}"
    legacy = list(layer.legacy) + [False] * (len(layer.blobs) - len(layer.legacy))
    plans = [_BlobPlan(_as_array(b, f"{where} blob {i}"), legacy[i], f"{where} blob {i}")
             for i, b in enumerate(layer.blobs)]
    known: list[tuple[int, list[Any]]] = [(1, [_ld(1, _str(layer.name))])]
    if layer.type:
        known.append((2, [_ld(2, _str(layer.type))]))
    known += [(3, [_ld(3, _str(b))]) for b in layer.bottom]
    known += [(4, [_ld(4, _str(t))]) for t in layer.top]
    for p in plans:
        known.append((7, [_key(7, 2) + _varint_bytes(p.size)] + p.pieces))
    extras = [(f, [bytes(raw) if not isinstance(raw, memoryview) else raw]) for f, raw in layer.extras]
    # stable merge by field number: known fields first within the same number
    merged = sorted(known + extras, key=lambda t: t[0])
    pieces = [x for _, ps in merged for x in ps]
    return pieces, sum(len(x) if isinstance(x, (bytes, bytearray)) else x.nbytes for x in pieces)


def _net_pieces(layers: Iterable[CaffeLayer], net_name: str | None,
                net_extras: Sequence[tuple[int, Any]] = ()) -> tuple[list[Any], int]:
    pieces: list[tuple[int, list[Any]]] = []
    if net_name is not None:
        pieces.append((1, [_ld(1, _str(net_name))]))
    pieces += [(f, [raw]) for f, raw in net_extras]
    for layer in layers:
        lp, size = _layer_pieces(layer)
        pieces.append((100, [_key(100, 2) + _varint_bytes(size)] + lp))
    flat = [x for _, ps in sorted(pieces, key=lambda t: t[0]) for x in ps]
    return flat, sum(len(x) if isinstance(x, (bytes, bytearray)) else x.nbytes for x in flat)


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
    emitted in field-number order, so a file read with :func:`_Mapped` and
    written back with its extras is byte-identical to what Caffe wrote.
    ``progress(n)`` is called with each chunk's byte count.
    """
    pieces, size = _net_pieces(list(layers), net_name, net_extras)
    _write_pieces(path, pieces, progress)
    return size


def _write_pieces(path: str | os.PathLike, pieces: Sequence[Any],
                  progress: Callable[[int], None] | None = None) -> None:
    """Write encoded pieces (bytes, and memoryviews of blob values, written in
    16 MB chunks without joining them) to ``path`` atomically."""
    from fcn_repro.utils import atomic_write
    chunk = 16 << 20
    with atomic_write(path, "wb") as f:
        for p in pieces:
            if isinstance(p, memoryview) and p.nbytes > chunk:
                for o in range(0, p.nbytes, chunk):
                    f.write(p[o:o + chunk])
                    if progress:
                        progress(min(chunk, p.nbytes - o))
            else:
                f.write(p)
                if progress:
                    progress(len(p) if not isinstance(p, memoryview) else p.nbytes)


def layers_from_weights(weights: dict[str, Sequence[Any]], types: dict[str, str] | None = None) -> list[CaffeLayer]:
    """:class:`CaffeLayer` records for a ``{layer: [blob, ...]}`` dict."""
    types = types or {}
    return [CaffeLayer(str(name), str(types.get(name, "")), list(blobs)) for name, blobs in weights.items()]


# ------------------------------------------------------- binary solver state

# caffe.proto's SolverState: iter = 1 (int32), learned_net = 2 (string),
# history = 3 (repeated BlobProto), current_step = 4 (int32). Caffe's
# Solver::Snapshot writes it as `<prefix>_iter_<N>.solverstate` when
# snapshot_format is BINARYPROTO (the default), and Solver::Restore reads a
# file as this binary message unless its name ends in ".h5".

@dataclasses.dataclass
class SolverStateContents:
    """A Caffe SolverState: the iteration, the weights file it names, the
    lr-policy step and one history blob per learnable parameter, in the net's
    parameter order."""
    iter: int
    learned_net: str
    history: list[np.ndarray]
    current_step: int = 0


def decode_solverstate(data: Any, filename: str = "<bytes>") -> SolverStateContents:
    """:func:`read_solverstate` for bytes in memory."""
    w = _Wire(data, filename)
    it, cs, learned, hist = 0, 0, "", []
    seen_iter = False
    for field, wire, tp, s, e in w.fields(0, w.size):
        if field in (1, 4):
            _expect(w, "iter" if field == 1 else "current_step", wire, 0, tp)
            v = _int32(w.varint(s, e)[0])
            if field == 1:
                it, seen_iter = v, True
            else:
                cs = v
        elif field == 2:
            _expect(w, "learned_net", wire, 2, tp)
            learned = w.string(s, e)
        elif field == 3:
            _expect(w, "history blob", wire, 2, tp)
            blob = _decode_blob(w, s, e, tp)
            hist.append(np.array(_blob_array(data, blob, False)))  # a copy: the buffer may go
        # other fields: kept by protobuf, unused by Caffe's SGD solvers; skipped
    if not seen_iter and not hist:
        raise CaffeModelError("neither 'iter' (field 1) nor 'history' (field 3): not a Caffe solver state",
                              filename, offset=0)
    return SolverStateContents(it, learned, hist, cs)


def read_solverstate(path: str | os.PathLike) -> SolverStateContents:
    """Read a binary ``.solverstate`` (Caffe's SolverState message).

    Errors (:class:`CaffeModelError`) name the file and byte offset, like the
    caffemodel reader's; history values come back as float32 arrays in the
    stored shapes (copied out of a read-only mapping of the file, so the file
    is never held in memory twice).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise CaffeModelError("empty file", path, offset=0)
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return decode_solverstate(buf, path)
    finally:
        try:
            buf.close()
        except BufferError:  # a view is still alive somewhere: the GC unmaps later
            pass


def _solverstate_pieces(state: SolverStateContents) -> tuple[list[Any], int]:
    """Encoded pieces of the SolverState message as Caffe serializes it (fields
    in number order, history blobs with a BlobShape and packed data)."""
    pieces: list[Any] = [_key(1, 0) + _varint_bytes(int(state.iter)), _ld(2, _str(state.learned_net))]
    for i, h in enumerate(state.history):
        plan = _BlobPlan(_as_array(h, f"history blob {i}"), False, f"history blob {i}")
        pieces.append(_key(3, 2) + _varint_bytes(plan.size))
        pieces += plan.pieces
    pieces.append(_key(4, 0) + _varint_bytes(int(state.current_step)))
    return pieces, sum(len(x) if isinstance(x, (bytes, bytearray)) else x.nbytes for x in pieces)


def encode_solverstate(state: SolverStateContents) -> bytes:
    """The SolverState message's bytes (for small states and tests; files: :func:`write_solverstate`)."""
    pieces, _ = _solverstate_pieces(state)
    return b"".join(bytes(p) for p in pieces)


def write_solverstate(path: str | os.PathLike, state: SolverStateContents) -> int:
    """Write a binary ``.solverstate`` atomically, streaming the history values; returns its size in bytes."""
    pieces, size = _solverstate_pieces(state)
    _write_pieces(path, pieces)
    return size


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
