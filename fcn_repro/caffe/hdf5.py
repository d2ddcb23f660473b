"""Caffe's HDF5 weights (``.caffemodel.h5``), read and written with h5py.

Layout, as Caffe's ``Net::ToHDF5`` writes it and ``Net::CopyTrainedLayersFromHDF5``
reads it: a group ``/data`` with one group per layer name (every layer, also
those without parameters) holding datasets ``0``, ``1``, ... in the blobs'
shapes (float32 from ``Net<float>``; Caffe also accepts float64 datasets and
converts them). Caffe's loader matches a dataset's shape to the net's blob
exactly: there is no legacy 4-D leniency in HDF5.

Layer order: HDF5 groups list their members by name unless the group was
created with link creation order tracked. Caffe's own files do not track it,
so they read back in name order; files written here track it, so they read
back in the order written. Caffe reads both (it looks layers up by name).

Values are read into fresh, writable arrays (HDF5 does its own I/O; a
contiguous dataset is one read). float64 datasets become float32 unless
``keep_dtype=True``, as in :mod:`fcn_repro.caffe.caffemodel`. Only objects
stored in the file are read: soft, external and user-defined links, and
external or virtual storage, are refused (naming the file and HDF5 path),
never followed.

Writing (:func:`write_h5`, used by :func:`save_hdf5` and the solver states):
the file is made in memory and its bytes written through the atomic writer,
so a full disk, a quota or a file-size limit is an ``OutputError`` with
nothing left behind, and SIGINT/SIGTERM during a write stop the run cleanly.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
from typing import Any, Callable, Iterator

import numpy as np

from fcn_repro import limits, outputs
from fcn_repro.caffe.weightfile import (  # noqa: F401  (HDF5_MAGIC re-exported)
    HDF5_MAGIC, BlobInfo, LayerInfo, ModelInfo, as_array, is_blob_number)
from fcn_repro.errors import HDF5WeightsError, OutputError, WeightsError

__all__ = ["HDF5WeightsError", "load_hdf5", "save_hdf5", "hdf5_info", "write_h5", "SignalsDeferred"]


def import_h5py():
    import h5py  # imported lazily: it costs memory and time the binary path does not need
    return h5py


# What h5py raises for a corrupt or hostile file (besides its own subclasses of these).
_H5PY_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError,
                UnicodeDecodeError, OverflowError)


class H5Reader:
    """An HDF5 file opened for reading within the memory budget.

    Every h5py failure inside :meth:`guard` becomes one
    :class:`HDF5WeightsError` naming the file and the HDF5 object being read
    (h5py raises ``OSError``, ``RuntimeError``, ``KeyError``, ``TypeError``,
    ... for corrupt files). :meth:`read` checks a dataset's declared size
    before reading it: HDF5 lets a dataset declare any shape and returns fill
    values for storage never written, so the values read from one file must
    together fit in its size (compressed ones in ``limits.expansion_allowance``
    of it), within ``limits.read_bytes``; storage outside the file (external
    or virtual datasets) is refused. The number of objects visited
    is capped by ``limits.records``.
    """

    def __init__(self, path: str | os.PathLike):
        self.filename = os.fspath(path)
        self.at = "/"
        self.size = os.path.getsize(self.filename)
        self.budget = limits.Budget(self.filename, error=HDF5WeightsError)
        self.allowance = limits.expansion_allowance(self.size)
        self.max_records = limits.current().records
        self.records = 0
        self.raw_total = 0        # bytes of uncompressed datasets read so far
        self.packed_total = 0     # bytes of compressed datasets read so far
        h5py = import_h5py()
        try:
            self.file = h5py.File(self.filename, "r")
        except _H5PY_ERRORS as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise HDF5WeightsError(f"HDF5 library can not open it ({e})", self.filename) from None

    def __enter__(self) -> "H5Reader":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.file.close()
        except _H5PY_ERRORS:   # closing a file opened read-only loses nothing
            pass

    def error(self, reason: str, at: str | None = None, **where: Any) -> HDF5WeightsError:
        return HDF5WeightsError(reason, self.filename, h5path=at or self.at, **where)

    @contextlib.contextmanager
    def guard(self, at: str, **where: Any) -> Iterator[None]:
        """Run h5py calls on object ``at``; their failures become this file's error."""
        self.at = at
        try:
            yield
        except HDF5WeightsError:
            raise
        except _H5PY_ERRORS as e:
            raise self.error(f"HDF5 library can not read it ({type(e).__name__}: {e})", at, **where) from None

    def count(self, n: int = 1) -> None:
        """Count ``n`` more objects visited against ``limits.records``."""
        self.records += n
        if self.records > self.max_records:
            raise self.error(limits.refusal("records", self.records, self.max_records,
                                            "a file of this many HDF5 objects"))

    def members(self, group: Any, at: str) -> list[tuple[str, Any]]:
        """(name, object) of a group's members, in the group's order; counted."""
        with self.guard(at):
            n = len(group)
            self.count(n)
            names = list(group.keys())
            for k in names:
                self.check_link(group, k, f"{at.rstrip('/')}/{k}")
            return [(k, group.get(k, getlink=False)) for k in names]

    def check_link(self, group: Any, name: str, at: str) -> None:
        """Refuse a member reached through a soft, external or user-defined link.

        Only hard links (the objects of this file) are read: an external link
        would read another file (or block on a FIFO it names), a soft link may
        lead to one; Caffe's files have neither. The link is looked at, never followed.
        """
        h5l = import_h5py().h5l
        with self.guard(at):
            key = name.encode()
            kind = group.id.links.get_info(key).type   # the link itself, not what it leads to
            if kind == h5l.TYPE_HARD:
                return
            target = group.id.links.get_val(key)
        if kind == h5l.TYPE_EXTERNAL:
            what = f"an external link to {target[1].decode(errors='replace')!r} in file " \
                   f"{target[0].decode(errors='replace')!r}"
        elif kind == h5l.TYPE_SOFT:
            what = f"a soft link to {target.decode(errors='replace')!r}"
        else:
            what = f"a user-defined link (type {kind})"
        raise self.error(f"is {what}: only objects stored in this file are read (links are not followed)", at)

    def check(self, ds: Any, at: str, **where: Any) -> int:
        """The bytes ``ds`` declares, refused when they can not be in the file or are over the budget."""
        with self.guard(at, **where):
            nbytes = int(ds.size) * ds.dtype.itemsize
            dcpl = ds.id.get_create_plist()
            h5d = import_h5py().h5d
            if dcpl.get_layout() not in (h5d.COMPACT, h5d.CONTIGUOUS, h5d.CHUNKED) or dcpl.get_external_count():
                raise self.error("dataset storage outside this file (external or virtual) is not read",
                                 at, **where)
            filtered = bool(ds.chunks) and bool(dcpl.get_nfilters())
        if filtered:
            self.packed_total += nbytes
            if self.packed_total > self.allowance:
                raise self.error(f"compressed datasets up to this one (shape {ds.shape}) unpack to "
                                 f"{self.packed_total:,} bytes from a {self.size:,}-byte file, over the limit of "
                                 f"{self.allowance:,} (expansion; raise it with {limits.ENV['expansion']}=N "
                                 "if you mean it)", at, **where)
        else:
            self.raw_total += nbytes
            if self.raw_total > self.size:
                raise self.error(f"dataset of shape {ds.shape} needs {nbytes} bytes; with the datasets "
                                 f"before it {self.raw_total}, more than the file's {self.size}: "
                                 "corrupt or hostile", at, **where)
        self.budget.charge(nbytes, f"dataset of shape {ds.shape}", h5path=at, **where)
        return nbytes

    def read(self, ds: Any, at: str, **where: Any) -> np.ndarray:
        """A dataset's values (after :meth:`check`)."""
        self.check(ds, at, **where)
        with self.guard(at, **where):
            return np.asarray(ds[()])


