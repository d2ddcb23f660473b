"""Hostile inputs to the format readers and writers (issue 16, the formats' part).

Every case runs in a fresh subprocess under an address-space limit
(``resource.setrlimit(RLIMIT_AS)``, 1 GiB: the inputs here made the readers
reach 0.4-4.4 GB before) and must end in one project error (a
``FcnReproError``, which is a ``ValueError``) naming the file and the place in
it (byte offset, line, layer, blob or HDF5 path), or in a correct result; the
subprocess must exit normally (no signal, no MemoryError, no foreign
exception). The committed bad-input corpus (tests/corpus) is run the same way.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import caffe_fixture
from fcn_repro import outputs
from fcn_repro.caffe.hdf5 import load_hdf5, save_hdf5
from fcn_repro.caffe.prototxt import Message, write_prototxt
from fcn_repro.caffe.solverstate import SolverStateContents, write_state
from fcn_repro.errors import OutputError

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "corpus"
_spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
mc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mc)

MEM_LIMIT = 1 << 30

_HARNESS = r"""
import json, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from fcn_repro.errors import FcnReproError
ns = {}
try:
    exec(sys.argv[2], ns)
    out = {"ok": True, "result": ns.get("result")}
except FcnReproError as e:
    out = {"ok": False, "type": type(e).__name__, "msg": str(e), "filename": e.filename,
           "where": {k: getattr(e, k) for k in ("offset", "line", "layer", "blob", "field", "h5path")
                     if getattr(e, k, None) is not None}}
