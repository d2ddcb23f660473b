"""The memory budget: one place for the caps every reader and builder checks.

A reader checks each size a file declares (a blob's shape, an HDF5 dataset's
shape, an .npz member's header, a layer count) against the bytes the file
really has and against these caps BEFORE it allocates, and counts its own
per-record overhead too, so a small hostile file can not make the process
allocate gigabytes. A refusal is a :class:`~fcn_repro.errors.LimitError`
naming the file, what was asked, the cap and how to raise it.

=====================  ===========================  ==========================
cap                    environment variable         default
=====================  ===========================  ==========================
``read_bytes``         FCN_REPRO_MAX_READ_BYTES     8 GiB  (all arrays and
                                                    records one file's reader
                                                    may allocate)
``blob_elements``      FCN_REPRO_MAX_BLOB_ELEMENTS  2**31 (one blob when
                                                    building a net: 8 GiB in
                                                    float32)
``image_pixels``       FCN_REPRO_MAX_IMAGE_PIXELS   2**26 (one decoded image,
                                                    67 Mpixel)
``forward_bytes``      FCN_REPRO_MAX_FORWARD_BYTES  1 GiB (the live blobs of
                                                    one inference forward, as
                                                    estimated from the plan;
                                                    over it, ``infer`` and the
                                                    Predictor tile the image
                                                    instead of refusing it:
                                                    see fcn_repro.tiles)
``text_bytes``         FCN_REPRO_MAX_TEXT_BYTES     8 MiB (a prototxt or
                                                    other text input; FCN's
                                                    largest is ~20 KB)
``text_depth``         FCN_REPRO_MAX_TEXT_DEPTH     100 (message nesting in a
                                                    prototxt, protobuf's own
                                                    default recursion limit)
``records``            FCN_REPRO_MAX_RECORDS        200,000 (records one file
                                                    may hold: layers, blobs,
                                                    value runs, HDF5 objects,
                                                    archive members; each
                                                    costs ~0.5 KB of Python
                                                    objects however small it
                                                    is in the file)
``expansion``          FCN_REPRO_MAX_EXPANSION      256 (how many times the
                                                    file's size its compressed
                                                    parts may decompress to,
                                                    plus 16 MiB; the Caffe
                                                    fixtures' .npz reach 80x)
=====================  ===========================  ==========================

Why these defaults: the largest original FCN file is a ~540 MB caffemodel
(its biggest blob, VGG16's fc6 as convolution, 4096x512x7x7 float32, is
411 MB) and its solver state is about as large again; a net on 500x500 PASCAL
images with pad 100 has blobs of ~32 M elements per image (conv1, 64x698x698)
and FCN training uses batch 1-20. The caps leave an order of magnitude of
room above that and still stop a file that asks for terabytes.

Values accept a plain integer or a K/M/G/T suffix (powers of 1024):
```FCN_REPRO_MAX_READ_BYTES=32G``.

The text caps bound a prototxt's parse to ~70x its size in Python objects
(tokens are streamed, so a long text is never held as a token list);
``records`` bounds the bookkeeping a binary file can ask for (the largest
original FCN caffemodel has ~40 layers, ResNet-152 ~900). For code that means to go further::

    with fcn_repro.limits.override(read_bytes=64 << 30):
        ...                      # this thread/context only
    fcn_repro.limits.configure(image_pixels=200_000_000)   # the whole process

Files that are not regular files say nothing true about their size
(``fstat`` gives 0 for /dev/zero, a FIFO, ``<(cmd)``): text inputs (prototxts,
split lists) are read through :func:`read_capped`, which reads such a file
only up to its cap and waits at most :data:`PIPE_WAIT` seconds for each part
of it; readers that seek (weights, solver states, archives) refuse them before
opening (:func:`require_regular`). Binary weights and solver states are read
into memory (:func:`read_regular`), never memory-mapped: a mapped file that
another program truncates kills the reader with SIGBUS, while a read sees it
shrink and says so.

Environment variables are read when a cap is looked up (so a subprocess sees
its own); ``configure`` wins over them and ``override`` over both.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import re
import select
import stat
from typing import Iterator

from fcn_repro.errors import FcnReproError, LimitError

__all__ = ["Limits", "current", "override", "configure", "check", "refusal", "Budget", "ENV",
           "expansion_allowance", "read_capped", "read_regular", "require_regular"]


@dataclasses.dataclass(frozen=True)
class Limits:
    """The caps in force (see the module docstring)."""
    read_bytes: int = 8 << 30
    blob_elements: int = 1 << 31
    image_pixels: int = 1 << 26
    forward_bytes: int = 1 << 30
    text_bytes: int = 8 << 20
    text_depth: int = 100
    records: int = 200_000
    expansion: int = 256


ENV = {
    "read_bytes": "FCN_REPRO_MAX_READ_BYTES",
    "blob_elements": "FCN_REPRO_MAX_BLOB_ELEMENTS",
    "image_pixels": "FCN_REPRO_MAX_IMAGE_PIXELS",
    "forward_bytes": "FCN_REPRO_MAX_FORWARD_BYTES",
    "text_bytes": "FCN_REPRO_MAX_TEXT_BYTES",
    "text_depth": "FCN_REPRO_MAX_TEXT_DEPTH",
    "records": "FCN_REPRO_MAX_RECORDS",
    "expansion": "FCN_REPRO_MAX_EXPANSION",
}

_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_NUMBER = re.compile(r"\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)

_configured: dict[str, int] = {}
_override: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar(
    "fcn_repro_limits", default=None)


def _parse(name: str, text: str) -> int:
    m = _NUMBER.fullmatch(text)
    if not m or int(m.group(1)) <= 0:
        raise FcnReproError(f"{ENV[name]}={text!r}: expected a positive integer, "
                            "optionally with a K/M/G/T suffix")
    return int(m.group(1)) * _SUFFIX[m.group(2).upper()]


def _valid(kw: dict[str, int]) -> dict[str, int]:
    out = {}
    for k, v in kw.items():
        if k not in ENV:
            raise TypeError(f"unknown limit {k!r}; known: {', '.join(ENV)}")
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise FcnReproError(f"limit {k}={v!r}: expected a positive integer")
        out[k] = int(v)
    return out


def current() -> Limits:
    """The caps in force here: defaults < environment < configure() < override()."""
    values: dict[str, int] = {}
    for name, var in ENV.items():
        text = os.environ.get(var)
        if text:
            values[name] = _parse(name, text)
    values.update(_configured)
    values.update(_override.get() or {})
    return Limits(**values)


@contextlib.contextmanager
def override(**caps: int) -> Iterator[Limits]:
    """Raise (or lower) caps inside a ``with`` block, for this context only."""
    new = dict(_override.get() or {})
    new.update(_valid(caps))
    token = _override.set(new)
    try:
        yield current()
    finally:
        _override.reset(token)


def configure(**caps: int) -> Limits:
    """Set caps for the whole process (over the environment); ``None`` clears one."""
    for k, v in caps.items():
        if v is None:
            if k not in ENV:
                raise TypeError(f"unknown limit {k!r}; known: {', '.join(ENV)}")
            _configured.pop(k, None)
        else:
            _configured.update(_valid({k: v}))
    return current()


EXPANSION_FLOOR = 16 << 20   # a small file may always unpack to this much (a few MB of zeros)


def expansion_allowance(file_bytes: int) -> int:
    """Bytes the compressed parts of a ``file_bytes``-byte file may decompress to, in all."""
    return current().expansion * max(int(file_bytes), 0) + EXPANSION_FLOOR


def _size(n: int) -> str:
    for unit, step in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= step:
            return f"{n / step:.1f} {unit}"
    return f"{n} bytes"


def refusal(cap: str, asked: int, limit: int, what: str) -> str:
    """The message of a refusal: what needs how much, the cap, and how to raise it."""
    amount = _size(asked) if cap in ("read_bytes", "text_bytes", "forward_bytes") else f"{asked:,}"
    cap_txt = _size(limit) if cap in ("read_bytes", "text_bytes", "forward_bytes") else f"{limit:,}"
    return (f"{what} needs {amount}, over the limit of {cap_txt} ({cap}; raise it with "
            f"{ENV[cap]}=N or fcn_repro.limits.override({cap}=N) if you mean it)")


def check(cap: str, asked: int, what: str, filename: str | os.PathLike | None = None, *,
          error: type[FcnReproError] = LimitError, **where) -> int:
    """Refuse ``asked`` (bytes, elements, pixels, depth) over the cap ``cap``.

    ``what`` says what is asked for ("blob of shape (4096, 512, 7, 7)");
    ``error`` is the error class to raise (a reader's own error, so callers
    that catch the format's error see it); ``where`` are its location
    keywords (offset, layer, blob, line, ...). Returns ``asked``.
    """
    limit = getattr(current(), cap)
    if asked > limit:
        raise error(refusal(cap, asked, limit, what), filename, **where)
    return asked


class Budget:
    """A running total of what one read may allocate, against ``read_bytes``.

    A reader ``charge``s every allocation it is about to make (array bytes
    and its own per-record overhead) before making it.
    """

    def __init__(self, filename: str | os.PathLike | None, *, error: type[FcnReproError] = LimitError,
                 cap: str = "read_bytes"):
        self.filename, self.error, self.cap = filename, error, cap
        self.limit = getattr(current(), cap)
        self.used = 0

    def charge(self, nbytes: int, what: str, **where) -> None:
        """Count ``nbytes`` more; raise ``error`` if the total goes over the cap."""
        total = self.used + int(nbytes)
        if total > self.limit:
            raise self.error(refusal(self.cap, total, self.limit,
                                      f"{what} (reading this file so far)"),
                             self.filename, **where)
        self.used = total


def require_regular(path: str | os.PathLike, what: str = "file", *,
                    error: type[FcnReproError] = FcnReproError, **where) -> os.stat_result:
    """Refuse (``error``) a ``path`` that is not a regular file (a FIFO, a device, a socket), before
    it is opened: readers that map or seek a file (weights, archives) need one of known size, and
    opening a FIFO would wait for a writer. A missing file raises FileNotFoundError as ``os.stat``."""
    st = os.stat(path)
    _regular(st, path, what, error, where)
    return st


def _regular(st: os.stat_result, path, what: str, error: type[FcnReproError], where: dict) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a pipe (FIFO)" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        article = "an" if what[:1].lower() in "aeiou" else "a"
        raise error(f"is {kind}: {article} {what} must be a regular file (it is read to its size or seeked, not "
                    "streamed)", path, **where)


def read_regular(path: str | os.PathLike, what: str = "file", *, error: type[FcnReproError] = FcnReproError,
                 **where) -> bytearray:
    """The whole regular file ``path`` in a new (writable) buffer, checked against ``read_bytes``.

    Not a pipe or device (:func:`require_regular`, checked again on the open
    descriptor, which is opened without waiting for a FIFO's writer). A file
    that shrinks while it is read (another program truncating or rewriting
    it) is ``error``, never a crash: readers use this instead of a memory
    mapping, whose pages vanish under a truncation (SIGBUS).
    """
    require_regular(path, what, error=error, **where)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        _regular(st, path, what, error, where)   # again: it may have been replaced since the check
        check("read_bytes", st.st_size, f"a {what} of this size", path, error=error, **where)
        os.set_blocking(fd, True)
        buf = bytearray(st.st_size)
        view, got = memoryview(buf), 0
        while got < st.st_size:
            n = os.readv(fd, [view[got:]])
            if not n:
                raise error(f"the file shrank from {st.st_size:,} to {got:,} bytes while it was read (another "
                            "program is writing it?)", path, **where)
            got += n
        view.release()
    finally:
        os.close(fd)
    return buf


#: seconds a reader waits for a pipe or device to give its next bytes (a FIFO nobody writes to, a
#: command that stops producing) before refusing it
PIPE_WAIT = 60.0


def read_capped(path: str | os.PathLike, what: str = "text", *, cap: str = "text_bytes",
                error: type[FcnReproError] = FcnReproError, **where) -> bytes:
    """The bytes of the file ``path``, refused (``error``) past the cap ``cap``.

    A regular file's size is checked before reading; anything else (a pipe,
    ``<(cmd)``, /dev/zero, a character device: ``fstat`` says 0 for them) is
    read only up to the cap and one byte more, whatever it claims, and each
    wait for more bytes is bounded by :data:`PIPE_WAIT` (the open of a FIFO
    does not wait for a writer).
    """
    limit = getattr(current(), cap)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            check(cap, st.st_size, f"{what} of this size", path, error=error, **where)
            os.set_blocking(fd, True)
            with os.fdopen(os.dup(fd), "rb") as f:   # the declared size (checked) and one byte more:
                data = f.read(min(st.st_size, limit) + 1)   # growth past the cap is still seen
        else:
            data = _read_stream(fd, limit + 1, path, what, error, where)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise error(f"{what} longer than the limit of {_size(limit)} (not a regular file: read up to the limit; "
                    f"{cap}: raise it with {ENV[cap]}=N or fcn_repro.limits.override({cap}=N) if you mean it)",
                    path, **where)
    return data


def _read_stream(fd: int, most: int, path, what: str, error: type[FcnReproError], where: dict) -> bytes:
    """At most ``most`` bytes of a non-blocking pipe or device, each wait bounded by PIPE_WAIT."""
    chunks, n = [], 0
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while n < most:
        if not poller.poll(PIPE_WAIT * 1000):
            raise error(f"{what}: nothing {'more ' if n else ''}came from it within {PIPE_WAIT:g} s (a pipe or "
                        "device that does not end)", path, **where)
        try:
            b = os.read(fd, min(1 << 20, most - n))
        except BlockingIOError:
            continue
        if not b:
            break
        chunks.append(b)
        n += len(b)
    return b"".join(chunks)
