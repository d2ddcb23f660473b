"""Writing output files so that nothing is ever left half-written.

Every writer of the project (weights, solver states, snapshots, reports,
prototxts, manifests, images, exports) goes through
:func:`output_path` (writers that want a file name: h5py) or
:func:`output_file` (writers that want a file object):

1. stale temporary files of an earlier run that was killed (our own naming
   pattern, next to the target, written before this process started by a
   process that is gone) are removed;
2. the free space of the target's file system is checked against the
   expected size, before anything is written: a full disk is refused with an
   :class:`~fcn_repro.errors.OutputError`, never met half-way (h5py can
   crash the process inside ``File.close()`` when the disk fills up);
3. the data go to a temporary file in the target's directory, which is
   renamed over the target only when complete (``os.replace`` is atomic on
   one file system); any failure (``OSError`` such as ENOSPC or EDQUOT, an
   exception of the writer, ``KeyboardInterrupt``) removes the temporary
   file, and the system's ``OSError``s (those with an ``errno``) become an
   ``OutputError`` naming the target; other exceptions pass unchanged.

Temporary names: ``.<target name>.<pid>.<random>.fcnpart``.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import time
from typing import IO, Iterator

from fcn_repro.errors import OutputError

__all__ = ["output_path", "output_file", "check_free_space", "clean_stale", "as_output_error", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".fcnpart"
# Room kept free beyond the expected size: file-system metadata, estimates.
_MARGIN_BYTES = 1 << 20
_MARGIN_FRACTION = 0.01

# When this process started (from /proc where there is one): temporary files
# older than that can not be from a write still running here.
try:
    with open(f"/proc/{os.getpid()}/stat", "rb") as _f:
        _ticks = int(_f.read().rsplit(b")", 1)[1].split()[19])
    with open("/proc/uptime", "rb") as _f:
        _uptime = float(_f.read().split()[0])
    _PROCESS_START = time.time() - _uptime + _ticks / os.sysconf("SC_CLK_TCK")
except (OSError, ValueError, IndexError):
    _PROCESS_START = time.time()   # this module's import: before any file it writes


def _temp_name(path: str) -> str:
    d, base = os.path.split(path)
    return os.path.join(d, f".{base}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(path: str | os.PathLike) -> list[str]:
    """Remove temporary files of earlier, killed writes of ``path``; returns their names.

    Only files of our naming pattern for this target are touched, and only
    when they are older than this process and their writer is gone.
    """
    path = os.path.abspath(os.fspath(path))
    d, base = os.path.split(path)
    pat = re.compile(r"\." + re.escape(base) + r"\.(\d+)\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX) + r"\Z")
    removed = []
    try:
        names = os.listdir(d)
    except OSError:
        return removed
    for name in names:
        m = pat.match(name)
        if not m:
            continue
        full = os.path.join(d, name)
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if st.st_mtime < _PROCESS_START and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(full)
                removed.append(full)
    return removed


def check_free_space(path: str | os.PathLike, expected_bytes: int) -> None:
    """Raise :class:`OutputError` when ``path``'s file system lacks room for ``expected_bytes``."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    try:
        free = shutil.disk_usage(d).free
    except OSError as e:
        raise OutputError(f"can not write here ({e.strerror or e})", path) from None
    need = int(expected_bytes * (1 + _MARGIN_FRACTION)) + _MARGIN_BYTES
    if free < need:
        raise OutputError(f"not enough free disk space: writing it needs about {need:,} bytes, "
                          f"{free:,} are free on {d}", path)


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def as_output_error(e: OSError, path: str | os.PathLike) -> OutputError:
    """The :class:`OutputError` for a failed write of ``path``."""
    path = os.fspath(path)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"the disk filled up while writing it ({e.strerror}); nothing was written", path)
    return OutputError(f"can not write it ({e.strerror or e}); nothing was written", path)


@contextlib.contextmanager
def output_path(path: str | os.PathLike, expected_bytes: int = 0) -> Iterator[str]:
    """A temporary name to write ``path``'s content to; renamed into place on success.

    ``expected_bytes``: the size about to be written (0 where a writer can not
    tell: then only the margin of free space is checked).

    See the module docstring for the checks and the clean-up.
    """
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OutputError("is a directory", path)
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise OutputError(f"can not create its directory ({e.strerror or e})", path) from None
    clean_stale(path)
    check_free_space(path, expected_bytes)
    tmp = _temp_name(os.path.abspath(path))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except OSError as e:
        raise as_output_error(e, path) from None
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if e.errno is None:
            raise
        raise as_output_error(e, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def output_file(path: str | os.PathLike, expected_bytes: int = 0, mode: str = "wb") -> Iterator[IO]:
    """Like :func:`output_path`, giving an open file; flushed and synced before the rename."""
    with output_path(path, expected_bytes) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
