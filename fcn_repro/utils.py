"""Deprecated: the project's one atomic writer is :mod:`fcn_repro.outputs`.

These two names remain only for callers not yet switched (see
``grep -rn fcn_repro.utils``); new code uses :func:`fcn_repro.outputs.output_file`
and :func:`fcn_repro.outputs.output_path`, which also check the free space
and clean up the temporary files of killed runs. Delete this module once no
caller is left.
"""
from __future__ import annotations

import os
from typing import IO, ContextManager

from fcn_repro.outputs import output_file, output_path

__all__ = ["atomic_path", "atomic_write"]


def atomic_path(path: str | os.PathLike) -> ContextManager[str]:
    """:func:`fcn_repro.outputs.output_path` (size not known beforehand)."""
    return output_path(path, 0)


def atomic_write(path: str | os.PathLike, mode: str = "wb") -> ContextManager[IO]:
    """:func:`fcn_repro.outputs.output_file` (size not known beforehand)."""
    return output_file(path, 0, mode)
