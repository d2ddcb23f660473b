"""Reading numpy ``.npz`` archives within the memory budget.

``np.load`` trusts each member's ``.npy`` header: a 4 MB archive of
compressed zeros can declare (and get) gigabytes, and a member of dtype
``object`` needs pickle. :func:`read_npz` reads each member's header first
and refuses, naming the file and member, before anything is allocated:

* a member that is not a ``.npy`` array, or holds Python objects (pickles
  are never loaded);
* a member whose declared array needs more bytes than the archive says the
  member holds (truncated or lying header);
* compressed members that together expand to more than
  ``limits.expansion_allowance`` of the archive's size;
* archives with more than ``limits.records`` members, or whose arrays
  together exceed ``limits.read_bytes``.

A corrupt archive (bad zip structure, bad CRC, truncated stream) is an
:class:`NpzError` too, never ``zipfile.BadZipFile``, ``EOFError`` or
``zlib.error``. Used by the solver state (``train --resume``), ``train
--feed`` and ``compare``.
"""
from __future__ import annotations

import os
import zipfile
import zlib
from typing import Iterable

import numpy as np

from fcn_repro import limits
from fcn_repro.errors import FcnReproError

__all__ = ["NpzError", "read_npz", "npz_members"]


class NpzError(FcnReproError):
    """A ``.npz`` archive that is corrupt, hostile or not what was expected; names file and member."""


def _header(f, filename: str, member: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            return fmt.read_array_header_1_0(f)
        if version == (2, 0):
            return fmt.read_array_header_2_0(f)
        raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, EOFError, OSError, zlib.error, SyntaxError, TypeError) as e:
        raise NpzError(f"member {member!r}: not a readable .npy array ({e})", filename) from None


def npz_members(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Member name -> (shape, dtype) from the headers only (no array is read)."""
    return {k: (shape, dtype) for k, (shape, dtype, _) in _scan(os.fspath(path)).items()}


def _scan(filename: str) -> dict[str, tuple[tuple[int, ...], np.dtype, zipfile.ZipInfo]]:
    out: dict[str, tuple[tuple[int, ...], np.dtype, zipfile.ZipInfo]] = {}
    limits.require_regular(filename, ".npz archive", error=NpzError)
    try:
        zf = zipfile.ZipFile(filename)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise NpzError(f"not a readable .npz (zip) archive ({e})", filename) from None
    size = os.path.getsize(filename)
    with zf:
        infos = zf.infolist()
        limits.check("records", len(infos), "an archive of this many members", filename, error=NpzError)
        packed = 0
        budget = limits.Budget(filename, error=NpzError)
        allowance = limits.expansion_allowance(size)
        for info in infos:
            name = info.filename
            key = name[:-4] if name.endswith(".npy") else name
            if info.is_dir():
                continue
            if info.compress_size > size or (info.compress_type == zipfile.ZIP_STORED
                                             and info.file_size != info.compress_size):
                raise NpzError(f"member {name!r}: its sizes in the zip directory ({info.compress_size} "
                               f"stored, {info.file_size} unpacked) do not fit the {size}-byte archive",
                               filename)
            try:
                with zf.open(info) as f:
                    shape, _fortran, dtype = _header(f, filename, name)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError) as e:
                raise NpzError(f"member {name!r}: can not be read ({e})", filename) from None
            if dtype.hasobject:
                raise NpzError(f"member {name!r} holds Python objects (dtype {dtype}); pickles are never "
                               "loaded", filename)
            count = 1
            for d in shape:
                count *= int(d)
            nbytes = count * dtype.itemsize
            if nbytes > info.file_size:
                raise NpzError(f"member {name!r} declares shape {shape} {dtype} ({nbytes} bytes) but holds "
                               f"only {info.file_size} bytes: truncated or corrupt", filename)
            if info.compress_type != zipfile.ZIP_STORED:
                packed += nbytes
                if packed > allowance:
                    raise NpzError(f"compressed members up to {name!r} (shape {shape} {dtype}) unpack to "
                                   f"{packed:,} bytes from a {size:,}-byte archive, over the limit of "
                                   f"{allowance:,} (expansion; raise it with {limits.ENV['expansion']}=N "
                                   "if you mean it)", filename)
            budget.charge(nbytes, f"the arrays up to member {name!r}")
            if key in out:
                raise NpzError(f"member {key!r} appears twice", filename)
            out[key] = (tuple(int(d) for d in shape), dtype, info)
    return out


def read_npz(path: str | os.PathLike, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (all, or only ``keys``), each checked before it is read.

    Raises :class:`NpzError` naming the file and member (see the module
    docstring); a missing file is ``FileNotFoundError``; a requested key the
    archive lacks is an :class:`NpzError`.
    """
    filename = os.fspath(path)
    members = _scan(filename)
    want = list(members) if keys is None else list(keys)
    for k in want:
        if k not in members:
            raise NpzError(f"no member {k!r} (it has {', '.join(sorted(members)) or 'none'})", filename)
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(filename) as zf:
        for k in want:
            info = members[k][2]
            try:
                with zf.open(info) as f:
                    arr = np.lib.format.read_array(f, allow_pickle=False)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error, RuntimeError) as e:
                raise NpzError(f"member {info.filename!r}: can not be read ({e})", filename) from None
            if arr.shape != members[k][0] or arr.dtype != members[k][1]:
                raise NpzError(f"member {info.filename!r} changed while being read", filename)
            out[k] = arr
    return out
