"""Caffe's binary solver state (``.solverstate``), read and written without protobuf.

caffe.proto's SolverState: ``iter`` 1 (int32), ``learned_net`` 2 (string),
``history`` 3 (repeated BlobProto), ``current_step`` 4 (int32). Caffe's
``Solver::Snapshot`` writes it as ``<prefix>_iter_<N>.solverstate`` when
``snapshot_format`` is BINARYPROTO (the default), and ``Solver::Restore``
reads a file as this binary message unless its name ends in ".h5".

:func:`read_state` / :func:`write_state` handle every layout the trainer
uses: this binary message, Caffe's HDF5 ``.solverstate.h5`` and ``.npz``,
each read within the memory budget (:mod:`fcn_repro.limits`).

Errors are :class:`~fcn_repro.errors.CaffeModelError` naming the file and
byte offset (and the history blob).
"""
from __future__ import annotations

import dataclasses
import os
import stat
from typing import Any, Callable

import numpy as np

from fcn_repro import limits
from fcn_repro.caffe import schema
from fcn_repro.caffe.hdf5 import H5_OVERHEAD, H5Reader, import_h5py, write_h5
from fcn_repro.caffe.weightfile import HDF5_MAGIC, as_array, is_blob_number
from fcn_repro.caffe.wire import (
    BlobPlan, Wire, blob_array, decode_blob, encode_str, expect_wire, int32, key, length_delimited,
    pieces_size, varint_bytes, write_pieces,
)
from fcn_repro.errors import CaffeModelError, HDF5WeightsError
from fcn_repro.npz import NpzError, read_npz
from fcn_repro.outputs import output_file

_SS = schema.numbers("SolverState")
_ITER, _LEARNED, _HISTORY, _STEP = (_SS[k] for k in ("iter", "learned_net", "history", "current_step"))

__all__ = ["SolverStateContents", "read_solverstate", "decode_solverstate", "write_solverstate",
           "encode_solverstate", "StateFile", "read_state", "write_state", "state_format"]


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
    budget = limits.Budget(filename, error=CaffeModelError)
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
            try:
                blob = decode_blob(w, s, e, tp)
            except CaffeModelError as err:
                raise CaffeModelError(err.reason, err.filename, offset=err.offset, blob=len(hist)) from None
            budget.charge(blob.count * 4, f"history blob of shape {blob.shape}", offset=tp, blob=len(hist))
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
    stored shapes (copied out of the file's bytes, read into memory once and
    let go; never memory-mapped, so a file truncated meanwhile is an error,
    not SIGBUS).
    """
    path = os.fspath(path)
    buf = limits.read_regular(path, "solver state", error=CaffeModelError)
    if not buf:
        raise CaffeModelError("empty file", path, offset=0)
    return decode_solverstate(buf, path)


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


# ------------------------------------------------- state files, any layout

@dataclasses.dataclass
class StateFile:
    """A solver state as stored by :func:`write_state`, in any of its layouts.

    ``param_names`` (``layer/i`` per history blob) and ``extra`` arrays exist
    only in the ``.h5`` and ``.npz`` layouts (None / empty otherwise).
    """
    state: SolverStateContents
    param_names: list[str] | None = None
    extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    format: str = "binary"


def state_format(path: str | os.PathLike, sniff: bool = False) -> str:
    """How a solver-state file is stored: ``"npz"``, ``"h5"`` or Caffe's ``"binary"``.

    By name, as Caffe's ``Solver::Restore`` decides (HDF5 for names ending in
    .h5, the binary message otherwise); ``sniff``: an existing HDF5 or zip
    (npz) file is recognised by its signature whatever its name.
    """
    path = os.fspath(path)
    if sniff:
        head = b""
        try:   # only a regular file is looked into: the open of a FIFO would wait for a writer
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    head = os.pread(fd, 8, 0)
            finally:
                os.close(fd)
        except OSError:
            pass
        if head == HDF5_MAGIC:
            return "h5"
        if head[:4] == b"PK\x03\x04":
            return "npz"
    low = path.lower()
    if low.endswith(".npz"):
        return "npz"
    if low.endswith((".h5", ".hdf5")):
        return "h5"
    return "binary"


def _first_int(a: np.ndarray, what: str, fail: Callable[[str], Exception]) -> int:
    """The single integer a state's ``iter`` / ``current_step`` array holds (int32 in Caffe)."""
    a = np.asarray(a)
    if a.dtype.kind not in "iu" or a.size != 1:
        raise fail(f"{what} must be one integer, got {a.dtype} of shape {a.shape}")
    v = int(a.reshape(-1)[0])
    if not -(1 << 31) <= v < (1 << 31):
        raise fail(f"{what} {v} is out of range for int32")
    return v