def _layer_groups(r: H5Reader) -> list[tuple[str, Any]]:
    h5py = import_h5py()
    with r.guard("/"):
        if "data" not in list(r.file.keys()):   # the link's name: `in` would follow it
            raise r.error("no /data group: not Caffe HDF5 weights (Net::ToHDF5 layout)", "/")
    r.check_link(r.file, "data", "/data")
    with r.guard("/data"):
        data = r.file["data"]
    if not isinstance(data, h5py.Group):
        raise r.error("is a dataset, expected a group of layers", "/data")
    out = []
    # keys() follows creation order when the group tracks it, else name order
    for name, g in r.members(data, "/data"):
        if not isinstance(g, h5py.Group):
            raise r.error("expected a group (one per layer)", f"/data/{name}")
        out.append((name, g))
    return out


def _blob_datasets(r: H5Reader, g: Any, name: str) -> list[tuple[str, Any]]:
    h5py = import_h5py()
    members = dict(r.members(g, f"/data/{name}"))
    for k in members:
        if not is_blob_number(k):
            raise r.error("blob datasets must be named 0, 1, ...", f"/data/{name}/{k}", layer=name)
    idx = sorted(int(k) for k in members)
    if idx != list(range(len(idx))):
        raise r.error(f"blob datasets {idx} are not 0..{len(idx) - 1}", f"/data/{name}", layer=name)
    out = []
    for i in idx:
        at = f"/data/{name}/{i}"
        ds = members[str(i)]
        if not isinstance(ds, h5py.Dataset):
            raise r.error("expected a dataset", at, layer=name, blob=i)
        with r.guard(at, layer=name, blob=i):
            kind, ndim = ds.dtype.kind, ds.ndim
        if kind != "f":
            # hdf5_load_nd_dataset: "Expected float or double data"
            raise r.error(f"dataset holds {ds.dtype}, expected float or double data", at, layer=name, blob=i)
        if ndim > 32:
            raise r.error(f"{ndim} axes, Caffe allows at most 32", at, layer=name, blob=i)
        out.append((at, ds))
    return out