print("RESULT " + json.dumps(out, default=repr))
"""


def hostile(code: str, limit: int = MEM_LIMIT, env: dict | None = None) -> dict:
    """Run ``code`` (which may set ``result``) in a subprocess under the memory limit."""
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.update(env or {})
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", _HARNESS, str(limit), code], capture_output=True, text=True,
                       env=e, timeout=300)
    # exit 0 and a result line: no signal, no MemoryError, no exception that is not ours
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-3000:]}"
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, r.stdout[-2000:] + r.stderr[-2000:]
    out = json.loads(line[-1][len("RESULT "):])
    out["seconds"] = time.monotonic() - t0
    return out


def refused(code: str, path: str | Path, *parts: str, where: tuple[str, ...] = (), **kw) -> dict:
    """``code`` must end in a project error naming ``path``, with ``parts`` in the message."""
    out = hostile(code, **kw)
    assert not out["ok"], f"accepted: {out}"
    assert out["filename"] == str(path), out
    assert str(path) in out["msg"], out
    for p in parts:
        assert p in out["msg"], out["msg"]
    for w in where:
        assert w in out["where"], (w, out)
    return out


# ---------------------------------------------------------------- caffemodel

def test_caffemodel_of_empty_layers(tmp_path):
    p = tmp_path / "empty_layers.caffemodel"
    p.write_bytes(b"\xa2\x06\x00" * 1_000_000)    # 3 MB: a million layers of nothing
    out = refused(f"from fcn_repro.caffe import load_weights; load_weights({str(p)!r})", p,
                  "over the limit", "records", where=("offset",))
    assert out["seconds"] < 60
    big = tmp_path / "empty_layers_30mb.caffemodel"
    big.write_bytes(b"\xa2\x06\x00" * 10_000_000)
    refused(f"from fcn_repro.caffe import weights_info; weights_info({str(big)!r})", big, "records",
            where=("offset",))
    # raising the cap, as a user who means it would: the same file then reads (memory grows with it)
    out = hostile(f"from fcn_repro import limits\nfrom fcn_repro.caffe import weights_info\n"
                  f"with limits.override(records=2_000_000):\n"
                  f"    result = len(weights_info({str(p)!r}).layers)", limit=4 << 30)
    assert out == {**out, "ok": True, "result": 1_000_000}


def test_caffemodel_many_value_runs(tmp_path):
    # one blob whose 300k values come as 300k separate packed fields
    run = b"\x2a\x04" + np.float32(1).tobytes()
    blob = mc.shape(300_000) + run * 300_000
    p = tmp_path / "runs.caffemodel"
    p.write_bytes(mc.layer_v2("conv", "Convolution", [blob]))
    refused(f"from fcn_repro.caffe import load_weights; load_weights({str(p)!r})", p, "records",
            where=("offset", "layer", "blob"))


def test_caffemodel_copy_budget(tmp_path):
    # copy=True makes fresh arrays: they are charged to read_bytes, on top of the file's bytes
    p = caffe_fixture("fcn8s.caffemodel")
    refused(f"from fcn_repro.caffe import load_weights; load_weights({str(p)!r}, copy=True)", p,
            "over the limit", "read_bytes", where=("offset", "layer", "blob"),
            env={"FCN_REPRO_MAX_READ_BYTES": str(p.stat().st_size + 4096)})
    refused(f"from fcn_repro.caffe import load_weights; load_weights({str(p)!r})", p,   # the file itself
            "over the limit", "read_bytes", env={"FCN_REPRO_MAX_READ_BYTES": "4K"})
    out = hostile(f"from fcn_repro.caffe import load_weights\nw = load_weights({str(p)!r}, copy=True)\n"
                  "result = sum(a.nbytes for b in w.values() for a in b)")
    assert out["ok"] and out["result"] > 4096


@pytest.mark.parametrize("name", sorted(n for n in mc.cases() if n.endswith(".caffemodel")))
def test_corpus_caffemodels(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(mc.cases()[name])
    refused(f"from fcn_repro.caffe import load_weights; load_weights({str(p)!r})", p, mc.MANIFEST[name])


# ---------------------------------------------------------------- HDF5

def test_hdf5_declared_shape_beyond_the_file(tmp_path):
    p = tmp_path / "fill.caffemodel.h5"
    with h5py.File(p, "w") as f:   # 1.1e9 floats declared, none written: HDF5 would return fill values
        f.create_dataset("data/conv/0", shape=(1 << 30,), dtype="f4")
    assert p.stat().st_size < 10_000
    refused(f"from fcn_repro.caffe import load_weights; load_weights({str(p)!r})", p,
            "/data/conv/0", "more than the file's", where=("h5path", "layer", "blob"))


def test_hdf5_compression_bomb_and_hard_links(tmp_path):
    p = tmp_path / "bomb.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("data/conv/0", data=np.zeros((64 << 20) // 4, np.float32), compression="gzip",
                         chunks=(1 << 20,))
    refused(f"from fcn_repro.caffe import load_weights; load_weights({str(p)!r})", p, "/data/conv/0",
            "expansion", where=("h5path",))
    q = tmp_path / "links.h5"
    with h5py.File(q, "w") as f:
        ds = f.create_dataset("data/a/0", data=np.ones(100_000, np.float32))
        for i in range(200):    # the same 400 KB dataset under 200 names: 80 MB from a 400 KB file
            f[f"data/l{i}/0"] = ds
    refused(f"from fcn_repro.caffe import load_weights; load_weights({str(q)!r})", q, "more than the file's")


def test_hdf5_external_storage_refused(tmp_path):
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    p = tmp_path / "ext.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("data/conv/0", shape=(4,), dtype="<f4", external=[(str(raw), 0, 16)])
    refused(f"from fcn_repro.caffe import load_weights; load_weights({str(p)!r})", p,
            "outside this file", where=("h5path",))


def test_hdf5_corruptions(tmp_path):
    """Bytes overwritten all over a valid file: each read is our error or the right values."""
    src = tmp_path / "good.h5"
    good = {"conv": [np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.ones(2, np.float32)],
            "fc": [np.full((3, 5), 2.0, np.float32)]}
    save_hdf5(src, good)
    data = src.read_bytes()
    rng = np.random.default_rng(0)
    paths = []
    for k in range(40):
        b = bytearray(data)
        at = int(rng.integers(0, len(b) - 16))
        b[at:at + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        if k % 5 == 0:
            b = b[:int(rng.integers(100, len(b)))]      # truncated
        q = tmp_path / f"bad{k}.h5"
        q.write_bytes(bytes(b))
        paths.append(str(q))
    code = f"""
