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

import os
from typing import Any, Callable

import numpy as np

from fcn_repro.caffe.weightfile import HDF5_MAGIC, BlobInfo, LayerInfo, ModelInfo, as_array  # noqa: F401
from fcn_repro.errors import HDF5WeightsError, WeightsError
from fcn_repro.utils import atomic_path

__all__ = ["HDF5WeightsError", "load_hdf5", "save_hdf5", "hdf5_info"]


def _h5py():
    import h5py  # imported lazily: it costs memory and time the binary path does not need
    return h5py


def _open(path: str) -> Any:
    h5py = _h5py()
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise HDF5WeightsError(f"HDF5 library can not open it ({e})", path) from None


def _layer_groups(f: Any, filename: str) -> list[tuple[str, Any]]:
    h5py = _h5py()
    if "data" not in f:
        raise HDF5WeightsError("no /data group: not Caffe HDF5 weights (Net::ToHDF5 layout)",
                               filename, h5path="/")
    data = f["data"]
    if not isinstance(data, h5py.Group):
        raise HDF5WeightsError("is a dataset, expected a group of layers", filename, h5path="/data")
    out = []
    # keys() follows creation order when the group tracks it, else name order
    for name in data.keys():
        g = data.get(name, getlink=False)
        if not isinstance(g, h5py.Group):
            raise HDF5WeightsError("expected a group (one per layer)", filename, h5path=f"/data/{name}")
        out.append((name, g))
    return out


def _blob_datasets(g: Any, name: str, filename: str) -> list[Any]:
    h5py = _h5py()
    keys = list(g.keys())
    for k in keys:
        if not (k.isdigit() and (k == "0" or not k.startswith("0"))):
            raise HDF5WeightsError("blob datasets must be named 0, 1, ...", filename,
                                   h5path=f"/data/{name}/{k}", layer=name)
    idx = sorted(int(k) for k in keys)
    if idx != list(range(len(idx))):
        raise HDF5WeightsError(f"blob datasets {idx} are not 0..{len(idx) - 1}", filename,
                               h5path=f"/data/{name}", layer=name)
    out = []
    for i in idx:
        ds = g[str(i)]
        if not isinstance(ds, h5py.Dataset):
            raise HDF5WeightsError("expected a dataset", filename, h5path=f"/data/{name}/{i}",
                                   layer=name, blob=i)
        if ds.dtype.kind != "f":
            # hdf5_load_nd_dataset: "Expected float or double data"
            raise HDF5WeightsError(f"dataset holds {ds.dtype}, expected float or double data",
                                   filename, h5path=f"/data/{name}/{i}", layer=name, blob=i)
        if ds.ndim > 32:
            raise HDF5WeightsError(f"{ds.ndim} axes, Caffe allows at most 32", filename,
                                   h5path=f"/data/{name}/{i}", layer=name, blob=i)
        _check_size(ds, filename, f"/data/{name}/{i}", name, i)
        out.append(ds)
    return out


def _check_size(ds: Any, filename: str, h5path: str, layer: str, blob: int) -> None:
    """Refuse a dataset whose values can not be in the file.

    HDF5 lets a dataset declare any shape and return fill values for storage
    that was never written, so a small hostile file could ask for terabytes.
    An unfiltered dataset's values must fit in the file; a compressed one may
    expand, but not beyond a generous 256x (Caffe never compresses).
    """
    nbytes = int(ds.size) * ds.dtype.itemsize
    size = os.path.getsize(filename)
    filtered = bool(ds.id.get_create_plist().get_nfilters()) if ds.chunks else False
    limit = size * 256 if filtered else size
    if nbytes > limit:
        raise HDF5WeightsError(f"dataset of shape {ds.shape} needs {nbytes} bytes, more than "
                               f"{'256x ' if filtered else ''}the file's {size}: corrupt or hostile",
                               filename, h5path=h5path, layer=layer, blob=blob)


def load_hdf5(path: str | os.PathLike, *, keep_dtype: bool = False,
              keep_empty: bool = False) -> dict[str, list[np.ndarray]]:
    """Layer name -> blobs (float32 arrays, dataset shapes) from Caffe HDF5 weights.

    ``keep_empty`` also lists layers with no datasets (Caffe writes a group
    for every layer).
    """
    filename = os.fspath(path)
    out: dict[str, list[np.ndarray]] = {}
    with _open(filename) as f:
        for name, g in _layer_groups(f, filename):
            blobs = []
            for i, ds in enumerate(_blob_datasets(g, name, filename)):
                try:
                    a = ds[()]
                except (OSError, ValueError, TypeError) as e:
                    raise HDF5WeightsError(f"can not read values ({e})", filename,
                                           h5path=f"/data/{name}/{i}", layer=name, blob=i) from None
                a = np.asarray(a)
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
    filename = os.fspath(path)
    layers = []
    with _open(filename) as f:
        for name, g in _layer_groups(f, filename):
            blobs = []
            for i, ds in enumerate(_blob_datasets(g, name, filename)):
                try:
                    off = ds.id.get_offset()
                except Exception:  # compact/chunked/virtual datasets have none
                    off = None
                blobs.append(BlobInfo(i, tuple(int(d) for d in ds.shape), np.dtype(ds.dtype).name,
                                      int(ds.size) * ds.dtype.itemsize, False, off))
            layers.append(LayerInfo(name, "", tuple(blobs)))
    return ModelInfo(filename, "hdf5", "", tuple(layers), os.path.getsize(filename))


def save_hdf5(path: str | os.PathLike, weights: dict[str, Any], *,
              progress: Callable[[int], None] | None = None) -> None:
    """Write ``{layer: [blob, ...]}`` in Caffe's HDF5 layout, atomically.

    float64 arrays stay float64 (Caffe converts on load); anything else is
    stored as float32. Layer groups track creation order so the file reads
    back in the order given.
    """
    h5py = _h5py()
    items = [(str(name), [as_array(b, f"layer {name!r} blob {i}") for i, b in enumerate(blobs)])
             for name, blobs in weights.items()]
    for name, _ in items:
        if not name or "/" in name or name in (".", ".."):
            raise WeightsError(f"layer name {name!r} can not be an HDF5 group name", os.fspath(path))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data", track_order=True)
            for name, blobs in items:
                g = data.create_group(name)
                for i, a in enumerate(blobs):
                    g.create_dataset(str(i), data=a if a.flags.c_contiguous else a.copy())
                    if progress:
                        progress(a.nbytes)
