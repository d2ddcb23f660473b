"""fcn_repro.hub: downloading, resuming, verifying and recording weights.

Every download here is from an HTTP server on 127.0.0.1 started by the test
(no test touches the internet). The "original" weights are the reduced-width
FCN-8s Caffe fixture, and the net it must fit is the fixture's prototxt.
"""
from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import caffe_fixture
from fcn_repro import hub, zoo
from fcn_repro.caffe import CaffeModelError

FILE = "fcn8s-heavy-pascal.caffemodel"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):  # quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        r = srv.routes.get(self.path)
        if r is None:
            return self.send_error(404)
        if "status" in r:
            return self.send_error(r["status"])
        if "redirect" in r:
            self.send_response(302)
            self.send_header("Location", r["redirect"])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data, start = r["data"], 0
        rng = self.headers.get("Range")
        if rng and not r.get("ignore_range"):
            start = int(rng[len("bytes="):-1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = r.get("cut")
        if cut is not None and r.get("cuts", 1) > 0:
            r["cuts"] = r.get("cuts", 1) - 1
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.routes, srv.log = {}, []
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Weights dirs in tmp; the net a 'fcn8s' caffemodel must fit is the reduced fixture net."""
    monkeypatch.setenv("FCN_REPRO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FCN_REPRO_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(hub, "_net_prototxt", lambda net: str(caffe_fixture(f"{net}.prototxt")))
    # the published facts of the real files do not fit the fixtures: the tests pin their own
    monkeypatch.setattr(hub, "_facts", lambda: [hub.Source(FILE, ("http://127.0.0.1:9/" + FILE,), net="fcn8s")])
    return tmp_path


@pytest.fixture
def good():
    return caffe_fixture("fcn8s.caffemodel").read_bytes()


def _src(urls, **kw):
    return hub.Source(FILE, tuple(urls), net="fcn8s", **kw)


def _messages():
    out = []
    return out, out.append


def _recorded(directory: Path):
    m = json.loads((directory / "manifest.json").read_text())
    return m["files"][FILE]


def test_download_verifies_records_once_and_reuses(server, env, good):
    server.routes["/ok/" + FILE] = {"data": good}
    msgs, notify = _messages()
    d = env / "w"
    p = hub.fetch(_src([f"{server.url}/ok/{FILE}"]), d, notify=notify, progress=False)
    assert p == d / FILE and p.read_bytes() == good
    assert not (d / (FILE + ".part")).exists()
    e = _recorded(d)
    assert e["bytes"] == len(good) and e["sha256"] == hashlib.sha256(good).hexdigest()
    told = [m for m in msgs if "recorded, not verified" in m]
    assert len(told) == 1 and FILE in told[0]
    # a second run checks the file against the record and tells nothing new
    msgs.clear()
    assert hub.fetch(_src([f"{server.url}/ok/{FILE}"]), d, notify=notify, progress=False) == p
    assert len(server.log) == 1
    assert not [m for m in msgs if "recorded" in m and "not verified" in m]
    assert any("verified" in m for m in msgs)


def test_default_directory_is_the_cache(server, env, good, monkeypatch):
    server.routes["/ok/" + FILE] = {"data": good}
    p = hub.download([FILE], base_url=f"{server.url}/ok/", progress=False, notify=lambda m: None)[0]
    assert p == env / "home" / "weights" / FILE
    assert hub.find_weights(FILE) == p
    monkeypatch.setenv("FCN_REPRO_WEIGHTS_DIR", str(env / "mine"))
    assert hub.download_dir() == env / "mine" and hub.find_weights(FILE) is None


def test_resume_after_a_cut_connection(server, env, good):
    cut = 200_000
    server.routes["/ok/" + FILE] = {"data": good, "cut": cut}
    d = env / "w"
    with pytest.raises(hub.DownloadError) as ei:
        hub.fetch(_src([f"{server.url}/ok/{FILE}"]), d, progress=False, notify=lambda m: None)
    msg = str(ei.value)
    assert "\n" not in msg and f"short read: {cut:,} of {len(good):,} bytes" in msg
    assert "run the same command again to resume" in msg
    assert (d / (FILE + ".part")).stat().st_size == cut and not (d / FILE).exists()
    p = hub.fetch(_src([f"{server.url}/ok/{FILE}"]), d, progress=False, notify=lambda m: None)
    assert server.log[-1] == (f"/ok/{FILE}", f"bytes={cut}-")
    assert p.read_bytes() == good and not (d / (FILE + ".part")).exists()


def test_server_ignoring_range_restarts_cleanly(server, env, good):
    server.routes["/ok/" + FILE] = {"data": good, "ignore_range": True}
    d = env / "w"
    d.mkdir()
    (d / (FILE + ".part")).write_bytes(b"garbage that is not the start of the file")
    p = hub.fetch(_src([f"{server.url}/ok/{FILE}"]), d, progress=False, notify=lambda m: None)
    assert p.read_bytes() == good


def test_short_read_is_an_error_and_keeps_the_part(server, env, good):
    server.routes["/ok/" + FILE] = {"data": good, "cut": 1000, "cuts": 99}
    d = env / "w"
    with pytest.raises(hub.DownloadError, match="to resume"):
        hub.fetch(_src([f"{server.url}/ok/{FILE}"]), d, progress=False, notify=lambda m: None)
    assert not (d / FILE).exists()


@pytest.mark.parametrize("pin", ["sha1", "bytes"])
def test_pinned_mismatch_is_refused_and_nothing_is_left(server, env, good, pin):
    server.routes["/ok/" + FILE] = {"data": good}
    d = env / "w"
    facts = {"sha1": "c449ea74dd7d83751d1357d6a8c323fcf4038962"} if pin == "sha1" else {"bytes": len(good) + 1}
    with pytest.raises(hub.DownloadError) as ei:
        hub.fetch(_src([f"{server.url}/ok/{FILE}"], **facts), d, progress=False, notify=lambda m: None)
    assert "refused" in str(ei.value) and ("sha1" if pin == "sha1" else "size") in str(ei.value)
    assert not (d / FILE).exists() and not (d / (FILE + ".part")).exists()
    assert not (d / "manifest.json").exists() or _recorded(d)["sha256"] is None


def test_pinned_match_is_verified(server, env, good):
    server.routes["/ok/" + FILE] = {"data": good}
    msgs, notify = _messages()
    src = _src([f"{server.url}/ok/{FILE}"], sha1=hashlib.sha1(good).hexdigest(), bytes=len(good))
    hub.fetch(src, env / "w", progress=False, notify=notify)
    assert any("against the published sha1" in m for m in msgs)


@pytest.mark.parametrize("status", [404, 500])
def test_http_errors_name_the_source_and_what_to_do(server, env, status):
    server.routes["/x/" + FILE] = {"status": status}
    with pytest.raises(hub.DownloadError) as ei:
        hub.fetch(_src([f"{server.url}/x/{FILE}"]), env / "w", progress=False, notify=lambda m: None)
    msg = str(ei.value)
    assert "\n" not in msg and f"HTTP {status}" in msg and f"{server.url}/x/{FILE}" in msg
    assert "--base-url" in msg and not (env / "w" / FILE).exists()


def test_refused_connection(env):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(hub.DownloadError, match="connection refused"):
        hub.fetch(_src([f"http://127.0.0.1:{port}/{FILE}"]), env / "w", progress=False, notify=lambda m: None)


def test_redirect_is_followed(server, env, good):
    server.routes["/old/" + FILE] = {"redirect": f"/new/{FILE}"}
    server.routes["/new/" + FILE] = {"data": good}
    p = hub.fetch(_src([f"{server.url}/old/{FILE}"]), env / "w", progress=False, notify=lambda m: None)
    assert p.read_bytes() == good and [x[0] for x in server.log] == [f"/old/{FILE}", f"/new/{FILE}"]


def test_mirror_fallback_in_order(server, env, good):
    server.routes["/mirror/" + FILE] = {"data": good}
    urls = [f"{server.url}/gone/{FILE}", f"{server.url}/mirror/{FILE}"]
    p = hub.fetch(_src(urls), env / "w", progress=False, notify=lambda m: None)
    assert p.read_bytes() == good and [x[0] for x in server.log] == [f"/gone/{FILE}", f"/mirror/{FILE}"]


def test_mirror_serving_a_wrong_file_is_skipped(server, env, good):
    server.routes["/bad/" + FILE] = {"data": b"\x00" * 5000}
    server.routes["/good/" + FILE] = {"data": good}
    d = env / "w"
    p = hub.fetch(_src([f"{server.url}/bad/{FILE}", f"{server.url}/good/{FILE}"]), d, progress=False,
                  notify=lambda m: None)
    assert p.read_bytes() == good and _recorded(d)["sha256"] == hashlib.sha256(good).hexdigest()


def test_later_mismatch_against_the_record_is_refused(server, env, good):
    d = env / "w"
    server.routes["/ok/" + FILE] = {"data": good}
    hub.fetch(_src([f"{server.url}/ok/{FILE}"]), d, progress=False, notify=lambda m: None)
    other = bytearray(good)
    other[-10] ^= 1   # a float of the last blob: still a caffemodel of the net, but not the recorded file
    (d / FILE).unlink()
    server.routes["/ok/" + FILE] = {"data": bytes(other)}
    with pytest.raises(hub.DownloadError, match="recorded in"):
        hub.fetch(_src([f"{server.url}/ok/{FILE}"]), d, progress=False, notify=lambda m: None)
    assert not (d / FILE).exists()


def test_random_or_cut_file_is_never_recorded(env, good, tmp_path):
    """Issue 14/16: a random file under the original name, or a truncated original, records nothing."""
    d = tmp_path / "w"
    d.mkdir()
    mpath = d / "manifest.json"
    hub.write_manifest(hub.build_manifest(), mpath)
    f = d / FILE
    f.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(CaffeModelError):
        hub.verify_or_record(f, mpath, progress=False, notify=lambda m: None)
    f.write_bytes(good[: len(good) // 2])
    with pytest.raises(CaffeModelError):
        hub.verify_or_record(f, mpath, progress=False, notify=lambda m: None)
    assert _recorded(d)["sha256"] is None
    # a caffemodel of another net is not recorded either
    f.write_bytes(caffe_fixture("zoo.caffemodel").read_bytes())
    with pytest.raises(hub.WeightsMismatchError, match="not the weights of fcn8s"):
        hub.verify_or_record(f, mpath, progress=False, notify=lambda m: None)
    # the correct file then records, and verifies after
    f.write_bytes(good)
    assert hub.verify_or_record(f, mpath, progress=False, notify=lambda m: None)["status"] == "recorded"
    assert hub.verify_or_record(f, mpath, progress=False, notify=lambda m: None)["status"] == "verified"
    f.write_bytes(good[:-4] + b"\0\0\0\0")
    with pytest.raises(hub.WeightsMismatchError, match="sha256"):
        hub.verify_or_record(f, mpath, progress=False, notify=lambda m: None)


def test_unknown_file_is_not_checked(env, tmp_path):
    f = tmp_path / "mine.caffemodel"
    f.write_bytes(b"x")
    assert hub.verify_or_record(f, tmp_path / "manifest.json", progress=False)["status"] == "unknown"
    assert not (tmp_path / "manifest.json").exists()


def test_cli_one_error_line_and_exit_2(server, env, good, capsys):
    server.routes["/ok/" + FILE] = {"data": good}
    d = env / "w"
    assert zoo.main_download([FILE, "--dir", str(d), "--base-url", f"{server.url}/ok", "--no-progress"]) == 0
    assert (d / FILE).read_bytes() == good
    capsys.readouterr()
    assert zoo.main_download([FILE, "--dir", str(env / "v"), "--base-url", f"{server.url}/nothing",
                              "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: could not download") and "HTTP 404" in err[-1]
    assert zoo.main_download(["no-such-net"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: no published weights")
    assert zoo.main_download([]) == 2


def test_unwritable_manifest_warns_and_says_unrecorded(env, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the manifest's directory should be")
    mpath = blocker / "manifest.json"  # cannot be created, even by root
    f = tmp_path / "fcn32s-heavy-pascal.caffemodel"
    f.write_bytes(caffe_fixture("fcn32s.caffemodel").read_bytes())
    # the published size of the real file does not fit the fixture: pin nothing for this test
    src = hub.Source(f.name, ("http://127.0.0.1:9/",), net="fcn32s")
    chk = hub.check_file(f, manifest=mpath, progress=False, src=src)
    assert chk.status == "pending"
    hub.check_parses(f, "fcn32s")
    with pytest.warns(UserWarning, match="could not record"):
        assert hub.record(chk, notify=lambda m: None).status == "unrecorded"


def test_regenerating_the_manifest_keeps_records(env, good, tmp_path):
    mpath = tmp_path / "manifest.json"
    f = tmp_path / FILE
    f.write_bytes(good)
    hub.verify_or_record(f, mpath, progress=False, notify=lambda m: None)
    m = json.loads(mpath.read_text())
    again = hub.build_manifest(m)
    assert again["files"][FILE]["sha256"] == hashlib.sha256(good).hexdigest() == m["files"][FILE]["sha256"]
    assert again == m


def test_no_network_is_one_clear_line(env, monkeypatch):
    def no_dns(*a, **k):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(hub.DownloadError) as ei:
        hub.fetch(_src(["http://weights.example/" + FILE]), env / "w", progress=False, notify=lambda m: None)
    msg = str(ei.value)
    assert "\n" not in msg and "host not found (no network" in msg and "http://weights.example/" + FILE in msg


def test_zoo_download_subcommand(server, env, good, capsys):
    from fcn_repro import zoo

    server.routes["/ok/" + FILE] = {"data": good}
    d = env / "w"
    assert zoo.main(["download", FILE, "--dir", str(d), "--base-url", f"{server.url}/ok", "--no-progress"]) == 0
    assert (d / FILE).read_bytes() == good
    assert "recorded, not verified" in capsys.readouterr().err


def test_sources_and_pins_come_from_the_registry():
    from fcn_repro import registry

    for name in ("fcn8s", "fcn32s", "siftflow-fcn16s"):
        w = registry.net(name).weights
        s = hub.source(name)
        assert (s.file, s.urls, s.bytes, s.sha1, s.net) == (w.file, tuple(w.urls), w.bytes, w.sha1, name)
        assert s.urls[0] == registry.BASE_URL + s.file          # the original host first
    assert hub.source("vgg16").file == registry.INIT_WEIGHTS["vgg16"].file
    assert {s.net for s in hub.known_files() if s.net} == {n for n, c in registry.NETS.items() if c.weights}


@pytest.mark.parametrize("net", ["fcn8s", "fcn32s"])
def test_registry_pins_refuse_a_file_that_is_not_the_original(server, tmp_path, monkeypatch, good, net):
    """fcn8s has a published sha1, fcn32s a published size: the fixture served under their names is refused."""
    monkeypatch.setenv("FCN_REPRO_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(hub, "_net_prototxt", lambda n: str(caffe_fixture(f"{n}.prototxt")))
    src = hub.source(net)
    assert src.pinned
    server.routes[f"/m/{src.file}"] = {"data": caffe_fixture(f"{net}.caffemodel").read_bytes()}
    with pytest.raises(hub.DownloadError) as ei:
        hub.download([net], base_url=f"{server.url}/m", progress=False, notify=lambda m: None)
    assert "refused" in str(ei.value) and ("sha1" if src.sha1 else "size") in str(ei.value)
    d = tmp_path / "home" / "weights"
    assert not (d / src.file).exists() and not (d / (src.file + ".part")).exists()


def test_evaluate_finds_a_download_in_the_cache(server, env, good, monkeypatch):
    """Outside a checkout, weights are looked for in the cache (never in the working directory),
    and the listing looks where load() does: a downloaded file is 'present'."""
    from fcn_repro.resolve import listing, resolve

    monkeypatch.setattr(hub, "repo_root", lambda: None)   # no checkout weights/: the cache
    monkeypatch.chdir(env)
    (env / "weights").mkdir()
    (env / "weights" / FILE).write_bytes(good)             # ./weights is not a weights directory
    m = resolve("fcn8s")
    assert m.weights is None and str(env / "home" / "weights" / FILE) in m.weights_error
    assert "python -m fcn_repro.zoo download fcn8s" in m.weights_error
    assert hub.weights_dirs() == [env / "home" / "weights"]
    server.routes["/ok/" + FILE] = {"data": good}
    p = hub.download([FILE], base_url=f"{server.url}/ok", progress=False, notify=lambda m: None)[0]
    assert p == env / "home" / "weights" / FILE
    m = resolve("fcn8s")
    assert m.weights == p and m.weights_how in ("pinned", "recorded")
    row = next(e for e in listing()["nets"] if e["net"] == "fcn8s")
    assert row["weights"]["present"] and row["weights"]["path"] == str(p)


def test_check_parses_names_a_wrong_shape(env):
    # FCN-8s (21 classes) weights against the 60-class PASCAL-Context FCN-8s: same layers, other shapes
    with pytest.raises(hub.WeightsMismatchError, match="not the weights of pascalcontext-fcn8s: layer 'score_fr'"):
        hub.check_parses(caffe_fixture("fcn8s.caffemodel"), "pascalcontext-fcn8s")
    hub.check_parses(caffe_fixture("pascalcontext-fcn8s.caffemodel"), "pascalcontext-fcn8s")