def _text(a: Any, what: str, fail: Callable[[str], Exception]) -> str:
    v = a.item() if isinstance(a, np.ndarray) and a.size == 1 else a
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            raise fail(f"{what} is not UTF-8 text") from None
    if isinstance(v, str):
        return v
    raise fail(f"{what} must be a string, got {type(v).__name__}")


def _names(a: np.ndarray, n: int, fail: Callable[[str], Exception]) -> list[str]:
    a = np.asarray(a)
    if a.ndim != 1 or a.dtype.kind not in "USO":
        raise fail(f"param_names must be a list of strings, got {a.dtype} of shape {a.shape}")
    names = [_text(x, "param_names entry", fail) for x in a.tolist()]
    if len(names) != n:
        raise fail(f"param_names has {len(names)} entries for {n} history blobs")
    return names


def _history(arrays: dict[int, np.ndarray], fail: Callable[..., Exception]) -> list[np.ndarray]:
    idx = sorted(arrays)
    if idx != list(range(len(idx))):
        raise fail(f"history blobs {idx[:8]}{'...' if len(idx) > 8 else ''} are not numbered 0..{len(idx) - 1}")
    out = []
    for i in idx:
        a = arrays[i]
        if a.dtype.kind != "f":
            raise fail(f"history blob {i} holds {a.dtype}, expected float values", blob=i)
        out.append(a)
    return out


def _read_npz_state(path: str) -> StateFile:
    def fail(reason: str, **where: Any) -> NpzError:
        return NpzError(reason, path, **where)
    z = read_npz(path)   # every member's header checked, then read within the budget
    hist_keys = {}
    for k in z:
        if k.startswith("history/"):
            i = k[len("history/"):]
            if not is_blob_number(i):
                raise fail(f"member {k!r}: history blobs are named history/0, history/1, ...")
            hist_keys[int(i)] = k
    if "iter" not in z:
        raise fail("no 'iter' member: not a solver state")
    it = _first_int(z["iter"], "iter", fail)
    cs = _first_int(z["current_step"], "current_step", fail) if "current_step" in z else 0
    learned = _text(z["learned_net"], "learned_net", fail) if "learned_net" in z else ""
    hist = _history({i: z[k] for i, k in hist_keys.items()}, fail)
    names = _names(z["param_names"], len(hist), fail) if "param_names" in z else None
    extra = {k[len("extra/"):]: v for k, v in z.items() if k.startswith("extra/")}
    return StateFile(SolverStateContents(it, learned, hist, cs), names, extra, "npz")


def _read_h5_state(path: str) -> StateFile:
    h5py = import_h5py()
    with H5Reader(path) as r:
        def fail(reason: str, **where: Any) -> HDF5WeightsError:
            return r.error(reason, **where)

        def dataset(at: str) -> np.ndarray:
            with r.guard(at):
                ds = r.file[at]
            if not isinstance(ds, h5py.Dataset):
                raise r.error("expected a dataset", at)
            return r.read(ds, at)
        top = dict(r.members(r.file, "/"))
        if "iter" not in top or "history" not in top:
            raise r.error("not a Caffe solver state (needs 'iter' and 'history')", "/")
        it = _first_int(dataset("/iter"), "iter", lambda m: r.error(m, "/iter"))
        cs = _first_int(dataset("/current_step"), "current_step",
                        lambda m: r.error(m, "/current_step")) if "current_step" in top else 0
        learned = _text(dataset("/learned_net"), "learned_net",
                        lambda m: r.error(m, "/learned_net")) if "learned_net" in top else ""
        hg = top["history"]
        if not isinstance(hg, h5py.Group):
            raise r.error("expected a group of history blobs", "/history")
        arrays: dict[int, np.ndarray] = {}
        for k, ds in r.members(hg, "/history"):
            at = f"/history/{k}"
            if not is_blob_number(k) or not isinstance(ds, h5py.Dataset):
                raise r.error("history blobs are datasets named 0, 1, ...", at)
            arrays[int(k)] = r.read(ds, at, blob=int(k))
        hist = _history(arrays, fail)
        names = _names(dataset("/param_names"), len(hist), lambda m: r.error(m, "/param_names")) \
            if "param_names" in top else None
        extra: dict[str, np.ndarray] = {}
        if "extra" in top:
            eg = top["extra"]
            if not isinstance(eg, h5py.Group):
                raise r.error("expected a group of arrays", "/extra")
            for k, ds in r.members(eg, "/extra"):
                if not isinstance(ds, h5py.Dataset):
                    raise r.error("expected a dataset", f"/extra/{k}")
                extra[k] = r.read(ds, f"/extra/{k}")
    return StateFile(SolverStateContents(it, learned, hist, cs), names, extra, "h5")


