"""Weights files, whatever their format: load, save, describe.

``load_weights`` tells the formats apart by content (the HDF5 signature),
not only by name, and refuses files of another kind (a prototxt, an image,
a PyTorch pickle, ...) with an error that names the file and says what it
looks like. ``save_weights`` picks the format from the suffix.

Formats: binary ``.caffemodel`` (V1 and V2; :mod:`.caffemodel`) and Caffe
HDF5 (``.caffemodel.h5``, ``.h5``; :mod:`.hdf5`).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from fcn_repro.caffe.caffemodel import caffemodel_info, layers_from_weights, load_caffemodel, write_caffemodel
from fcn_repro.caffe.hdf5 import hdf5_info, load_hdf5, save_hdf5
from fcn_repro.caffe.weightfile import ModelInfo, check_kind, detect_format  # noqa: F401  (public here too)
from fcn_repro.errors import CaffeModelError, WeightsError

__all__ = ["load_weights", "save_weights", "weights_info", "detect_format", "check_kind",
           "WeightsError", "CaffeModelError"]

_H5_SUFFIXES = (".h5", ".hdf5", ".hdf")
_CAFFEMODEL_SUFFIXES = (".caffemodel", ".binaryproto")

def load_weights(path: str | os.PathLike, *, copy: bool = False, keep_dtype: bool = False,
                 keep_empty: bool = False) -> dict[str, list[np.ndarray]]:
    """Layer name -> list of blobs, float32 arrays in their stored shapes.

    Works for ``.caffemodel`` (V1 and V2) and Caffe HDF5 (``.caffemodel.h5``,
    ``.h5``), told apart by content. Layers come in file order (HDF5 written by
    Caffe: name order, see :mod:`.hdf5`); layers without blobs are left out
    unless ``keep_empty``. Shapes are the stored ones: a V1 InnerProduct weight
    (O, I) comes back as its legacy 4-D (1, 1, O, I).

    ``copy`` / ``keep_dtype``: see :func:`~fcn_repro.caffe.caffemodel.load_caffemodel`
    (by default caffemodel arrays are copy-on-write views of the mapped file).
    """
    path = os.fspath(path)
    kind = detect_format(path)
    if kind == "hdf5":
        return load_hdf5(path, keep_dtype=keep_dtype, keep_empty=keep_empty)
    return load_caffemodel(path, copy=copy, keep_dtype=keep_dtype, keep_empty=keep_empty)


def weights_info(path: str | os.PathLike) -> ModelInfo:
    """Per layer: name, type, and each blob's shape, dtype, bytes (values not read).

    Every stored layer is listed, also those without blobs. HDF5 files carry
    no layer types (``type`` is ``""``).
    """
    path = os.fspath(path)
    if detect_format(path) == "hdf5":
        return hdf5_info(path)
    return caffemodel_info(path)


def weights_format_for(path: str | os.PathLike) -> str:
    """The format a path's suffix asks for: ``"caffemodel"`` or ``"hdf5"``."""
    low = os.fspath(path).lower()
    if low.endswith(_H5_SUFFIXES):
        return "hdf5"
    if low.endswith(_CAFFEMODEL_SUFFIXES):
        return "caffemodel"
    raise WeightsError("unknown weights suffix: use .caffemodel, .caffemodel.h5 or .h5",
                       os.fspath(path))


def save_weights(path: str | os.PathLike, weights: dict[str, Any], types: dict[str, str] | None = None,
                 *, net_name: str = "") -> None:
    """Write ``{layer: [blob, ...]}`` atomically, format by suffix.

    ``.caffemodel``: a V2 NetParameter (name, type from ``types`` when given,
    blobs with BlobShape and packed data), loadable by Caffe. ``.h5`` /
    ``.caffemodel.h5``: Caffe's HDF5 layout. Blobs may be numpy arrays or
    anything ``np.asarray`` takes (torch tensors are detached and moved to the
    CPU); float64 stays float64, everything else is stored as float32.
    """
    fmt = weights_format_for(path)
    if fmt == "hdf5":
        save_hdf5(path, weights)
    else:
        write_caffemodel(path, layers_from_weights(weights, types), net_name)