def load_hdf5(path: str | os.PathLike, *, keep_dtype: bool = False,
              keep_empty: bool = False) -> dict[str, list[np.ndarray]]:
    """Layer name -> blobs (float32 arrays, dataset shapes) from Caffe HDF5 weights.

    ``keep_empty`` also lists layers with no datasets (Caffe writes a group
    for every layer). Sizes are checked before values are read (:class:`H5Reader`).
    """
    out: dict[str, list[np.ndarray]] = {}
    with H5Reader(path) as r:
        for name, g in _layer_groups(r):
            blobs = []
            for i, (at, ds) in enumerate(_blob_datasets(r, g, name)):
                a = r.read(ds, at, layer=name, blob=i)
                if a.dtype.byteorder not in "=|":
                    a = a.astype(a.dtype.newbyteorder("="))
                if a.dtype != np.float32 and not (keep_dtype and a.dtype == np.float64):
                    a = a.astype(np.float32)
                blobs.append(a)
            if blobs or keep_empty:
                out[name] = blobs
    return out


def hdf5_info(path: str | os.PathLike) -> ModelInfo:
    """Every layer group with its datasets' shapes, dtypes and sizes (values not read)."""
    layers = []
    with H5Reader(path) as r:
        for name, g in _layer_groups(r):
            blobs = []
            for i, (at, ds) in enumerate(_blob_datasets(r, g, name)):
                nbytes = r.check(ds, at, layer=name, blob=i)
                try:
                    off = ds.id.get_offset()
                except Exception:  # compact/chunked/virtual datasets have none
                    off = None
                with r.guard(at, layer=name, blob=i):
                    blobs.append(BlobInfo(i, tuple(int(d) for d in ds.shape), np.dtype(ds.dtype).name,
                                          nbytes, False, off))
            layers.append(LayerInfo(name, "", tuple(blobs)))
        size = r.size
    return ModelInfo(r.filename, "hdf5", "", tuple(layers), size)


def save_hdf5(path: str | os.PathLike, weights: dict[str, Any], *,
              progress: Callable[[int], None] | None = None) -> None:
    """Write ``{layer: [blob, ...]}`` in Caffe's HDF5 layout, atomically.

    float64 arrays stay float64 (Caffe converts on load); anything else is
    stored as float32. Layer groups track creation order so the file reads
    back in the order given.
    """
    h5py = import_h5py()
    items = [(str(name), [as_array(b, f"layer {name!r} blob {i}") for i, b in enumerate(blobs)])
             for name, blobs in weights.items()]
    for name, _ in items:
        if not name or "/" in name or name in (".", ".."):
            raise WeightsError(f"layer name {name!r} can not be an HDF5 group name", os.fspath(path))
    nblobs = sum(len(b) for _, b in items)
    expected = sum(a.nbytes for _, blobs in items for a in blobs) + H5_OVERHEAD * (len(items) + nblobs + 1)

    def build(f: Any, checkpoint: Callable[[], None]) -> None:
        data = f.create_group("data", track_order=True)
        for name, blobs in items:
            g = data.create_group(name)
            for i, a in enumerate(blobs):
                g.create_dataset(str(i), data=a if a.flags.c_contiguous else a.copy())
                checkpoint()
                if progress:
                    progress(a.nbytes)

    write_h5(path, build, expected)


