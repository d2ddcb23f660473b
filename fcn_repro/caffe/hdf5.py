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
``keep_dtype=True``, as in :mod:`fcn_repro.caffe.caffemodel`.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator

import numpy as np

from fcn_repro import limits
from fcn_repro.caffe.weightfile import (  # noqa: F401  (HDF5_MAGIC re-exported)
    HDF5_MAGIC, BlobInfo, LayerInfo, ModelInfo, as_array, is_blob_number)
from fcn_repro.errors import HDF5WeightsError, OutputError, WeightsError
from fcn_repro.outputs import output_path

__all__ = ["HDF5WeightsError", "load_hdf5", "save_hdf5", "hdf5_info"]


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
            return [(k, group.get(k, getlink=False)) for k in names]

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
        if "data" not in r.file:
            raise r.error("no /data group: not Caffe HDF5 weights (Net::ToHDF5 layout)", "/")
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
    with output_path(path, expected) as tmp:
        with h5_writing(path):
            f = h5py.File(tmp, "w")
        try:
            with h5_writing(path):
                data = f.create_group("data", track_order=True)
            for name, blobs in items:
                with h5_writing(path):
                    g = data.create_group(name)
                for i, a in enumerate(blobs):
                    with h5_writing(path):
                        g.create_dataset(str(i), data=a if a.flags.c_contiguous else a.copy())
                    if progress:
                        progress(a.nbytes)
        finally:
            with h5_writing(path):
                f.close()


# Bytes an HDF5 file spends per group or dataset beyond its values (object
# headers, B-tree and heap entries: ~1-2 KB each; counted generously).
H5_OVERHEAD = 4096


@contextlib.contextmanager
def h5_writing(path: str | os.PathLike) -> Iterator[None]:
    """h5py calls writing ``path``: an ``OSError`` of the HDF5 library (a full
    disk, a quota) becomes an :class:`~fcn_repro.errors.OutputError`."""
    try:
        yield
    except OSError as e:
        raise OutputError(f"HDF5 library could not write it ({e}); nothing was written",
                          os.fspath(path)) from None
