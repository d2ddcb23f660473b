"""One URL into one ``.part`` file, with bounds: the transport under :mod:`fcn_repro.hub`.

A server may stall, trickle, send without end, or redirect somewhere it should
not; a planted ``.part`` may point somewhere else. :func:`transfer` bounds all
of it:

- **deadline**: the whole transfer of one file from one source (connecting,
  headers, body) ends within ``Bounds.deadline`` seconds: a watchdog shuts the
  connection's socket when the time is up, whatever phase it is in;
- **minimum rate**: over every ``Bounds.window`` seconds at least
  ``Bounds.min_rate`` bytes per second must arrive (a server trickling one
  byte every few seconds is dropped after one window); a read waiting longer
  than ``Bounds.timeout`` with nothing at all is a stall;
- **size**: never more bytes than the published size (``size=``), the
  server's own ``Content-Length``, or, when neither is known, the read budget
  of :mod:`fcn_repro.limits` (``read_bytes``); a server announcing a size
  other than the published one is not read at all;
- **redirects**: followed only to http(s) URLs, and never from https to
  http; a source that is not an http(s) URL (a ``--base-url`` without a
  scheme, ``ftp://``, ``file://``) is that source's failure;
- **the part file**: opened without following links (``O_NOFOLLOW``), and
  refused (:class:`~fcn_repro.errors.OutputError`) unless it is a regular
  file of this user with one link; it is truncated only after that check.

Every failure of the source is a :class:`SourceFailed` (one short phrase);
the caller tries the next source. The bytes received are kept in the part for
a resume, except bytes past the size they should have had, which are dropped.
"""
from __future__ import annotations

import errno
import http.client
import os
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional
from urllib.parse import urlsplit


from fcn_repro import limits
from fcn_repro.errors import FcnReproError, OutputError
from fcn_repro.progress import bar as progress_bar

__all__ = ["Bounds", "SourceFailed", "transfer", "part_size", "open_part", "reason"]

_USER_AGENT = "fcn_repro (python urllib)"
_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class Bounds:
    """What one transfer may take (seconds; bytes per second).

    deadline: the whole transfer of one file from one source (default 2 h:
    the largest original file, ~540 MB, at 75 KB/s); min_rate: the slowest
    average accepted over each ``window`` seconds (default 8 KiB/s over
    60 s; 0: no minimum); timeout: the longest a single read may wait with
    nothing arriving (a stall).
    """

    deadline: float = 7200.0
    min_rate: float = 8192.0
    window: float = 60.0
    timeout: float = 60.0

    def __post_init__(self):
        for k in ("deadline", "window", "timeout"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and v > 0 and v < float("inf")):
                raise FcnReproError(f"download {k} {v!r}: must be a positive number of seconds")
        if not (isinstance(self.min_rate, (int, float)) and 0 <= self.min_rate < float("inf")):
            raise FcnReproError(f"download min_rate {self.min_rate!r}: must be >= 0 bytes per second")


class SourceFailed(Exception):
    """One source did not give the file (the reason is one short phrase)."""