import numpy as np
from fcn_repro.caffe.hdf5 import load_hdf5
from fcn_repro.errors import WeightsError
good = {{k: [np.asarray(a) for a in v] for k, v in {{"conv": [np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.ones(2, np.float32)], "fc": [np.full((3, 5), 2.0, np.float32)]}}.items()}}
result = {{"refused": 0, "same": 0, "other": []}}
for p in {paths!r}:
    try:
        w = load_hdf5(p)
    except WeightsError as e:
        assert e.filename == p and p in str(e), e
        result["refused"] += 1
        continue
    if list(w) == list(good) and all(np.array_equal(a, b) for k in w for a, b in zip(w[k], good[k])):
        result["same"] += 1
    else:
        result["other"].append((p, {{k: [a.shape for a in v] for k, v in w.items()}}))
"""
    out = hostile(code)
    assert out["ok"], out
    # a flip in a value gives other values (a correct read of what is there); nothing else escapes
    assert out["result"]["refused"] + out["result"]["same"] + len(out["result"]["other"]) == 40
    assert out["result"]["refused"] >= 8


def test_corpus_hdf5(tmp_path):
    expect = mc.build_hdf5(tmp_path)
    for fname, part in sorted(expect.items()):
        p = tmp_path / fname
        refused(f"from fcn_repro.caffe import load_weights; load_weights({str(p)!r})", p, part)


# ---------------------------------------------------------------- solver states

def _state_h5(path: Path, **over):
    with h5py.File(path, "w") as f:
        for k, v in {"iter": np.array([5], np.int32), "current_step": np.array([0], np.int32),
                     "learned_net": np.bytes_(b"x.caffemodel")}.items():
            if k not in over:
                f.create_dataset(k, data=v)
        if "history" not in over:
            f.create_dataset("history/0", data=np.ones((2, 3), np.float32))
        for k, v in over.items():
            if callable(v):
                v(f)
            elif v is not None:
                f.create_dataset(k, data=v)


READ_STATE = "from fcn_repro.caffe.solverstate import read_state; s = read_state({p!r}); " \
             "result = (s.state.iter, [h.shape for h in s.state.history])"


@pytest.mark.parametrize("case, parts", [
    ("huge_history", ("/history/0", "more than the file's")),
    ("iter_empty", ("/iter", "iter must be one integer")),
    ("iter_text", ("/iter", "iter must be one integer")),
    ("iter_overflow", ("/iter", "out of range for int32")),
    ("history_dataset", ("/history", "expected a group")),
    ("history_gap", ("not numbered 0..1",)),
    ("history_int", ("history blob 0 holds int64",)),
    ("names_wrong", ("/param_names", "param_names has 2 entries for 1")),
    ("no_iter", ("needs 'iter' and 'history'",)),
])
def test_hostile_solverstate_h5(tmp_path, case, parts):
    p = tmp_path / f"{case}.solverstate.h5"
    over = {
        "huge_history": {"history": lambda f: f.create_dataset("history/0", shape=(1 << 30,), dtype="f4")},
        "iter_empty": {"iter": np.zeros(0, np.int32)},
        "iter_text": {"iter": np.bytes_(b"five")},
        "iter_overflow": {"iter": np.array([1 << 40], np.int64)},
        "history_dataset": {"history": lambda f: f.create_dataset("history", data=np.ones(3))},
        "history_gap": {"history": lambda f: (f.create_dataset("history/0", data=np.ones(2, np.float32)),
                                              f.create_dataset("history/2", data=np.ones(2, np.float32)))},
        "history_int": {"history": lambda f: f.create_dataset("history/0", data=np.ones(2, np.int64))},
        "names_wrong": {"param_names": np.array([b"a/0", b"b/0"])},
        "no_iter": {"iter": None},
    }[case]
    _state_h5(p, **over)
    assert p.stat().st_size < 10_000
    refused(READ_STATE.format(p=str(p)), p, *parts)


def test_hostile_solverstate_npz_and_binary(tmp_path):
    p = tmp_path / "s.npz"
    np.savez(p, current_step=np.array([0]))
    refused(READ_STATE.format(p=str(p)), p, "no 'iter' member")
    np.savez(p, iter=np.zeros(0, np.int32))
    refused(READ_STATE.format(p=str(p)), p, "iter must be one integer")
    np.savez(p, iter=np.array([1]), **{"history/x": np.ones(2, np.float32)})
    refused(READ_STATE.format(p=str(p)), p, "history/0, history/1")
    q = tmp_path / "s.solverstate"
    q.write_bytes(b"\x08\x05\x1a\x05\x3a\x03\x0a\x01\x05")    # iter 5, a history blob of shape (5), no values
    refused(READ_STATE.format(p=str(q)), q, "needs 5", where=("offset", "blob"))
    # and what Caffe would write reads back
    write_state(q, SolverStateContents(3, "n.caffemodel", [np.ones((2, 2), np.float32)], 1))
    out = hostile(READ_STATE.format(p=str(q)))
    assert out["ok"] and out["result"] == [3, [[2, 2]]]


def test_hostile_solverstate_through_the_solver(tmp_path):
    """train --resume path: CaffeSGD.load_state turns every refusal into a SolverError naming the file."""
    p = tmp_path / "bomb.solverstate.h5"
    _state_h5(p, history=lambda f: f.create_dataset("history/0", shape=(1 << 30,), dtype="f4"))
    code = (f"import torch\nfrom fcn_repro.solver import CaffeSGD, SolverParameter\n"
            f"opt = CaffeSGD([torch.nn.Parameter(torch.zeros(2, 3))], SolverParameter(base_lr=0.1))\n"
            f"opt.load_state({str(p)!r})")
    out = refused(code, p, "not an HDF5 solver state we can use", "/history/0", limit=4 << 30)
    assert out["type"] == "SolverError"


# ---------------------------------------------------------------- npz

def test_npz_bombs(tmp_path):
    p = tmp_path / "zeros.npz"
    np.savez_compressed(p, **{"input/data": np.zeros((1 << 30) // 4 + 1000, np.float32)})   # ~4 MB
    assert p.stat().st_size < 8 << 20
    refused(f"from fcn_repro.npz import read_npz; read_npz({str(p)!r})", p, "input/data.npy", "expansion")
    q = tmp_path / "lying.npz"
    hdr = io.BytesIO()      # a header declaring 1e9 floats over 16 bytes of data
    np.lib.format.write_array_header_1_0(hdr, {"descr": "<f4", "fortran_order": False, "shape": (10**9,)})
    with zipfile.ZipFile(q, "w") as z:
        z.writestr("a.npy", hdr.getvalue() + b"\x00" * 16)
    refused(f"from fcn_repro.npz import read_npz; read_npz({str(q)!r})", q, "a.npy", "holds only")
    o = tmp_path / "objects.npz"
    np.savez(o, a=np.array([{"x": 1}], dtype=object))
    refused(f"from fcn_repro.npz import read_npz; read_npz({str(o)!r})", o, "Python objects")
    for name, data in [("junk.npz", b"PK\x03\x04" + b"\x00" * 40), ("text.npz", b"hello")]:
        r = tmp_path / name
        r.write_bytes(data)
        refused(f"from fcn_repro.npz import read_npz; read_npz({str(r)!r})", r, "not a readable")
    good = tmp_path / "good.npz"
    np.savez_compressed(good, a=np.arange(10), b=np.ones((3, 3), np.float32))
    out = hostile(f"from fcn_repro.npz import read_npz; r = read_npz({str(good)!r}); "
                  "result = {k: v.tolist() for k, v in r.items()}")
    assert out["ok"] and out["result"]["a"] == list(range(10))


def test_npz_bad_crc(tmp_path):
    p = tmp_path / "crc.npz"
    np.savez(p, a=np.arange(1000, dtype=np.float64))
    b = bytearray(p.read_bytes())
    i = b.index(b"\x93NUMPY") + 200
    b[i] ^= 0xFF
    p.write_bytes(bytes(b))
    refused(f"from fcn_repro.npz import read_npz; read_npz({str(p)!r})", p, "a.npy", "can not be read")


# ---------------------------------------------------------------- prototxt

def test_prototxt_of_braces(tmp_path):
    p = tmp_path / "braces.prototxt"
    p.write_bytes(b"{" * (20 << 20))
    out = refused(f"from fcn_repro.caffe import parse_prototxt; parse_prototxt({str(p)!r})", p,
                  "text_bytes", where=("line",))
    assert out["seconds"] < 30
    q = tmp_path / "nest.prototxt"
    q.write_bytes(b"a " + b"{ a " * 1_500_000)    # 6 MB, under the byte cap: the depth budget stops it
    refused(f"from fcn_repro.caffe import parse_prototxt; parse_prototxt({str(q)!r})", q,
            "nested deeper than 100", where=("line",), limit=512 << 20)


def test_prototxt_many_fields_bounded(tmp_path):
    p = tmp_path / "fields.prototxt"
    p.write_bytes(b"layer { name: 'x' type: 'ReLU' }\n" + b"a: 1\n" * 1_500_000)   # 7.5 MB
    out = hostile(f"from fcn_repro.caffe.prototxt import parse_text\n"
                  f"result = len(parse_text(open({str(p)!r}, 'rb').read(), schema_type='NetParameter'))",
                  limit=1 << 30)
    assert out["ok"] and out["result"] == 1_500_001


@pytest.mark.parametrize("field, part", [
    ('bias_term: "no"', "expected true or false"), ("num_output: 4.7", "expected an integer"),
    ("kernel_size: 1.5", "expected an integer"), ("stride_w: 9223372036854775807", "out of range for uint32"),
    ("group: -1", "out of range for uint32"), ("pad: 1e30", "expected an integer"),
])
def test_prototxt_typed_values(tmp_path, field, part):
    p = tmp_path / "net.prototxt"
    p.write_text('layer { name: "data" type: "Input" top: "data" }\n'
                 f'layer {{ name: "up" type: "Deconvolution" bottom: "data" top: "up"\n'
                 f'  convolution_param {{ num_output: 2 kernel_size: 4 {field} }} }}\n')
    refused(f"from fcn_repro.caffe import parse_prototxt; parse_prototxt({str(p)!r})", p, part,
            where=("line", "layer", "field"))


@pytest.mark.parametrize("name", sorted(n for n in mc.cases() if n.endswith(".prototxt")))
def test_corpus_prototxts(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(mc.cases()[name])
    refused(f"from fcn_repro.caffe import parse_prototxt; parse_prototxt({str(p)!r})", p, mc.MANIFEST[name],
            where=("line",))


# ---------------------------------------------------------------- writing

_WRITERS = """
import numpy as np
from pathlib import Path
from fcn_repro.caffe.caffemodel import CaffeLayer, write_caffemodel
from fcn_repro.caffe.hdf5 import save_hdf5
from fcn_repro.caffe.solverstate import SolverStateContents, write_state
WEIGHTS = {"conv": [np.ones((600, 1000), np.float32)], "relu": []}     # 2.4 MB
STATE = SolverStateContents(1, "", WEIGHTS["conv"])
WRITERS = {
    "h5": ("w.caffemodel.h5", lambda p: save_hdf5(p, WEIGHTS)),
    "caffemodel": ("w.caffemodel", lambda p: write_caffemodel(p, [CaffeLayer("conv", "", WEIGHTS["conv"])])),
    "state_h5": ("s.solverstate.h5", lambda p: write_state(p, STATE, ["conv/0"])),
    "state_npz": ("s.npz", lambda p: write_state(p, STATE)),
    "state_bin": ("s.solverstate", lambda p: write_state(p, STATE)),
}
"""
_w: dict = {}
exec(_WRITERS, _w)
WEIGHTS, WRITERS = _w["WEIGHTS"], _w["WRITERS"]


def _writers(d: Path):
    return {k: (d / name, fn) for k, (name, fn) in WRITERS.items()}


@pytest.mark.parametrize("kind", ["h5", "caffemodel", "state_h5", "state_npz", "state_bin"])
def test_full_disk_refused_before_writing(tmp_path, monkeypatch, kind):
    path, write = _writers(tmp_path)[kind]
    path.write_bytes(b"previous")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda d: usage._replace(free=1 << 20))
    with pytest.raises(OutputError, match=r"not enough free disk space") as ei:
        write(path)
    assert ei.value.filename == str(path)
    assert path.read_bytes() == b"previous" and sorted(os.listdir(tmp_path)) == [path.name]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (we run as root in CI); skipped where mounting is not permitted."""
    d = tmp_path / "tiny"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"can not mount a small tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


