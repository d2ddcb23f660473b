"""What a weights file is, before any reader decodes it.

* its kind by content: :func:`detect_format` (HDF5 signature, else a binary
  protobuf unless the first bytes say it is something else: an image, an
  archive, a pickle, a text file, ...), :func:`check_kind`;
* the records every reader returns to describe a file without its values
  (:class:`BlobInfo`, :class:`LayerInfo`, :class:`ModelInfo`);
* :func:`as_array`, how every writer takes a blob (numpy, torch, lists).

The readers (:mod:`.caffemodel`, :mod:`.hdf5`) import this module; it
imports none of them.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from fcn_repro import limits
from fcn_repro.errors import WeightsError

__all__ = ["BlobInfo", "LayerInfo", "ModelInfo", "as_array", "detect_format", "check_kind",
           "looks_like", "HDF5_MAGIC"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


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


def as_array(x: Any, where: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):   # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype == np.float64:
        return a
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{where}: cannot store {a.dtype} values as a Caffe blob")
    return a.astype(np.float32, copy=False)


# ------------------------------------------------------------ format by content

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


def looks_like(head: bytes) -> str | None:
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
    limits.require_regular(path, "weights file", error=WeightsError)   # a FIFO would block the open
    head = _read_head(path)
    if _has_hdf5_signature(path, head):
        return "hdf5"
    what = looks_like(head)
    if what is not None:
        raise WeightsError(f"not a Caffe weights file: it looks like {what}", path, offset=0)
    return "caffemodel"


def check_kind(path: str | os.PathLike, expect: str) -> None:
    """Raise a clear :class:`WeightsError` when ``path`` is not of kind ``expect``."""
    kind = detect_format(path)
    if kind != expect:
        names = {"hdf5": "an HDF5 file (.caffemodel.h5)", "caffemodel": "a binary .caffemodel"}
        raise WeightsError(f"is {names[kind]}, not {names[expect]}", os.fspath(path), offset=0)


def is_blob_number(key: str) -> bool:
    """Whether ``key`` names a blob as Caffe's HDF5 writers number them: 0, 1, ... (no sign, no leading zero)."""
    return key.isdigit() and (key == "0" or not key.startswith("0"))
