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

Temporary names: ``.<target name>.<pid>-<start>.<random>.fcnpart``, where
``<start>`` is when the writing process started (clock ticks since boot, from
/proc): a temporary file is stale when its writer is gone, and a process that
later got the same pid (a recycled pid) is not its writer. A name that would
not fit the file system's limit (NAME_MAX, 255 bytes) keeps the head of the
target's name and a hash of all of it (``<head>~<hash>``): the target's own
name is never shortened. Lock files (:func:`locked`) are ``.<name>.lock``,
shortened the same way.

Two more guards every writer gets: :func:`protect_inputs` names files that
must not be replaced (a tool's inputs; ``infer photo.png -o .`` would
otherwise write its label map over the photo), and :func:`locked` holds a
lock file beside a target so that processes updating one file take turns
(``filelock``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Optional

import numpy as np

import filelock

from fcn_repro.errors import OutputError

__all__ = ["check_writable", "jsonable", "write_json", "output_path", "output_file", "check_free_space",
           "clean_stale", "temp_name", "as_output_error", "TEMP_SUFFIX",
           "side_name", "locked", "protect_inputs", "check_not_input", "child",
           "is_plain_name"]

TEMP_SUFFIX = ".fcnpart"
# Room kept free beyond the expected size: file-system metadata, estimates.
_MARGIN_BYTES = 1 << 20
_MARGIN_FRACTION = 0.01


def _start_ticks(pid: int) -> Optional[int]:
    """When process ``pid`` started, in clock ticks since boot (None: no such process, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


# When this process started (from /proc where there is one): temporary files
# older than that can not be from a write still running here.
_START_TICKS = _start_ticks(os.getpid())
try:
    with open("/proc/uptime", "rb") as _f:
        _uptime = float(_f.read().split()[0])
    _PROCESS_START = time.time() - _uptime + _START_TICKS / os.sysconf("SC_CLK_TCK")
except (OSError, ValueError, IndexError, TypeError):
    _PROCESS_START = time.time()   # this module's import: before any file it writes


def _name_max(directory: str) -> int:
    try:
        return int(os.pathconf(directory or ".", "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def _tag(base: str) -> str:
    return "~" + hashlib.sha1(base.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _short(base: str, room: int) -> str:
    """``base`` when it fits in ``room`` bytes, else its head and a hash of all of it."""
    raw = base.encode("utf-8", "surrogateescape")
    if len(raw) <= room:
        return base
    tag = _tag(base)
    return raw[: max(room - len(tag), 1)].decode("utf-8", "ignore") + tag


def _stands_for(stem: str, base: str) -> bool:
    """Whether ``stem`` (of a helper file's name) is ``base`` or its shortened form."""
    tag = _tag(base)
    return stem == base or (stem.endswith(tag) and base.startswith(stem[: -len(tag)]))


def side_name(path: str | os.PathLike, suffix: str) -> str:
    """``.<name><suffix>`` beside ``path``: a hidden helper file, its name shortened to fit NAME_MAX."""
    d, base = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(d, "." + _short(base, _name_max(d) - 1 - len(suffix)) + suffix)


_mine = (os.getpid(), _START_TICKS)


def _my_start() -> Optional[int]:
    """This process's start ticks (read again in a forked child: its pid and start are its own)."""
    global _mine
    if _mine[0] != os.getpid():
        _mine = (os.getpid(), _start_ticks(os.getpid()))
    return _mine[1]


def _writer_tag() -> str:
    start = _my_start()
    return f"{os.getpid()}-{start}" if start is not None else str(os.getpid())


def temp_name(path: str | os.PathLike) -> str:
    """A new temporary name for a write of ``path`` (beside it, within NAME_MAX), tagged with this
    process's pid and start time so that :func:`clean_stale` tells a killed writer's leftover from
    a live writer's file even after the pid is reused."""
    return side_name(path, f".{_writer_tag()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _writer_alive(pid: int, start: Optional[int]) -> bool:
    """Whether the process that wrote a temporary file (pid, and start where recorded) still runs."""
    if pid == os.getpid():
        return start is None or start == _my_start()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if start is None:
        return True   # an old name without the start: the pid is all there is to go by
    now = _start_ticks(pid)
    return now is None or now == start   # the same pid started at another time is another process


def clean_stale(path: str | os.PathLike) -> list[str]:
    """Remove temporary files of earlier, killed writes of ``path``; returns their names.

    Only files of our naming pattern for this target are touched, and only
    when they are older than this process and their writer is gone (a live
    process that reuses the writer's pid is told apart by its start time).
    """
    path = os.path.abspath(os.fspath(path))
    d, base = os.path.split(path)
    pat = re.compile(r"\.(.+)\.(\d+)(?:-(\d+))?\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX) + r"\Z", re.DOTALL)
    removed = []
    try:
        names = os.listdir(d)
    except OSError:
        return removed
    for name in names:
        m = pat.match(name)
        if not m or not _stands_for(m.group(1), base):
            continue
        full = os.path.join(d, name)
        try:
            st = os.lstat(full)
        except OSError:
            continue
        start = int(m.group(3)) if m.group(3) else None
        if st.st_mtime < _PROCESS_START and not _writer_alive(int(m.group(2)), start):
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


# ------------------------------------------------------------------ inputs are never replaced

_PROTECTED: list[dict[tuple[int, int], str]] = []   # one table per protect_inputs block: (dev, ino) -> path
_PROTECTED_LOCK = threading.Lock()


def _identity(path: str | os.PathLike, follow: bool) -> Optional[tuple[int, int]]:
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def protect_inputs(paths: Iterable[str | os.PathLike]) -> Iterator[None]:
    """Inside the block, no output (:func:`output_path`, :func:`output_file`) may replace one of ``paths``.

    For the whole process (writer threads included): a target that is, or
    resolves to, one of the inputs (the same file, through a link or another
    name) is refused with an :class:`OutputError` before anything is written.
    """
    table = {}
    for p in paths:
        for follow in (True, False):
            ident = _identity(p, follow)
            if ident is not None:
                table[ident] = os.fspath(p)
    with _PROTECTED_LOCK:
        _PROTECTED.append(table)
    try:
        yield
    finally:
        with _PROTECTED_LOCK:
            _PROTECTED.remove(table)


def check_not_input(path: str | os.PathLike, inputs: Optional[Iterable[str | os.PathLike]] = None) -> None:
    """Refuse (:class:`OutputError`) writing ``path`` when it is, or resolves to, one of the inputs.

    ``inputs``: the files to compare with (default: those of the
    :func:`protect_inputs` blocks in force). Any tool may call it before its
    work to refuse early; every output is checked again when written.
    """
    if inputs is not None:
        with protect_inputs(inputs):
            return check_not_input(path)
    if not _PROTECTED:
        return
    idents = {i for i in (_identity(path, True), _identity(path, False)) if i is not None}
    with _PROTECTED_LOCK:
        hit = next((t[i] for t in _PROTECTED for i in idents if i in t), None)
    if hit is not None:
        same = "" if os.path.abspath(hit) == os.path.abspath(os.fspath(path)) else f" ({hit})"
        raise OutputError(f"is one of the inputs{same}: it is not replaced; write the outputs somewhere else", path)


def is_plain_name(name: str) -> bool:
    """Whether ``name`` is one plain file name (no directory part, not '.' or '..', no NUL): a name
    from a list or a manifest joined to a directory stays inside it."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in ("/", "\\", "\0", os.sep)) and (
        not os.altsep or os.altsep not in name)


def child(directory: str | os.PathLike, name: str) -> str:
    """``directory/name``, refused (:class:`OutputError`) unless ``name`` is a plain file name:
    a name from a list or manifest (an id) never writes outside its directory."""
    if not is_plain_name(name):
        raise OutputError(f"the output name {name!r} is not a plain file name: outputs stay inside the directory",
                          directory)
    return os.path.join(os.fspath(directory), name)


# ------------------------------------------------------------------ locks

@contextlib.contextmanager
def locked(path: str | os.PathLike, timeout: float = 60.0, notify: Optional[Callable[[str], None]] = None,
           holder: str = "another process") -> Iterator[str]:
    """Hold the lock of ``path`` (the lock file ``.<name>.lock`` beside it) inside the block.

    Other processes locking the same path wait: ``notify`` (when given) is
    told once that this one waits, and after ``timeout`` seconds the wait
    ends in an :class:`OutputError` saying ``holder`` holds the lock. The
    lock goes with the process that held it (``flock``), so a killed holder
    never blocks a later run. Yields the lock file's name.
    """
    lockfile = side_name(path, ".lock")
    try:
        os.makedirs(os.path.dirname(lockfile), exist_ok=True)
        lock = filelock.FileLock(lockfile, timeout=timeout, thread_local=False)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            if notify is not None:
                notify(f"{os.fspath(path)}: waiting for {holder} (it holds {lockfile}; at most {timeout:g} s)")
            lock.acquire(timeout=timeout)
    except filelock.Timeout:
        raise OutputError(f"{holder} still holds its lock ({lockfile}) after {timeout:g} s; run again when it "
                          "is done", path) from None
    except OSError as e:
        raise OutputError(f"can not lock it ({e.strerror or e}; lock file {lockfile})", path) from None
    try:
        yield lockfile
    finally:
        lock.release()


# ------------------------------------------------------------------ writing

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
    check_not_input(path)
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise OutputError(f"can not create its directory ({e.strerror or e})", path) from None
    clean_stale(path)
    check_free_space(path, expected_bytes)
    tmp = temp_name(os.path.abspath(path))
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


# ------------------------------------------------------------------ JSON

def jsonable(x: Any) -> Any:
    """Plain JSON data: arrays to lists, NumPy scalars to Python, inf/NaN to None,
    paths to str, dataclasses to dicts."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return jsonable(dataclasses.asdict(x))
    return x


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """``obj`` as JSON (through :func:`jsonable`) to ``path``, atomically; ``-``: stdout."""
    text = json.dumps(jsonable(obj), indent=indent, allow_nan=False) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with output_file(path, len(text.encode()), "w") as f:
        f.write(text)


# ------------------------------------------------------------------ checks before the work

def check_writable(path: Optional[str | os.PathLike], what: str = "output", directory: bool = False) -> None:
    """Raise (a user error naming ``path``) unless ``path`` can be written.

    ``-`` (stdout) and None pass. A file path must not be a directory and
    its nearest existing ancestor must be a writable directory; a directory
    path must be a directory (or creatable) and writable. Nothing is created.
    A file path that is one of the inputs (:func:`protect_inputs`) is refused
    too, before any work.
    """
    if path is None or str(path) == "-":
        return
    p = Path(path)
    if not directory:
        check_not_input(p)
    if directory:
        if p.exists() and not p.is_dir():
            raise NotADirectoryError(f"{what} {p}: exists and is not a directory")
    elif p.is_dir():
        raise IsADirectoryError(f"{what} {p}: is a directory (a file path is expected)")
    elif p.exists() and not os.access(p, os.W_OK):
        raise PermissionError(f"{what} {p}: not writable")
    anc = p if directory and p.is_dir() else p.parent
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if not anc.is_dir():
        raise NotADirectoryError(f"{what} {p}: {anc} is not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {p}: directory {anc} is not writable")
    # access() says yes to root on a read-only file system: try a real file.
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fcn_repro-check-", dir=anc)
    except OSError as e:
        raise PermissionError(f"{what} {p}: cannot write in {anc} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(tmp)
