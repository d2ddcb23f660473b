"""Caffe's binary solver state (``.solverstate``), read and written without protobuf.

caffe.proto's SolverState: ``iter`` 1 (int32), ``learned_net`` 2 (string),
``history`` 3 (repeated BlobProto), ``current_step`` 4 (int32). Caffe's
``Solver::Snapshot`` writes it as ``<prefix>_iter_<N>.solverstate`` when
``snapshot_format`` is BINARYPROTO (the default), and ``Solver::Restore``
reads a file as this binary message unless its name ends in ".h5" (that
layout is read in :mod:`fcn_repro.solver`).

Errors are :class:`~fcn_repro.errors.CaffeModelError` naming the file and
byte offset (and the history blob).
"""
from __future__ import annotations

import dataclasses
import mmap
import os
from typing import Any

import numpy as np

from fcn_repro.caffe import schema
from fcn_repro.caffe.weightfile import as_array
from fcn_repro.caffe.wire import (
    BlobPlan, Wire, blob_array, decode_blob, encode_str, expect_wire, int32, key, length_delimited,
    pieces_size, varint_bytes, write_pieces,
)
from fcn_repro.errors import CaffeModelError

_SS = schema.numbers("SolverState")
_ITER, _LEARNED, _HISTORY, _STEP = (_SS[k] for k in ("iter", "learned_net", "history", "current_step"))

__all__ = ["SolverStateContents", "read_solverstate", "decode_solverstate", "write_solverstate",
           "encode_solverstate"]


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
    w = Wire(data, filename)
    it, cs, learned, hist = 0, 0, "", []
    seen_iter = False
    for field, wire, tp, s, e in w.fields(0, w.size):
        if field in (_ITER, _STEP):
            expect_wire(w, "iter" if field == _ITER else "current_step", wire, 0, tp)
            v = int32(w.varint(s, e)[0])
            if field == _ITER:
                it, seen_iter = v, True
            else:
                cs = v
        elif field == _LEARNED:
            expect_wire(w, "learned_net", wire, 2, tp)
            learned = w.string(s, e)
        elif field == _HISTORY:
            expect_wire(w, "history blob", wire, 2, tp)
            blob = decode_blob(w, s, e, tp)
            hist.append(np.array(blob_array(data, blob, False)))  # a copy: the buffer may go
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
    pieces: list[Any] = [key(_ITER, 0) + varint_bytes(int(state.iter)),
                         length_delimited(_LEARNED, encode_str(state.learned_net))]
    for i, h in enumerate(state.history):
        plan = BlobPlan(as_array(h, f"history blob {i}"), False, f"history blob {i}")
        pieces.append(key(_HISTORY, 2) + varint_bytes(plan.size))
        pieces += plan.pieces
    pieces.append(key(_STEP, 0) + varint_bytes(int(state.current_step)))
    return pieces, pieces_size(pieces)


def encode_solverstate(state: SolverStateContents) -> bytes:
    """The SolverState message's bytes (for small states and tests; files: :func:`write_solverstate`)."""
    pieces, _ = _solverstate_pieces(state)
    return b"".join(bytes(p) for p in pieces)


def write_solverstate(path: str | os.PathLike, state: SolverStateContents) -> int:
    """Write a binary ``.solverstate`` atomically, streaming the history values; returns its size in bytes."""
    pieces, size = _solverstate_pieces(state)
    write_pieces(path, pieces)
    return size