def reason(e: BaseException) -> str:
    """A short phrase for a network or file error."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        e = e.reason if isinstance(e.reason, BaseException) else e
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, socket.gaierror):
            return "host not found (no network, or DNS down)"
        if isinstance(e, (socket.timeout, TimeoutError)):
            return "timed out"
        return str(getattr(e, "reason", e))
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__


# ------------------------------------------------------------------ the part file

def part_size(part: Path) -> int:
    """Bytes already in ``part`` (0: none); refuses a part that is not a regular file of ours."""
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise OutputError(f"can not look at it ({reason(e)})", part) from None
    _check_ours(st, part)
    return st.st_size


def _check_ours(st: os.stat_result, part: Path) -> None:
    what = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file" if not stat.S_ISREG(st.st_mode)
            else "another user's file" if hasattr(os, "geteuid") and st.st_uid != os.geteuid()
            else f"a file with {st.st_nlink} links" if st.st_nlink != 1 else None)
    if what:
        raise OutputError(f"a partial download should be a regular file of this user; this is {what}, "
                          "so it is not written to: remove it and run again", part)


def _unwritable(e: OSError, part: Path) -> OutputError:
    return OutputError(f"can not write it ({reason(e)}): free space (or pass --dir DIR) and run again; what "
                       "arrived is kept for the resume", part)


def open_part(part: Path, append: bool) -> BinaryIO:
    """``part`` open for writing (appending, or emptied), never through a link nor into someone else's file."""
    flags = (os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
             | getattr(os, "O_CLOEXEC", 0) | (os.O_APPEND if append else 0))
    try:
        fd = os.open(part, flags, 0o644)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO, errno.EMLINK):   # a link; a FIFO without a reader
            raise OutputError("a partial download should be a regular file of this user; this is a link or a "
                              "special file, so it is not written to: remove it and run again", part) from None
        raise _unwritable(e, part) from None
    try:
        _check_ours(os.fstat(fd), part)   # checked before a byte is truncated or written
        if not append:
            os.ftruncate(fd, 0)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "ab" if append else "wb")
    except BaseException:
        os.close(fd)
        raise


# ------------------------------------------------------------------ the connection

class _Watchdog:
    """Shuts the connection's socket when the deadline passes, in whatever phase the transfer is."""

    def __init__(self, seconds: float):
        self.expired = False
        self._sock: Optional[socket.socket] = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                self._shut()

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            self._shut()

    def _shut(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        self._timer.cancel()


def _watched(base: type, watch: _Watchdog) -> type:
    class Watched(base):   # type: ignore[valid-type, misc]
        def connect(self):
            super().connect()
            watch.attach(self.sock)
    return Watched


class _HTTP(urllib.request.HTTPHandler):
    def __init__(self, watch: _Watchdog):
        super().__init__()
        self._conn = _watched(http.client.HTTPConnection, watch)

    def http_open(self, req):
        return self.do_open(self._conn, req)


class _HTTPS(urllib.request.HTTPSHandler):
    def __init__(self, watch: _Watchdog):
        super().__init__()
        self._conn = _watched(http.client.HTTPSConnection, watch)

    def https_open(self, req):
        return self.do_open(self._conn, req, context=self._context)


class _Refused(Exception):
    pass


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Redirects within http(s) only, and never from https down to http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urlsplit(req.full_url).scheme.lower(), urlsplit(newurl).scheme.lower()
        if new not in _SCHEMES or (old == "https" and new == "http"):
            fp.close()
            why = "from https to http" if new == "http" else "outside http(s)"
            raise _Refused(f"redirected to {newurl}, not followed ({why})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(watch: _Watchdog) -> urllib.request.OpenerDirector:
    """http(s) only (no ftp:, file:, data: handlers), watched connections, checked redirects."""
    o = urllib.request.OpenerDirector()
    for h in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), _HTTP(watch), _HTTPS(watch),
              urllib.request.HTTPDefaultErrorHandler(), _Redirects(), urllib.request.HTTPErrorProcessor()):
        o.add_handler(h)
    return o


def _int_header(resp, name: str) -> Optional[int]:
    v = (resp.headers.get(name) or "").strip()
    return int(v) if v.isdigit() else None


# ------------------------------------------------------------------ the transfer