def read_state(path: str | os.PathLike) -> StateFile:
    """Read a solver state in any layout :func:`write_state` writes (or Caffe's own).

    Every refusal is a project error naming the file and the place in it
    (:class:`CaffeModelError` with the byte offset for the binary message,
    :class:`HDF5WeightsError` with the HDF5 path, :class:`NpzError` with the
    member); sizes are checked against the file and the memory budget before
    anything is read. A missing file is ``FileNotFoundError``.
    """
    path = os.fspath(path)
    limits.require_regular(path, "solver state", error=CaffeModelError)   # a FIFO or device: refused at once
    fmt = state_format(path, sniff=True)
    if fmt == "binary":
        return StateFile(read_solverstate(path), None, {}, "binary")
    if fmt == "npz":
        return _read_npz_state(path)
    return _read_h5_state(path)


def write_state(path: str | os.PathLike, state: SolverStateContents, param_names: list[str] | None = None,
                extra: dict[str, np.ndarray] | None = None) -> None:
    """Write a solver state atomically, its layout by name (:func:`state_format`).

    ``.h5`` (``.solverstate.h5``): Caffe's HDF5 layout (datasets ``iter``,
    ``learned_net``, ``current_step``, group ``history`` with ``0``, ``1``,
    ...), which Caffe restores, plus ``param_names`` and ``extra/<key>``.
    ``.npz``: the same keys in a numpy archive. Other names: Caffe's binary
    SolverState message (no place for ``param_names`` or ``extra``).
    The disk's free space is checked first; nothing is left half-written.
    """
    path = os.fspath(path)
    fmt = state_format(path)
    if fmt == "binary":
        write_solverstate(path, state)
        return
    hist = [as_array(h, f"history blob {i}") for i, h in enumerate(state.history)]
    extra = {k: np.asarray(v) for k, v in (extra or {}).items()}
    names = [str(n) for n in (param_names or [])]
    expected = sum(a.nbytes for a in hist) + sum(a.nbytes for a in extra.values()) \
        + sum(len(n) + 64 for n in names) + len(state.learned_net) + H5_OVERHEAD * (len(hist) + len(extra) + 8)
    if fmt == "npz":
        arrays: dict[str, np.ndarray] = {
            "iter": np.array([state.iter], np.int32),
            "current_step": np.array([state.current_step], np.int32),
            "learned_net": np.array(state.learned_net),
        }
        if param_names is not None:
            arrays["param_names"] = np.array(names)
        for i, h in enumerate(hist):
            arrays[f"history/{i}"] = h
        for k, v in extra.items():
            arrays[f"extra/{k}"] = v
        with output_file(path, expected, "wb") as f:
            np.savez(f, **arrays)
        return

    def build(f: Any, checkpoint: Callable[[], None]) -> None:
        f.create_dataset("iter", data=np.array([state.iter], np.int32))
        f.create_dataset("learned_net", data=np.bytes_(state.learned_net.encode()))
        f.create_dataset("current_step", data=np.array([state.current_step], np.int32))
        hg = f.create_group("history")
        for i, h in enumerate(hist):
            hg.create_dataset(str(i), data=h)
            checkpoint()
        if param_names is not None:
            f.create_dataset("param_names", data=np.array([n.encode() for n in names]))
        if extra:
            eg = f.create_group("extra")
            for k, v in extra.items():
                eg.create_dataset(k, data=v)
                checkpoint()

    write_h5(path, build, expected)