# Bytes an HDF5 file spends per group or dataset beyond its values (object
# headers, B-tree and heap entries: ~1-2 KB each; counted generously).
H5_OVERHEAD = 4096


@contextlib.contextmanager
def h5_writing(path: str | os.PathLike) -> Iterator[None]:
    """h5py calls making the file for ``path``: an ``OSError`` of the HDF5 library
    (out of memory for the in-memory image) becomes an :class:`~fcn_repro.errors.OutputError`."""
    try:
        yield
    except OSError as e:
        raise OutputError(f"HDF5 library could not write it ({e}); nothing was written",
                          os.fspath(path)) from None


class _Stop(BaseException):
    """A signal arrived during an HDF5 write whose default action is to stop the run."""


class SignalsDeferred:
    """SIGINT and SIGTERM held back while an HDF5 file is made and written.

    A signal that arrives inside the HDF5 library is not lost there (h5py can
    swallow a ``KeyboardInterrupt`` raised in its C code): the handler only
    records it. :meth:`checkpoint` (called between h5py calls and between
    chunks written) then stops the write when the signal's previous action
    was to stop the run (Python's ``KeyboardInterrupt`` for SIGINT, the
    default termination for SIGTERM): the temporary file is removed by the
    atomic writer, and on leaving, the previous handlers are restored and the
    signal is raised again, so the run stops as it would have (a
    ``KeyboardInterrupt``, or death by SIGTERM: a non-zero exit either way),
    with nothing half-written. A signal with a handler of its own (a run's
    "snapshot and stop" handler) lets the write finish, then reaches that
    handler. Outside the main thread (no handlers can be set) nothing is deferred.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.pending: int | None = None
        self.previous: dict[int, Any] = {}

    def _record(self, signum: int, frame: Any) -> None:
        if self.pending is None:
            self.pending = signum

    def _stops(self, signum: int) -> bool:
        return self.previous.get(signum) in (signal.default_int_handler, signal.SIG_DFL)

    def checkpoint(self) -> None:
        """Stop the write here when a pending signal's action is to stop the run."""
        if self.pending is not None and self._stops(self.pending):
            raise _Stop(self.pending)

    def __enter__(self) -> "SignalsDeferred":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                old = signal.getsignal(s)
                if old not in (signal.SIG_IGN, None):   # None: a handler set outside Python; left alone
                    self.previous[s] = signal.signal(s, self._record)
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        for s, old in self.previous.items():
            signal.signal(s, old)
        if self.pending is not None:
            signal.raise_signal(self.pending)   # the previous handler (or the default action) runs now
        return kind is _Stop   # only reached if that handler returned (it was replaced meanwhile)


# Bytes handed to the operating system per write() of an HDF5 image (signals
# are looked at in between).
_WRITE_CHUNK = 16 << 20


def write_h5(path: str | os.PathLike, build: Callable[[Any, Callable[[], None]], None],
             expected_bytes: int) -> None:
    """Make an HDF5 file with ``build(file, checkpoint)`` and write it to ``path`` atomically.

    The file is made in memory (h5py's ``core`` driver without a backing
    store), so the HDF5 library never meets a failing disk: h5py survives no
    failed close (it can crash the process in its clean-up after one).
    Its bytes then go through :func:`fcn_repro.outputs.output_file`: a full
    disk, a quota or a file-size limit (``RLIMIT_FSIZE``) is an
    :class:`~fcn_repro.errors.OutputError` naming ``path``, with nothing left
    behind. ``build`` calls ``checkpoint()`` between objects; SIGINT and
    SIGTERM during the whole write are handled by :class:`SignalsDeferred`.
    The file costs about twice its size in memory while being written.
    """
    path = os.fspath(path)
    h5py = import_h5py()
    outputs.check_free_space(path, expected_bytes)   # before spending the memory
    with SignalsDeferred() as signals:
        with h5_writing(path):
            f = h5py.File(f"<{path} in memory {secrets.token_hex(4)}>", "w", driver="core",
                          backing_store=False)
        try:
            build(f, signals.checkpoint)   # its own exceptions pass unchanged
            with h5_writing(path):
                f.flush()   # the image is complete only after a flush
                image = memoryview(f.id.get_file_image())
        finally:
            f.close()   # no backing store: closing writes nothing, so it can not fail on the disk
        signals.checkpoint()
        with outputs.output_file(path, len(image)) as out:
            for at in range(0, len(image), _WRITE_CHUNK):
                out.write(image[at:at + _WRITE_CHUNK])
                signals.checkpoint()
