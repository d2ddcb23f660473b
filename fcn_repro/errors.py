"""The project's error family.

Every refusal of an input (a file, a value in a file, a size over the memory
budget, an output that can not be written) is a :class:`FcnReproError`, a
``ValueError``, so callers catch one type and CLIs print one ``error:`` line.

An error carries where it happened as attributes and renders them in its
message in one fixed form::

    FILE[:LINE[:COL]][: byte OFFSET]: [layer 'NAME' [blob I] [field 'F']: ]REASON

``reason`` is the message without the location. Subclasses add nothing but a
name (so ``except CaffeModelError`` still selects a format) or a location
field of their own (``HDF5WeightsError.h5path``). Errors pickle with their
fields (multiprocessing workers re-raise them in the parent).

This module imports nothing of the project, so any module may import it.
"""
from __future__ import annotations

import os
from typing import Any

__all__ = ["FcnReproError", "LimitError", "OutputError", "PrototxtError", "WeightsError",
           "CaffeModelError", "HDF5WeightsError", "add_context", "context_of"]


def add_context(e: BaseException, note: str) -> BaseException:
    """Add where ``e`` happened (a layer, a file) to it as a note, keeping its type.

    Python 3.11+ prints notes under the traceback (``BaseException.add_note``);
    on 3.10 the note is kept in ``__notes__`` all the same, and
    :func:`context_of` reads it on every version.
    """
    if hasattr(e, "add_note"):
        e.add_note(note)
    else:   # Python 3.10
        e.__notes__ = [*getattr(e, "__notes__", []), note]
    return e


def context_of(e: BaseException) -> list[str]:
    """The notes :func:`add_context` added to ``e`` (oldest first)."""
    return [str(n) for n in getattr(e, "__notes__", ())]


class FcnReproError(ValueError):
    """An input or output the project refuses; the message names where.

    ``filename`` (``None`` where there is no file), ``offset`` (byte offset),
    ``line``/``col`` (1-based text position), ``layer`` (name), ``blob``
    (index) and ``field`` (a parameter name) are attributes; ``reason`` is
    the message without them.
    """

    def __init__(self, reason: str, filename: str | os.PathLike | None = None, *,
                 offset: int | None = None, layer: str | None = None, blob: int | None = None,
                 line: int | None = None, col: int | None = None, field: str | None = None):
        self.reason = str(reason)
        self.filename = None if filename is None else os.fspath(filename)
        self.offset, self.layer, self.blob = offset, layer, blob
        self.line, self.col, self.field = line, col, field
        super().__init__(self._render())

    def _render(self) -> str:
        parts = []
        if self.filename is not None:
            where = str(self.filename)
            if self.line is not None:
                where += f":{self.line}"
                if self.col is not None:
                    where += f":{self.col}"
            parts.append(where)
        if self.offset is not None:
            parts.append(f"byte {self.offset}")
        ctx = []
        if self.layer is not None:
            ctx.append(f"layer {self.layer!r}")
        if self.blob is not None:
            ctx.append(f"blob {self.blob}")
        if self.field is not None:
            ctx.append(f"field {self.field!r}")
        if ctx:
            parts.append(" ".join(ctx))
        parts.append(self.reason)
        return ": ".join(parts)

    def __str__(self) -> str:   # the message (not OSError's "[Errno ...]" form in a subclass that is also one)
        return str(self.args[0]) if self.args else self.reason

    def _fields(self) -> dict[str, Any]:
        return {"offset": self.offset, "layer": self.layer, "blob": self.blob,
                "line": self.line, "col": self.col, "field": self.field}

    def __reduce__(self):  # pickling with keyword fields (multiprocessing)
        return (_rebuild, (type(self), self.reason, self.filename, self.__dict__.copy()))


def _rebuild(cls, reason, filename, state):
    # a subclass that is also an OSError (a missing file) is made by OSError's __new__
    err = (OSError if issubclass(cls, OSError) else ValueError).__new__(cls)
    ValueError.__init__(err, "")
    err.__dict__.update(state)
    err.reason, err.filename = reason, filename   # OSError keeps filename outside __dict__
    err.args = (err._render(),)
    return err


class LimitError(FcnReproError):
    """A declared size over the memory budget (see :mod:`fcn_repro.limits`)."""


class OutputError(FcnReproError):
    """An output that can not be written (unwritable path, full disk); nothing is left half-written."""


# ------------------------------------------------------------ format errors
# They live here (not in the format modules) so that every format module, the
# schema and the builder can raise them without importing each other.

class PrototxtError(FcnReproError):
    """A text-format (prototxt) error; the message names file:line:column (and layer, field where known)."""

    def __init__(self, msg: str, filename: str = "<text>", line: int = 0, col: int = 0, **where):
        super().__init__(msg, filename, line=line, col=col, **where)


class WeightsError(FcnReproError):
    """A weights file that can not be read (or written) as asked.

    ``filename``, and where they apply ``offset`` (byte offset), ``layer`` and
    ``blob`` (index), are attributes; ``reason`` is the message without them.
    """

    def __init__(self, reason: str, filename: str = "<bytes>", **where):
        super().__init__(reason, filename, **where)


class CaffeModelError(WeightsError):
    """A binary .caffemodel (or .solverstate) that is truncated, corrupt or not one."""


class HDF5WeightsError(WeightsError):
    """An HDF5 file that is not in Caffe's layout, or can not be read.

    ``.h5path`` names the HDF5 object (``/data/conv1_1/0``) where it applies.
    """

    def __init__(self, reason: str, filename: str = "<h5>", *, h5path: str | None = None, **where):
        self.h5path = h5path
        if h5path:
            reason = f"{h5path}: {reason}"
        super().__init__(reason, filename, **where)
