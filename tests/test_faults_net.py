"""Faults, races and hostile servers (issue 23): downloads, locks, outputs, bounded readers.

Servers here are real HTTP(S) servers on 127.0.0.1 (the handler of test_hub,
with hostile routes added) that stall, trickle, send without end or redirect
where they should not; races are real processes. Every case must end in one of
our errors or a correct result, leave nothing half-written, and end within
its (small) deadline.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import zlib
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import caffe_fixture
from test_hub import FILE, _Handler, _src, env, good  # noqa: F401  (fixtures)
from fcn_repro import hub, limits, outputs, zoo
from fcn_repro.caffe.prototxt import parse_prototxt
from fcn_repro.data import read_id_list
from fcn_repro.errors import FcnReproError, OutputError, PrototxtError
from fcn_repro.transfer import Bounds, open_part

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(progress=False, notify=lambda m: None)


# ------------------------------------------------------------------ hostile servers

class _Hostile(_Handler):
    """test_hub's handler, plus routes {'hostile': kind}: stall, trickle, slow, endless, header_trickle."""

    def do_GET(self):
        r = self.server.routes.get(self.path)
        if r is None or "hostile" not in r:
            return super().do_GET()
        self.server.log.append((self.path, self.headers.get("Range")))
        stop, kind = self.server.stop, r["hostile"]
        try:
            if kind == "header_trickle":   # a status line, then a header that never ends
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not stop.wait(r.get("every", 0.05)):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                return
            self.send_response(200)
            if "length" in r:
                self.send_header("Content-Length", str(r["length"]))
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.flush()
            if kind == "stall":
                stop.wait(30)
            elif kind == "trickle":   # one byte every `every` seconds
                while not stop.wait(r["every"]):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
            elif kind == "held":      # the first half of the file, then the rest once `go` is set
                data, go = r["data"], r["go"]
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                while not go.wait(0.05):
                    if stop.is_set():
                        return
                self.wfile.write(data[len(data) // 2:])
            elif kind == "endless":   # the file, then more of it, without end
                block = r["data"]
                while not stop.is_set():
                    self.wfile.write(block)
        except OSError:   # the client gave up: that is the point
            pass


def _serve(context: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    srv.routes, srv.log, srv.stop = {}, [], threading.Event()
    srv.handle_error = lambda *a: None   # clients hanging up on hostile routes are expected
    scheme = "http"
    if context is not None:
        srv.socket = context.wrap_socket(srv.socket, server_side=True)
        scheme = "https"
    srv.url = f"{scheme}://127.0.0.1:{srv.server_address[1]}"
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _close(srv) -> None:
    srv.stop.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def hostile():
    srv = _serve()
    yield srv
    _close(srv)


def _fails(src, d, bounds, match, within):
    """fetch fails with DownloadError matching ``match`` within ``within`` seconds; nothing at the target."""
    t0 = time.monotonic()
    with pytest.raises(hub.DownloadError, match=match) as ei:
        hub.fetch(src, d, bounds=bounds, **QUIET)
    took = time.monotonic() - t0
    assert took < within, f"took {took:.1f} s"
    assert not (d / FILE).exists()
    return str(ei.value)


# ------------------------------------------------------------------ deadline, rate, size

def test_trickle_is_dropped_for_its_rate(hostile, env, good):
    hostile.routes["/t/" + FILE] = {"hostile": "trickle", "every": 0.02, "length": len(good)}
    msg = _fails(_src([f"{hostile.url}/t/{FILE}"]), env / "w", Bounds(deadline=20, min_rate=1000, window=0.5),
                 "too slow", within=3)
    assert "bytes/s" in msg and "minimum of 1,000" in msg and "\n" not in msg


def test_trickle_ends_at_the_deadline(hostile, env, good):
    """timeout=5 per read is never reached by a byte every 0.05 s; the whole-transfer deadline is."""
    hostile.routes["/t/" + FILE] = {"hostile": "trickle", "every": 0.05, "length": len(good)}
    msg = _fails(_src([f"{hostile.url}/t/{FILE}"]), env / "w", Bounds(deadline=1, min_rate=0, timeout=5),
                 "deadline of 1 s", within=3)
    assert "bytes received" in msg
    # what arrived is kept for a resume, and it is no more than what was sent
    assert 0 < (env / "w" / (FILE + ".part")).stat().st_size < 100


def test_headers_that_never_end_meet_the_deadline(hostile, env):
    hostile.routes["/h/" + FILE] = {"hostile": "header_trickle"}
    _fails(_src([f"{hostile.url}/h/{FILE}"]), env / "w", Bounds(deadline=1, min_rate=0, timeout=5),
           "deadline of 1 s", within=3)


def test_stalled_server(hostile, env, good):
    hostile.routes["/s/" + FILE] = {"hostile": "stall", "length": len(good)}
    _fails(_src([f"{hostile.url}/s/{FILE}"]), env / "w", Bounds(deadline=20, timeout=0.5), "stalled", within=3)


def test_endless_body_stops_at_the_published_size(hostile, env, good):
    hostile.routes["/e/" + FILE] = {"hostile": "endless", "data": good}
    msg = _fails(_src([f"{hostile.url}/e/{FILE}"], bytes=len(good)), env / "w", Bounds(deadline=20),
                 "sent more than", within=5)
    assert f"{len(good):,} bytes" in msg
    assert not (env / "w" / (FILE + ".part")).exists()   # an overrunning source's bytes are not kept


def test_endless_body_without_any_size_stops_at_the_read_budget(hostile, env, good):
    hostile.routes["/e/" + FILE] = {"hostile": "endless", "data": good}
    with limits.override(read_bytes=3 << 20):
        msg = _fails(_src([f"{hostile.url}/e/{FILE}"]), env / "w", Bounds(deadline=20), "sent more than",
                     within=5)
    assert f"{3 << 20:,}" in msg and not (env / "w" / (FILE + ".part")).exists()


def test_a_declared_size_other_than_the_published_one_is_not_read(hostile, env, good):
    hostile.routes["/big/" + FILE] = {"hostile": "stall", "length": 10 ** 12}
    msg = _fails(_src([f"{hostile.url}/big/{FILE}"], bytes=len(good)), env / "w", Bounds(deadline=20),
                 "refused: it announces", within=2)
    assert "1,000,000,000,000" in msg


def test_a_bad_source_then_a_good_one(hostile, env, good):
    """A trickling first source is dropped within its bounds; the mirror resumes its junk, the
    result does not verify, and the mirror is asked once more from the start."""
    hostile.routes["/t/" + FILE] = {"hostile": "trickle", "every": 0.05, "length": len(good)}
    hostile.routes["/ok/" + FILE] = {"data": good}
    d = env / "w"
    msgs = []
    pinned = _src([f"{hostile.url}/t/{FILE}", f"{hostile.url}/ok/{FILE}"], sha1=hashlib.sha1(good).hexdigest())
    p = hub.fetch(pinned, d, progress=False, notify=msgs.append, bounds=Bounds(deadline=1, min_rate=0))
    assert p.read_bytes() == good and not (d / (FILE + ".part")).exists()
    assert [x[1] is not None for x in hostile.log] == [False, True, False]   # trickle, resume, whole
    assert any("did not verify; downloading it again from the start" in m for m in msgs)


# ------------------------------------------------------------------ redirects and schemes

@pytest.fixture
def trap():
    """A TCP port that records whether anything connected to it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    s.settimeout(0.3)
    yield s
    s.close()


def _connected(trap) -> bool:
    try:
        c, _ = trap.accept()
    except (socket.timeout, TimeoutError):
        return False
    c.close()
    return True


def test_redirect_to_ftp_is_not_followed_and_the_next_source_is_tried(hostile, env, good, trap):
    port = trap.getsockname()[1]
    hostile.routes["/r/" + FILE] = {"redirect": f"ftp://anonymous:x@127.0.0.1:{port}/{FILE}"}
    hostile.routes["/ok/" + FILE] = {"data": good}
    d = env / "w"
    msg = _fails(_src([f"{hostile.url}/r/{FILE}"]), d, Bounds(deadline=5), "not followed", within=3)
    assert "outside http(s)" in msg
    p = hub.fetch(_src([f"{hostile.url}/r/{FILE}", f"{hostile.url}/ok/{FILE}"]), d, **QUIET)
    assert p.read_bytes() == good
    assert not _connected(trap)   # no login anywhere the server chose


def test_redirect_to_a_file_url_is_refused(hostile, env):
    hostile.routes["/r/" + FILE] = {"redirect": "file:///etc/passwd"}
    _fails(_src([f"{hostile.url}/r/{FILE}"]), env / "w", Bounds(deadline=5), "HTTP 302", within=3)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (openssl), trusted through SSL_CERT_FILE."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"no openssl to make a test certificate ({e})")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return cert, ctx


def test_https_to_http_redirect_is_refused(hostile, env, good, tls, monkeypatch):
    cert, ctx = tls
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    secure = _serve(ctx)
    try:
        hostile.routes["/plain/" + FILE] = {"data": good}
        secure.routes["/ok/" + FILE] = {"data": good}
        secure.routes["/tls/" + FILE] = {"redirect": f"{secure.url}/ok/{FILE}"}
        secure.routes["/down/" + FILE] = {"redirect": f"{hostile.url}/plain/{FILE}"}
        d = env / "w"
        msg = _fails(_src([f"{secure.url}/down/{FILE}"]), d, Bounds(deadline=5), "from https to http", within=5)
        assert f"{hostile.url}/plain/{FILE}" in msg and not hostile.log   # the plain server never asked
        # https -> https is followed: the refusal above is the downgrade's, not TLS failing
        assert hub.fetch(_src([f"{secure.url}/tls/{FILE}"]), d, **QUIET).read_bytes() == good
    finally:
        _close(secure)


@pytest.mark.parametrize("base", ["127.0.0.1:9/weights", "mirror.example/weights", "file:///tmp", "ftp://h/x",
                                  "http://[::1/x", "http://a b/x", "https://", "http://" + "a" * 300])
def test_a_base_url_that_is_not_http_is_that_source_failing(hostile, env, good, base):
    hostile.routes["/ok/" + FILE] = {"data": good}
    d = env / "w"
    p = hub.download([FILE], directory=d, base_url=[base, f"{hostile.url}/ok"], **QUIET)[0]
    assert p.read_bytes() == good
    with pytest.raises(hub.DownloadError, match="could not download") as ei:
        hub.download([FILE], directory=env / "v", base_url=base, bounds=Bounds(deadline=3), **QUIET)
    if not base.startswith(("http://", "https://")):
        assert "not an http(s) URL" in str(ei.value)


def test_cli_bounds_options(hostile, env, good, capsys):
    hostile.routes["/t/" + FILE] = {"hostile": "trickle", "every": 0.05, "length": len(good)}
    d = env / "w"
    t0 = time.monotonic()
    assert zoo.main_download([FILE, "--dir", str(d), "--base-url", f"{hostile.url}/t", "--no-progress",
                              "--deadline", "0.8", "--min-rate", "0"]) == 2
    assert time.monotonic() - t0 < 3
    assert "deadline of 0.8 s" in capsys.readouterr().err.strip().splitlines()[-1]
    assert zoo.main_download([FILE, "--deadline", "0"]) == 2
    assert "deadline" in capsys.readouterr().err
    assert zoo.main_download([FILE, "--min-rate", "nan"]) == 2


# ------------------------------------------------------------------ the part file

@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "dangling"])
def test_a_planted_part_is_refused_and_its_target_untouched(hostile, env, good, kind):
    hostile.routes["/ok/" + FILE] = {"data": good}
    d = env / "w"
    d.mkdir()
    victim = env / "victim.txt"
    victim.write_bytes(b"precious")
    part = d / (FILE + ".part")
    if kind == "symlink":
        part.symlink_to(victim)
    elif kind == "dangling":
        part.symlink_to(env / "not-yet")
    elif kind == "hardlink":
        os.link(victim, part)
    else:
        os.mkfifo(part)
    with pytest.raises(OutputError) as ei:
        hub.fetch(_src([f"{hostile.url}/ok/{FILE}"]), d, **QUIET)
    assert str(part) in str(ei.value) and "remove it" in str(ei.value)
    assert victim.read_bytes() == b"precious" and not (env / "not-yet").exists()
    assert not hostile.log and not (d / FILE).exists()


def test_open_part_does_not_follow_a_link_planted_after_the_check(tmp_path):
    victim, part = tmp_path / "victim", tmp_path / "x.part"
    victim.write_bytes(b"precious")
    part.symlink_to(victim)
    for append in (False, True):
        with pytest.raises(OutputError, match="link"):
            open_part(part, append)
    assert victim.read_bytes() == b"precious"


# ------------------------------------------------------------------ locks and concurrent processes

_FETCH = r"""
import sys
from pathlib import Path
from fcn_repro import hub
url, d, sha1 = sys.argv[1:4]
src = hub.Source("fcn8s-heavy-pascal.caffemodel", (url,), sha1=sha1, net="fcn8s")   # pinned: no parse, no torch
hub.fetch(src, Path(d), progress=False, notify=lambda m: print(m, flush=True), bounds=hub.Bounds(deadline=30))
"""

_RECORD = r"""
import glob, os, sys, time
from fcn_repro import hub
mpath, i, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3]
open(os.path.join(ready, str(i)), "w").close()
t0 = time.monotonic()
while len(glob.glob(os.path.join(ready, "*"))) < 8 and time.monotonic() - t0 < 30:
    time.sleep(0.001)   # all eight, once started, read-modify-write at once
chk = hub.Check("pending", f"/x/extra-{i}.caffemodel", f"extra-{i}.caffemodel", bytes=i, sha256=f"{i:064x}",
                manifest=mpath)
assert hub.record(chk, notify=lambda m: None).status == "recorded"
"""


def _py(script, *args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_two_processes_downloading_one_file_take_turns(hostile, env, good):
    go = threading.Event()
    hostile.routes["/held/" + FILE] = {"hostile": "held", "data": good, "go": go, "length": len(good)}
    d = env / "w"
    url, sha1 = f"{hostile.url}/held/{FILE}", hashlib.sha1(good).hexdigest()
    first = _py(_FETCH, url, d, sha1)
    t0 = time.monotonic()
    while not hostile.log and time.monotonic() - t0 < 30:   # the first is downloading (half of it sent)
        time.sleep(0.02)
    second = _py(_FETCH, url, d, sha1)
    said = []
    for line in second.stdout:   # the second waits for the first (its wait ends with the deadline, 30 s)
        said.append(line)
        if "waiting for another download" in line:
            break
    go.set()   # now the first may finish
    outs = [p.communicate(timeout=60) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    assert (d / FILE).read_bytes() == good and not (d / (FILE + ".part")).exists()
    assert len(hostile.log) == 1                       # one transfer: the second found the file there
    assert "waiting for another download" in said[-1] and "already in" in outs[1][0]
    assert "against the published sha1" in outs[0][0]


def test_eight_processes_recording_in_one_manifest_keep_all_eight(tmp_path):
    mpath = tmp_path / "manifest.json"
    ready = tmp_path / "ready"
    ready.mkdir()
    procs = [_py(_RECORD, mpath, i, ready) for i in range(8)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, outs
    files = json.loads(mpath.read_text())["files"]
    assert {f"extra-{i}.caffemodel": (i, f"{i:064x}") for i in range(8)} == {
        k: (v["bytes"], v["sha256"]) for k, v in files.items() if k.startswith("extra-")}
    assert FILE in files   # the registry's entries are still there
    assert not [n for n in os.listdir(tmp_path) if n.endswith(outputs.TEMP_SUFFIX)]


def test_a_held_download_lock_is_waited_for_boundedly(hostile, env, good):
    hostile.routes["/ok/" + FILE] = {"data": good}
    d = env / "w"
    msgs = []
    with outputs.locked(d / FILE):
        t0 = time.monotonic()
        with pytest.raises(OutputError, match=f"another download of {FILE} still holds its lock"):
            hub.fetch(_src([f"{hostile.url}/ok/{FILE}"]), d, progress=False, notify=msgs.append,
                      bounds=Bounds(deadline=0.5))
        assert time.monotonic() - t0 < 3
    assert any("waiting for another download" in m for m in msgs) and not hostile.log
    assert hub.fetch(_src([f"{hostile.url}/ok/{FILE}"]), d, **QUIET).read_bytes() == good   # released


def test_a_held_manifest_lock_leaves_the_file_unrecorded_with_a_warning(env, good, tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "_MANIFEST_WAIT", 0.3)
    f = tmp_path / FILE
    f.write_bytes(good)
    mpath = tmp_path / "manifest.json"
    with outputs.locked(mpath):
        with pytest.warns(UserWarning, match="still holds its lock"):
            assert hub.verify_or_record(f, mpath, **QUIET)["status"] == "unrecorded"
    assert hub.verify_or_record(f, mpath, **QUIET)["status"] == "recorded"


def test_a_killed_lock_holder_does_not_block(tmp_path):
    target = tmp_path / "t.bin"
    holder = _py("import sys, time\nfrom fcn_repro import outputs\nwith outputs.locked(sys.argv[1]):\n"
                 "    print('held', flush=True)\n    time.sleep(60)\n", target)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.communicate(timeout=30)
    t0 = time.monotonic()
    with outputs.locked(target, timeout=5):
        pass
    assert time.monotonic() - t0 < 2


# ------------------------------------------------------------------ outputs: names, stale files, inputs

def test_a_long_valid_output_name_is_written_under_a_short_temporary_name(tmp_path):
    for n in (237, 255):
        target = tmp_path / ("n" * (n - 4) + ".png")
        with outputs.output_file(target, 10) as f:
            temps = [x for x in os.listdir(tmp_path) if x.endswith(outputs.TEMP_SUFFIX)]
            assert len(temps) == 1 and len(temps[0]) <= 255
            f.write(b"0123456789")
        assert target.read_bytes() == b"0123456789" and len(target.name) == n
        with outputs.locked(target, timeout=1) as lockfile:
            assert len(os.path.basename(lockfile)) <= 255
    assert sorted(len(x) for x in os.listdir(tmp_path) if not x.endswith(".lock")) == [237, 255]


def _stale(target: Path, pid: int, start, old: bool = True) -> Path:
    tag = f"{pid}-{start}" if start is not None else str(pid)
    p = Path(outputs.side_name(target, f".{tag}.0123abcd{outputs.TEMP_SUFFIX}"))
    p.write_bytes(b"half")
    if old:
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    return p


def _gone_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times come from /proc")
def test_stale_temporary_files_after_pid_reuse(tmp_path):
    target = tmp_path / "out.h5"
    parent = os.getppid()                                  # alive, started long before this test
    real = outputs._start_ticks(parent)
    reused = _stale(target, parent, real + 12345)          # its pid now belongs to another process
    live = _stale(target, parent, real)                    # that very process: it may still be writing
    mine = _stale(target, os.getpid(), outputs._my_start())
    earlier_me = _stale(target, os.getpid(), outputs._my_start() - 1)   # a previous process with this pid
    legacy_gone = _stale(target, _gone_pid(), None)
    fresh = _stale(target, _gone_pid(), None, old=False)   # newer than this process: not judged
    longname = tmp_path / ("L" * 250)
    long_reused = _stale(longname, parent, real + 1)
    removed = set(map(Path, outputs.clean_stale(target))) | set(map(Path, outputs.clean_stale(longname)))
    assert removed == {reused, earlier_me, legacy_gone, long_reused}
    assert live.exists() and mine.exists() and fresh.exists()


def test_a_forked_child_names_its_temporary_files_as_itself():
    """Its pid and start are its own, so a later cleaner judges its files rightly (not by the parent)."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:   # pragma: no cover - the child
        os.write(w, f"{outputs._writer_tag()} {outputs._start_ticks(os.getpid())}".encode())
        os._exit(0)
    os.waitpid(child, 0)
    os.close(w)
    tag, ticks = os.read(r, 100).decode().split()
    os.close(r)
    assert tag == f"{child}-{ticks}" and int(ticks) != outputs._my_start()


def test_an_output_that_is_an_input_is_refused(tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"the photo")
    link = tmp_path / "link.png"
    link.symlink_to(photo)
    hard = tmp_path / "hard.png"
    os.link(photo, hard)
    with outputs.protect_inputs([photo]):
        for target in (photo, link, hard, tmp_path / "." / "photo.png"):
            with pytest.raises(OutputError, match="is one of the inputs"):
                with outputs.output_file(target) as f:
                    f.write(b"labels")
        with outputs.output_file(tmp_path / "labels.png") as f:   # anything else is written
            f.write(b"labels")
        # writer threads see the protection too
        err = []
        t = threading.Thread(target=lambda: err.append(pytest.raises(OutputError, outputs.check_not_input, photo)))
        t.start()
        t.join()
        assert err
    assert photo.read_bytes() == b"the photo"
    outputs.check_not_input(photo)   # outside the block: nothing protected
    with pytest.raises(OutputError):
        outputs.check_not_input(link, [photo])
    assert not [n for n in os.listdir(tmp_path) if n.endswith(outputs.TEMP_SUFFIX)]


def test_infer_into_the_images_directory_never_replaces_an_image(tmp_path, monkeypatch, capsys):
    from fcn_repro import infer as inf
    from fcn_repro.data import resource_path

    monkeypatch.setenv("FCN_REPRO_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("FCN_REPRO_HOME", str(tmp_path / "cache"))
    src = resource_path("sample") / "sample" / "JPEGImages" / "s0002.jpg"
    photo = tmp_path / "photo.png"
    from PIL import Image
    Image.open(src).save(photo)
    before = photo.read_bytes()
    monkeypatch.chdir(tmp_path)
    # infer's naming steps around its inputs (photo-2.png) ...
    assert inf.main(["photo.png", "--net", "sample", "-o", "."]) == 0
    assert photo.read_bytes() == before and (tmp_path / "photo-2.png").is_file()
    # ... and were it to name one anyway, the outputs' guard refuses to write it
    monkeypatch.setattr(inf._Names, "take", lambda self, stem, files: stem)
    assert inf.main(["photo.png", "--net", "sample", "-o", "."]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and "photo.png" in err and "is one of the inputs" in err
    assert photo.read_bytes() == before
    assert not [n for n in os.listdir(tmp_path) if n.endswith(outputs.TEMP_SUFFIX)]


def test_output_names_from_ids_stay_inside_their_directory(tmp_path):
    assert outputs.child(tmp_path, "a.png") == os.path.join(tmp_path, "a.png")
    for bad in ("../../x/y.png", "/etc/x.png", "..", "a\\b.png", "a\0.png", ""):
        with pytest.raises(OutputError, match="not a plain file name"):
            outputs.child(tmp_path, bad)


# ------------------------------------------------------------------ split lists and evaluate

def test_a_split_id_climbing_out_is_refused_with_file_and_line(tmp_path):
    lst = tmp_path / "val.txt"
    lst.write_text("a\n\nb\n../../x/y\n")
    with pytest.raises(FcnReproError) as ei:
        read_id_list(lst)
    assert str(ei.value).startswith(f"{lst}:4: id '../../x/y' is not a plain file name")
    for bad in ("/abs", "..", "a\\b"):
        lst.write_text(f"{bad}\n")
        with pytest.raises(FcnReproError, match=":1: id"):
            read_id_list(lst)
    lst.write_text("  a  \nb\n")
    assert read_id_list(lst) == ["a", "b"]


def test_evaluate_save_predictions_stays_inside_and_never_replaces_labels(tmp_path):
    from test_evaluate import make_sample_voc
    import fcn_repro.evaluate as ev

    data = make_sample_voc(tmp_path / "voc")
    labels = data / "SegmentationClass"
    truth = {p.name: p.read_bytes() for p in labels.iterdir()}
    lst = data / "ImageSets" / "Segmentation" / "val.txt"
    good_ids = lst.read_text()
    lst.write_text(good_ids + "../../SegmentationClass/" + good_ids.split()[0] + "\n")
    with pytest.raises(FcnReproError, match=f"{lst}:6: id"):
        ev.evaluate(net="sample", data=str(data), split="val", progress=False, save_predictions=str(tmp_path / "p"))
    lst.write_text(good_ids)
    with pytest.raises(OutputError, match="is one of the inputs"):   # predictions pointed at the ground truth
        ev.evaluate(net="sample", data=str(data), split="val", progress=False, save_predictions=str(labels))
    assert {p.name: p.read_bytes() for p in labels.iterdir()} == truth


def test_split_lists_are_read_with_a_size_cap(tmp_path):
    big = tmp_path / "val.txt"
    big.write_bytes(b"x\n" * 600)
    with limits.override(text_bytes=1000):
        with pytest.raises(FcnReproError, match="text_bytes"):
            read_id_list(big)
        with pytest.raises(FcnReproError, match="longer than the limit"):
            read_id_list("/dev/zero")


# ------------------------------------------------------------------ readers and non-regular files

def _fifo_fed(path: Path, block: bytes, stop: threading.Event) -> threading.Thread:
    """A writer that feeds ``block`` into the FIFO ``path`` until the reader goes (``<(yes)``)."""
    def feed():
        try:
            with open(path, "wb") as f:
                while not stop.is_set():
                    f.write(block)
        except OSError:   # the reader closed its end
            pass
    t = threading.Thread(target=feed, daemon=True)
    t.start()
    return t


@contextlib.contextmanager
def _pipe_wait(seconds):
    old, limits.PIPE_WAIT = limits.PIPE_WAIT, seconds
    try:
        yield
    finally:
        limits.PIPE_WAIT = old


def test_prototxt_from_devices_and_pipes_is_bounded(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(PrototxtError, match="longer than the limit") as ei:
        parse_prototxt("/dev/zero")
    assert str(ei.value).startswith("/dev/zero:1:1:")
    fifo = tmp_path / "net.prototxt"
    os.mkfifo(fifo)
    stop = threading.Event()
    feeder = _fifo_fed(fifo, b'layer { name: "x" type: "ReLU" }\n' * 1000, stop)
    with limits.override(text_bytes=1 << 20):
        with pytest.raises(PrototxtError, match="longer than the limit of 1.0 MiB"):
            parse_prototxt(fifo)
    stop.set()
    feeder.join(5)
    assert time.monotonic() - t0 < 10
    # a writer that stops writing without closing (a command that hangs)
    stalled = tmp_path / "stalled.prototxt"
    os.mkfifo(stalled)
    stop = threading.Event()

    def stall():
        with open(stalled, "wb") as f:
            f.write(b'name: "x"\n')
            f.flush()
            stop.wait(10)
    t = threading.Thread(target=stall, daemon=True)
    t.start()
    with pytest.raises(PrototxtError, match="nothing more came from it within 0.5 s"):
        with _pipe_wait(0.5):
            parse_prototxt(stalled)
    stop.set()
    t.join(5)
    # a FIFO nobody writes to is waited for a bounded time, then refused (the open does not hang)
    other = tmp_path / "silent.prototxt"
    os.mkfifo(other)
    with pytest.raises(PrototxtError, match="nothing came from it within 0.5 s"):
        with _pipe_wait(0.5):
            parse_prototxt(other)
    # a regular prototxt still reads
    assert parse_prototxt(caffe_fixture("fcn8s.prototxt")).has("layer")


def _huge_chunk_png() -> bytes:
    """An 8x8 PNG whose first IDAT chunk declares 4 GiB (the file is 85 bytes)."""
    def chunk(kind, data, length=None):
        n = len(data) if length is None else length
        return struct.pack(">I", n) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 25 * 8))
    return (b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", b"", 0xFFFFFFFF)[:-4] + b"x" * 8 + idat
            + chunk(b"IEND", b""))


def test_a_png_declaring_gigabytes_is_that_files_error(tmp_path):
    """Under a memory limit the decoder's read of the declared chunk is a MemoryError: ours names the file."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(_huge_chunk_png())
    script = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))\n"
              "from fcn_repro.data.transforms import read_image, ImageReadError\n"
              "try:\n    read_image(sys.argv[1])\nexcept ImageReadError as e:\n    print('ours:', e)\n")
    r = subprocess.run([sys.executable, "-c", script, str(bad)], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"ours: {bad}: cannot decode image: the decoder ran out of memory"), r.stdout


def test_infer_skips_a_png_declaring_gigabytes(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from fcn_repro import infer as inf
    from fcn_repro.data import resource_path

    monkeypatch.setenv("FCN_REPRO_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("FCN_REPRO_HOME", str(tmp_path / "cache"))
    d = tmp_path / "in"
    d.mkdir()
    (d / "bad.png").write_bytes(_huge_chunk_png())
    Image.open(resource_path("sample") / "sample" / "JPEGImages" / "s0002.jpg").save(d / "good.png")
    assert inf.main([str(d / "bad.png"), str(d / "good.png"), "--net", "sample", "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"skipped {d / 'bad.png'}" in err
    assert (tmp_path / "out" / "good.png").is_file() and not (tmp_path / "out" / "bad.png").exists()


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_binary_readers_refuse_pipes_and_devices_without_opening_them(tmp_path, kind):
    """Weights, solver states and archives are mapped or seeked: a FIFO (whose open would wait for a
    writer) or a device (fstat size 0, endless data) is refused by its reader's error, at once."""
    from fcn_repro.caffe import CaffeModelError, WeightsError, weights_info
    from fcn_repro.caffe.caffemodel import read_caffemodel, read_solverstate
    from fcn_repro.npz import NpzError, read_npz

    if kind == "fifo":
        path = tmp_path / "w.caffemodel"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    t0 = time.monotonic()
    for read, err in ((weights_info, WeightsError), (read_caffemodel, WeightsError),
                      (read_solverstate, CaffeModelError), (read_npz, NpzError)):
        with pytest.raises(err, match="must be a regular file") as ei:
            read(path)
        assert str(ei.value).startswith(f"{path}: is a {'pipe' if kind == 'fifo' else 'device'}")
    assert time.monotonic() - t0 < 5


def test_a_recorded_size_bounds_a_later_download(hostile, env, good):
    """No published size: the size the manifest recorded the first time is the one a later copy may have."""
    hostile.routes["/ok/" + FILE] = {"data": good}
    hostile.routes["/e/" + FILE] = {"hostile": "endless", "data": good}
    hostile.routes["/big/" + FILE] = {"hostile": "stall", "length": 10 ** 12}
    d = env / "w"
    hub.fetch(_src([f"{hostile.url}/ok/{FILE}"]), d, **QUIET)
    (d / FILE).unlink()
    msg = _fails(_src([f"{hostile.url}/big/{FILE}", f"{hostile.url}/e/{FILE}"]), d, Bounds(deadline=20),
                 "the recorded size is", within=5)
    assert f"sent more than the {len(good):,} bytes" in msg


def test_checking_weights_refuses_a_pipe(env, tmp_path):
    fifo = tmp_path / FILE
    os.mkfifo(fifo)
    with pytest.raises(hub.HubError, match="is a pipe"):
        hub.verify_or_record(fifo, tmp_path / "manifest.json", **QUIET)
    with pytest.raises(hub.HubError, match="is a pipe"):
        hub.hash_file(fifo, progress=False)


_FULL = r"""
import resource, signal, sys
from pathlib import Path
from fcn_repro import hub
from fcn_repro.errors import OutputError
url, d, sha1 = sys.argv[1:4]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
src = hub.Source("fcn8s-heavy-pascal.caffemodel", (url, url), sha1=sha1, net="fcn8s")
try:
    hub.fetch(src, Path(d), progress=False, notify=lambda m: print(m, flush=True))
except OutputError as e:
    print("ours:", e)
"""


def test_a_full_disk_is_not_blamed_on_the_source(hostile, env, good):
    """A part that can not be written ends the download with our error at once (the next source
    would fail the same way); what arrived stays for the resume."""
    hostile.routes["/ok/" + FILE] = {"data": good}
    d = env / "w"
    r = _py(_FULL, f"{hostile.url}/ok/{FILE}", d, hashlib.sha1(good).hexdigest())
    out, err = r.communicate(timeout=60)
    assert r.returncode == 0, err
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"ours: {d / (FILE + '.part')}: can not write it") and "kept for the resume" in last
    assert len(hostile.log) == 1 and not (d / FILE).exists()
    assert 0 < (d / (FILE + ".part")).stat().st_size <= 100_000