def transfer(url: str, part: Path, *, label: str = "", progress: bool = False, bounds: Bounds = Bounds(),
             size: Optional[int] = None, size_from: str = "published") -> None:
    """Fetch ``url`` into ``part``, resuming what is there, within ``bounds``.

    ``size``: the size the file is known to have (never more is written);
    ``size_from`` says where that is known from, for messages. Raises
    :class:`SourceFailed` for anything the source did wrong (the part keeps
    what arrived, for a resume) and :class:`OutputError` for a part that is
    not ours to write.
    """
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as e:   # a malformed URL ('http://[::1/x')
        raise SourceFailed(f"not a valid URL ({e})") from None
    if scheme not in _SCHEMES:
        raise SourceFailed("not an http(s) URL (give a base URL as http://HOST/PATH or https://HOST/PATH)")
    part = Path(part)
    have = part_size(part)
    if size is not None and have > size:   # more than the whole file: not a beginning of it
        have = 0
    headers = {"User-Agent": _USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    watch = _Watchdog(bounds.deadline)
    try:
        _run(url, part, headers, have, label, progress, bounds, size, size_from, watch)
    except (OSError, http.client.HTTPException, ValueError) as e:
        if watch.expired:
            raise SourceFailed(f"not done within the deadline of {bounds.deadline:g} s") from None
        if isinstance(e, FcnReproError):
            raise
        raise SourceFailed(reason(e)) from None
    finally:
        watch.cancel()


def _run(url, part, headers, have, label, progress, bounds, size, size_from, watch) -> None:
    try:
        resp = _opener(watch).open(urllib.request.Request(url, headers=headers), timeout=bounds.timeout)
    except _Refused as e:
        raise SourceFailed(str(e)) from None
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:
            return   # nothing left to send: the part is whole (verification decides)
        raise SourceFailed(reason(e)) from None
    with resp:
        length = _int_header(resp, "Content-Length")
        if have and resp.status == 206:
            crange = resp.headers.get("Content-Range", "")
            if not crange.startswith(f"bytes {have}-"):
                raise SourceFailed(f"answered a resume from byte {have} with {crange!r}")
            append = True
        else:
            have, append = 0, False   # the server sent the whole file
        total = have + length if length is not None else None
        if size is not None and total is not None and total != size:
            raise SourceFailed(f"refused: it announces {total:,} bytes, the {size_from} size is {size:,}")
        cap = size if size is not None else total if total is not None else limits.current().read_bytes
        got = _copy(resp, part, append, have, cap, total, label, progress, bounds, watch)
    if total is not None and got < total:
        raise SourceFailed(f"short read: {got:,} of {total:,} bytes")


def _copy(resp, part, append, have, cap, total, label, progress, bounds, watch) -> int:
    """The body into the part, at most ``cap`` bytes in all; returns the bytes the part holds."""
    got = have
    window_t, window_got = time.monotonic(), got
    bar = progress_bar(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                       enabled=progress, leave=False, dynamic_ncols=True)
    try:
        with open_part(part, append) as f:
            while True:
                try:
                    chunk = resp.read1(min(1 << 20, cap - got + 1))
                except (OSError, http.client.HTTPException) as e:
                    if watch.expired:
                        raise
                    if isinstance(e, (socket.timeout, TimeoutError)):
                        raise SourceFailed(f"stalled: nothing arrived for {bounds.timeout:g} s "
                                           f"({got:,} bytes received)") from None
                    raise SourceFailed(f"connection cut after {got:,} bytes ({reason(e)})") from None
                if watch.expired:
                    raise SourceFailed(f"not done within the deadline of {bounds.deadline:g} s "
                                       f"({got:,} bytes received)")
                if not chunk:
                    return got
                if got + len(chunk) > cap:   # a source that overruns its size is not trusted with a resume
                    f.close()
                    part.unlink(missing_ok=True)
                    raise SourceFailed(f"sent more than the {cap:,} bytes it should have; what it sent was dropped")
                try:
                    f.write(chunk)
                except OSError as e:   # a full disk is not the source's fault: no other source is tried
                    raise _unwritable(e, part) from None
                got += len(chunk)
                bar.update(len(chunk))
                now = time.monotonic()
                if now - window_t >= bounds.window:
                    rate = (got - window_got) / (now - window_t)
                    if rate < bounds.min_rate:
                        raise SourceFailed(f"too slow: {rate:,.0f} bytes/s over the last {now - window_t:.0f} s, "
                                           f"under the minimum of {bounds.min_rate:,.0f} ({got:,} bytes received)")
                    window_t, window_got = now, got
    finally:
        bar.close()