@pytest.mark.parametrize("kind", ["h5", "caffemodel", "state_h5", "state_npz", "state_bin"])
def test_really_full_disk(tiny_disk, kind):
    """On a 1 MiB file system: the free-space check refuses; with the check fooled, the write fails
    mid-way and is still one OutputError in a process that lives on, with nothing left behind."""
    path, _ = _writers(tiny_disk)[kind]
    code = _WRITERS + f"""
from unittest import mock
import fcn_repro.outputs as outputs
name, write = WRITERS[{kind!r}]
path = Path({str(tiny_disk)!r}) / name
try:
    write(path)
except ValueError as e:
    first = str(e)
else:
    first = "written"
assert "not enough free disk space" in first, first
with mock.patch.object(outputs, "check_free_space", lambda p, n: None):
    write(path)
"""
    out = hostile(code, limit=2 << 30)
    assert not out["ok"] and out["type"] == "OutputError" and out["filename"] == str(path), out
    assert "disk filled up" in out["msg"] or "could not write" in out["msg"], out
    assert os.listdir(tiny_disk) == []


def test_prototxt_write_full_disk(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda d: usage._replace(free=1000))
    with pytest.raises(OutputError, match="not enough free disk space"):
        write_prototxt(tmp_path / "n.prototxt", Message(name="n"))
    assert os.listdir(tmp_path) == []


