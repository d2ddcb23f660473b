"""Protobuf wire format, without protoc or the protobuf package.

Reading: :class:`Wire`, bounds-checked access to a buffer (bytes or a
mapping) in which every read takes the end of the enclosing message, so no
length a file claims is trusted before it is checked against the bytes that
remain. Writing: the few encoders the writers need (varints, keys,
length-delimited fields) and :func:`write_pieces`, which streams encoded
pieces (bytes and memoryviews of array values) to a file without joining
them.

Caffe's ``BlobProto`` is decoded and encoded here too, since both the
caffemodel (NetParameter) and the solver state (SolverState) hold them:
``num`` 1, ``channels`` 2, ``height`` 3, ``width`` 4 (legacy 4-D shape),
``data`` 5, ``diff`` 6, ``shape`` 7 (BlobShape, ``dim`` 1), ``double_data``
8, ``double_diff`` 9. :func:`decode_blob` locates a blob's values without
reading them; :func:`blob_array` views (or :func:`blob_array_read` reads)
them. Errors are :class:`~fcn_repro.errors.CaffeModelError` naming the file
and byte offset.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from fcn_repro import limits
from fcn_repro.caffe import schema
from fcn_repro.caffe.weightfile import BlobInfo
from fcn_repro.errors import CaffeModelError
from fcn_repro.outputs import output_file

__all__ = ["Wire", "WIRE_NAMES", "int32", "int64", "BlobRecord", "decode_blob", "blob_array",
           "blob_array_read", "expect_wire", "varint_bytes", "key", "length_delimited", "encode_str",
           "BlobPlan", "pieces_size", "write_pieces"]


# ------------------------------------------------------------------ reading

WIRE_NAMES = {0: "varint", 1: "fixed64", 2: "length-delimited", 3: "start-group",
               4: "end-group", 5: "fixed32"}
_MAX_GROUP_DEPTH = 100     # protobuf's default recursion limit
_MAX_FIELD = (1 << 29) - 1
_INT_MAX = (1 << 31) - 1


class Wire:
    """Bounds-checked protobuf wire-format reading over a byte buffer.

    Every method takes the end of the enclosing message, so no read can run
    past it, whatever lengths the data claims.
    """

    __slots__ = ("buf", "filename", "size", "records", "max_records")

    def __init__(self, buf: Any, filename: str):
        self.buf = buf          # bytes, or mmap: indexing gives ints, slicing bytes
        self.filename = filename
        self.size = len(buf)
        # Every field read may become a Python record (a layer, a blob, a
        # value run, a skipped span: ~0.1-0.5 KB each however few bytes it
        # takes in the file), so their number is capped: the memory budget.
        self.records = 0
        self.max_records = limits.current().records

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
        self.records += 1
        if self.records > self.max_records:
            raise self.err(limits.refusal("records", self.records, self.max_records,
                                          "a file of this many fields"), pos)
        t, p = self.varint(pos, end)
        field, wire = t >> 3, t & 7
        if field == 0 or field > _MAX_FIELD:
            raise self.err(f"invalid field number {field} (tag {t:#x})", pos)
        if wire not in WIRE_NAMES:
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
                raise self.err(f"field {field} ({WIRE_NAMES[wire]}) needs {n} bytes, "
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



# --------------------------------------------------------------- BlobProto

def int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


class BlobRecord:
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


# Single-byte tags of the unpacked encodings of the value fields.
_BP = schema.numbers("BlobProto")
_DATA, _DIFF, _DDATA, _DDIFF, _SHAPE = (_BP[k] for k in ("data", "diff", "double_data", "double_diff", "shape"))
_LEGACY = tuple(_BP[k] for k in ("num", "channels", "height", "width"))
_DIM = schema.numbers("BlobShape")["dim"]
_VALUE_FIELDS = {_DATA: "data", _DIFF: "diff", _DDATA: "double_data", _DDIFF: "double_diff"}
_WIDTH = {_DATA: 4, _DIFF: 4, _DDATA: 8, _DDIFF: 8}
# single-byte tags of the unpacked encodings (fixed32 = wire 5, fixed64 = wire 1)
_TAG_UNPACKED = {f: (f << 3) | (5 if w == 4 else 1) for f, w in _WIDTH.items()}


def expect_wire(w: Wire, what: str, wire: int, want: int, tagpos: int) -> None:
    if wire != want:
        raise w.err(f"{what} has wire type {WIRE_NAMES[wire]}, expected {WIRE_NAMES[want]}", tagpos)


def decode_blob(w: Wire, start: int, end: int, tagpos: int) -> BlobRecord:
    blob = BlobRecord()
    blob.tagpos = tagpos
    legacy: list[int | None] = [None, None, None, None]
    dims: list[int] | None = None
    segs = {4: [], 8: []}          # itemsize -> segments of data / double_data
    nvals = {4: 0, 8: 0}
    pos = start
    while pos < end:
        tp = pos
        field, wire, pos = w.tag(pos, end)
        if field in _VALUE_FIELDS:
            width = _WIDTH[field]
            name = _VALUE_FIELDS[field]
            if wire == 2:
                s, pos = w.skip(field, wire, pos, end, tp)
                n = pos - s
                if n % width:
                    raise w.err(f"packed {name} is {n} bytes, not a multiple of {width}", tp)
                if field in (_DATA, _DDATA) and n:
                    segs[width].append(("p", s, n // width))
                    nvals[width] += n // width
            elif wire == (5 if width == 4 else 1):
                tag = _TAG_UNPACKED[field]
                k = w.run_length(tp, end, tag, width)
                if k == 0:  # the record is cut short by the end of the message
                    raise w.err(f"{name} value needs {width} bytes, only {end - pos} remain", tp)
                if field in (_DATA, _DDATA):
                    segs[width].append(("u", tp, k))
                    nvals[width] += k
                pos = tp + k * (1 + width)
            else:
                raise w.err(f"blob field {name} has wire type {WIRE_NAMES[wire]}", tp)
        elif field in _LEGACY:
            axis = _LEGACY.index(field)
            expect_wire(w, ("num", "channels", "height", "width")[axis], wire, 0, tp)
            v, pos = w.varint(pos, end)
            legacy[axis] = int32(v)
        elif field == _SHAPE:
            expect_wire(w, "blob shape", wire, 2, tp)
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


def _decode_shape(w: Wire, start: int, end: int) -> list[int]:
    dims: list[int] = []
    for field, wire, tp, s, e in w.fields(start, end):
        if field != _DIM:
            continue
        if wire == 2:  # packed int64 varints
            p = s
            while p < e:
                v, p = w.varint(p, e)
                dims.append(int64(v))
        elif wire == 0:
            v, _ = w.varint(s, e)
            dims.append(int64(v))
        else:
            raise w.err(f"shape dim has wire type {WIRE_NAMES[wire]}", tp)
        if len(dims) > 32:
            # Caffe's kMaxBlobAxes; also keeps a hostile shape from growing a huge list
            raise w.err(f"blob shape has more than 32 axes ({len(dims)}+)", tp)
    return dims


def blob_array(buf: Any, blob: BlobRecord, keep_dtype: bool) -> np.ndarray:
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


def blob_array_read(f: Any, blob: BlobRecord, keep_dtype: bool, filename: str) -> np.ndarray:
    """Like :func:`blob_array` but read from the open file ``f`` into a fresh array."""
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



# ------------------------------------------------------------------ writing

def varint_bytes(v: int) -> bytes:
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


def key(field: int, wire: int) -> bytes:
    return varint_bytes((field << 3) | wire)


def length_delimited(field: int, payload: bytes) -> bytes:
    return key(field, 2) + varint_bytes(len(payload)) + payload


def encode_str(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


class BlobPlan:
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
            for f, d in zip(_LEGACY, arr.shape):
                dims += key(f, 0) + varint_bytes(int(d))
        dim_bytes = b"".join(varint_bytes(int(d)) for d in arr.shape)
        shape = b"" if legacy else length_delimited(_SHAPE, length_delimited(_DIM, dim_bytes) if arr.ndim else b"")
        head = (key(_DATA if width == 4 else _DDATA, 2) + varint_bytes(n)) if n else b""
        if width == 4:
            self.pieces: list[Any] = [bytes(dims) + head, values, shape]
        else:
            self.pieces = [bytes(dims) + shape + head, values]
        self.size = len(dims) + len(head) + n + len(shape)


def pieces_size(pieces: Sequence[Any]) -> int:
    """Total bytes of encoded pieces (bytes and memoryviews)."""
    return sum(len(x) if isinstance(x, (bytes, bytearray)) else x.nbytes for x in pieces)


def write_pieces(path: str | os.PathLike, pieces: Sequence[Any],
                 progress: Callable[[int], None] | None = None) -> None:
    """Write encoded pieces (bytes, and memoryviews of blob values, written in
    16 MB chunks without joining them) to ``path`` atomically, after checking
    the disk has room (:func:`fcn_repro.outputs.output_file`)."""
    chunk = 16 << 20
    with output_file(path, pieces_size(pieces), "wb") as f:
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


