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

from fcn_repro.caffe.caffemodel import (
    CaffeModelError, ModelInfo, WeightsError, caffemodel_info, layers_from_weights, load_caffemodel,
    write_caffemodel,
)
from fcn_repro.caffe.hdf5 import HDF5_MAGIC, hdf5_info, load_hdf5, save_hdf5

__all__ = ["load_weights", "save_weights", "weights_info", "detect_format", "check_kind",
           "WeightsError", "CaffeModelError"]

_H5_SUFFIXES = (".h5", ".hdf5", ".hdf")
_CAFFEMODEL_SUFFIXES = (".caffemodel", ".binaryproto")

# Signatures of files people hand to a weights loader by mistake.
_MAGIC = [
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"PK\x03\x04", "a zip archive (a PyTorch .pt/.pth checkpoint or a numpy .npz)"),
    (b"\x93NUMPY", "a numpy .npy array"),
    (b"\x1f\x8b", "a gzip file (decompress it first)"),
    (b"BZh", "a bzip2 file (decompress it first)"),
    (b"\xfd7zXZ\x00", "an xz file (decompress it first)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-zip archive"),
    (b"%PDF", "a PDF document"),
    (b"\x7fELF", "an executable (ELF)"),
    (b"<!DOCTYPE", "an HTML page (a failed download?)"),
    (b"<html", "an HTML page (a failed download?)"),
    (b"<?xml", "an XML document"),
]


def _looks_like(head: bytes) -> str | None:
    """A description of what ``head`` (a file's first bytes) is, when it is not weights."""
    if not head:
        return "an empty file"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6):
        return "a Python pickle (e.g. a legacy PyTorch .pt file; pickles are never loaded)"
    if head.lstrip()[:1] in (b"{", b"[") and b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "a JSON or text file"
        except UnicodeDecodeError:
            pass
    # Text: a prototxt (or other text) is printable UTF-8 with no control bytes
    # but tab/newline/return. A binary NetParameter starts with a tag byte and
    # soon holds a length byte < 0x20 or float data, so it never passes this.
    sample = head[:4096]
    if all(b in (9, 10, 13) or 32 <= b < 127 or b >= 128 for b in sample):
        try:
            text = sample.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(sample) - 4:   # a multi-byte char cut at the end is fine
                return None
            text = sample[:e.start].decode("utf-8")
        s = text.lstrip()
        if s[:1] == "#" or s[:1].isalpha() or s[:1] == "_":
            return "a text file (a text-format prototxt?), not binary weights"
        return "a text file, not binary weights"
    return None


def _read_head(path: str, n: int = 4096) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _has_hdf5_signature(path: str, head: bytes) -> bool:
    # The HDF5 superblock sits at 0, or after a user block at 512, 1024, 2048, ...
    if head.startswith(HDF5_MAGIC):
        return True
    size = os.path.getsize(path)
    off = 512
    with open(path, "rb") as f:
        while off + 8 <= size and off <= 1 << 20:
            f.seek(off)
            if f.read(8) == HDF5_MAGIC:
                return True
            off *= 2
    return False


def detect_format(path: str | os.PathLike) -> str:
    """``"hdf5"`` or ``"caffemodel"`` by content; raises :class:`WeightsError` otherwise.

    Anything that is not HDF5 and not recognisably something else is taken
    for a binary caffemodel, whose decoder then judges it.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise WeightsError("is a directory, not a weights file", path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such weights file")
    head = _read_head(path)
    if _has_hdf5_signature(path, head):
        return "hdf5"
    what = _looks_like(head)
    if what is not None:
        raise WeightsError(f"not a Caffe weights file: it looks like {what}", path, offset=0)
    return "caffemodel"


def check_kind(path: str | os.PathLike, expect: str) -> None:
    """Raise a clear :class:`WeightsError` when ``path`` is not of kind ``expect``."""
    kind = detect_format(path)
    if kind != expect:
        names = {"hdf5": "an HDF5 file (.caffemodel.h5)", "caffemodel": "a binary .caffemodel"}
        raise WeightsError(f"is {names[kind]}, not {names[expect]}", os.fspath(path), offset=0)


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