def test_stale_temp_files_of_a_killed_run_are_cleaned(tmp_path):
    target = tmp_path / "w.caffemodel.h5"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()     # a pid that has exited
    stale = tmp_path / f".w.caffemodel.h5.{dead}.0123abcd{outputs.TEMP_SUFFIX}"
    fresh_dead = tmp_path / f".w.caffemodel.h5.{dead}.89abcdef{outputs.TEMP_SUFFIX}"
    alive = tmp_path / f".w.caffemodel.h5.{os.getppid()}.00000000{outputs.TEMP_SUFFIX}"
    other = tmp_path / f".other.h5.{dead}.0123abcd{outputs.TEMP_SUFFIX}"
    for f in (stale, fresh_dead, alive, other):
        f.write_bytes(b"half")
    old = outputs._PROCESS_START - 3600
    for f in (stale, alive, other):
        os.utime(f, (old, old))
    save_hdf5(target, WEIGHTS)
    left = sorted(os.listdir(tmp_path))
    # removed: ours, of this target, older than this process, writer gone; kept: everything else
    assert stale.name not in left
    assert {fresh_dead.name, alive.name, other.name, target.name} <= set(left)
    assert np.array_equal(load_hdf5(target)["conv"][0], WEIGHTS["conv"][0])


def test_interrupted_writes_leave_nothing(tmp_path):
    class Boom(Exception):
        pass
    with pytest.raises(Boom):
        save_hdf5(tmp_path / "x.h5", WEIGHTS, progress=lambda n: (_ for _ in ()).throw(Boom()))
    assert os.listdir(tmp_path) == []


def test_real_archives_and_weights_pass_the_budgets():
    """The budgets refuse nothing real: every Caffe fixture .npz and .h5 reads with the defaults."""
    from conftest import CAFFE_FIXTURES
    from fcn_repro.npz import read_npz
    npz = sorted(CAFFE_FIXTURES.glob("*.npz"))
    h5 = sorted(CAFFE_FIXTURES.glob("*.h5"))
    assert npz and h5
    for p in npz:
        assert read_npz(p)
    for p in h5:
        assert load_hdf5(p)
