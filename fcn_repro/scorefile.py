"""Class scores written to disk block by block: a (C, H, W) volume never held in memory whole.

``infer --save-scores`` writes each image's scores as ``<name><ending>``, the
ending naming the format (:data:`FORMATS`):

==============  ==============================================================
``.npy``        (C, H, W) float32, NumPy's .npy (the default)
``.f16.npy``    (C, H, W) float16 (half the size; scores keep ~3 significant
                digits, enough for the argmax except at near ties)
``.npz``        float32, zip-deflated .npz with the one array ``scores``
``.f16.npz``    float16, zip-deflated .npz with the one array ``scores``
==============  ==============================================================

A :class:`ScoreFile` is the writable target the tiled forward
(:func:`fcn_repro.streaming.run_image`) fills tile by tile or band by band: an .npy file next to
the output, written with positioned writes (so the process keeps no page of
it), under a temporary name. :meth:`ScoreFile.commit` puts it in place
through :mod:`fcn_repro.outputs` (atomic: a reader sees the whole file or
none); for .npz the raw volume is streamed into the zip member in chunks.
An array already in memory (an image run whole) goes through
:func:`save_scores` the same way.
"""
from __future__ import annotations

import contextlib
import io
import os
import weakref
import zipfile
from pathlib import Path
from typing import Any, Tuple, Union

import numpy as np

from fcn_repro.errors import FcnReproError
from fcn_repro.outputs import check_free_space, clean_stale, output_file, output_path, temp_name

__all__ = ["FORMATS", "ScoreFile", "save_scores", "format_dtype"]

#: file ending -> (dtype, compressed)
FORMATS = {".npy": (np.float32, False), ".f16.npy": (np.float16, False),
           ".npz": (np.float32, True), ".f16.npz": (np.float16, True)}

_CHUNK = 16 << 20   # bytes read per step when streaming the raw volume into a zip


def format_dtype(ending: str):
    """The dtype of a score format (its file ending, see :data:`FORMATS`)."""
    if ending not in FORMATS:
        raise FcnReproError(f"unknown scores format {ending!r}; known: {', '.join(FORMATS)}")
    return FORMATS[ending][0]


def _header(shape: Tuple[int, ...], dtype) -> bytes:
    """The .npy header (format 1.0) of a C-order array."""
    buf = io.BytesIO()
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(buf, d)
    return buf.getvalue()


class ScoreFile:
    """A (C, H, W) score volume on disk, written block by block (``f[:, y0:y1, x0:x1] = block``).

    ``directory``: where the temporary file goes (the output directory, so
    the final rename stays on one file system). ``ending``: the format it
    will be committed as. Use as a context manager or call :meth:`discard`;
    :meth:`commit` moves it into place.
    """

    def __init__(self, directory: Union[str, os.PathLike], shape: Tuple[int, int, int], ending: str = ".npy"):
        self.shape = tuple(int(v) for v in shape)
        self.ending = ending
        self.dtype = np.dtype(format_dtype(ending))
        self.header = _header(self.shape, self.dtype)
        nbytes = len(self.header) + int(np.prod(self.shape)) * self.dtype.itemsize
        d = os.fspath(directory)
        os.makedirs(d, exist_ok=True)
        # the temporary name follows fcn_repro.outputs' pattern for a target "scores" in this
        # directory, so a killed run's leftovers are removed by the next one
        clean_stale(os.path.join(d, "scores"))
        check_free_space(os.path.join(d, "scores"), nbytes)
        self.path = temp_name(os.path.join(d, "scores"))   # pid and start time: see clean_stale
        self._f = open(self.path, "x+b")
        # never committed (an error, an interrupt): removed when dropped or at exit
        self._finalizer = weakref.finalize(self, _remove, self._f, self.path)
        try:
            self._f.write(self.header)
            self._f.truncate(nbytes)
        except BaseException:
            self.discard()
            raise

    def __setitem__(self, index, block) -> None:
        if not (isinstance(index, tuple) and len(index) == 3 and index[0] == slice(None)):
            raise TypeError("ScoreFile takes blocks as f[:, rows, cols] = block")
        _, H, W = self.shape
        ys, xs = (range(*s.indices(n)) for s, n in zip(index[1:], (H, W)))
        if ys.step != 1 or xs.step != 1:
            raise TypeError("ScoreFile takes contiguous blocks")
        b = np.ascontiguousarray(block, dtype=self.dtype)
        if b.shape != (self.shape[0], len(ys), len(xs)):
            raise ValueError(f"block of shape {b.shape} for a window of {(self.shape[0], len(ys), len(xs))}")
        item, base, fd = self.dtype.itemsize, len(self.header), self._f.fileno()
        full = len(xs) == W
        for c in range(self.shape[0]):
            if full:   # whole rows: one write per channel
                os.pwrite(fd, b[c].tobytes(), base + ((c * H + ys.start) * W) * item)
                continue
            for i, y in enumerate(ys):
                os.pwrite(fd, b[c, i].tobytes(), base + ((c * H + y) * W + xs.start) * item)

    def read(self) -> np.ndarray:
        """The whole volume (for tests and small images; reads it into memory)."""
        self._f.flush()
        return np.load(self.path)

    def commit(self, path: Union[str, os.PathLike]) -> Path:
        """Put the scores in place as ``path`` (atomically, through fcn_repro.outputs); returns it."""
        path = Path(path)
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            if FORMATS[self.ending][1]:
                with output_file(path, os.path.getsize(self.path)) as out, open(self.path, "rb") as raw:
                    _zip_stream(raw, out)
            else:
                with output_path(path) as tmp:
                    os.replace(self.path, tmp)
        finally:
            self.discard()
        return path

    def discard(self) -> None:
        """Close and remove the temporary file (nothing is written)."""
        self._finalizer()

    def __enter__(self) -> "ScoreFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.discard()

    def __repr__(self) -> str:
        return f"ScoreFile(shape={self.shape}, {self.ending})"


def _remove(f, path: str) -> None:
    with contextlib.suppress(OSError):
        f.close()
    with contextlib.suppress(OSError):
        os.unlink(path)


def _zip_stream(raw, out) -> None:
    """A .npz holding the .npy bytes of ``raw`` as member ``scores.npy``, deflated, in chunks."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as z:
        with z.open("scores.npy", "w", force_zip64=True) as member:
            while True:
                chunk = raw.read(_CHUNK)
                if not chunk:
                    break
                member.write(chunk)


def save_scores(scores: Union[np.ndarray, ScoreFile], path: Union[str, os.PathLike], ending: str = ".npy") -> Path:
    """Write a (C, H, W) score volume as ``path`` in the format ``ending`` (a ScoreFile: committed)."""
    if isinstance(scores, ScoreFile):
        return scores.commit(path)
    a = np.ascontiguousarray(scores, dtype=format_dtype(ending))
    if FORMATS[ending][1]:
        with output_file(path, a.nbytes + 4096) as f:
            np.savez_compressed(f, scores=a)
    else:
        with output_file(path, a.nbytes + 4096) as f:
            np.save(f, a)
    return Path(path)
