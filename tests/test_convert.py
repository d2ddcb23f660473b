"""python -m fcn_repro.convert: conversions, the table/JSON, the --prototxt check, exit codes, atomicity."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import caffe_fixture
from fcn_repro.caffe import load_weights, save_weights, weights_info
from fcn_repro.caffe.match import legacy_fits
from fcn_repro.conversion import check_weights
from fcn_repro.convert import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def h5_tree(path):
    out = {}
    with h5py.File(path, "r") as f:
        for name, g in f["data"].items():
            out[name] = {k: (ds.shape, ds.dtype.str, ds[()].tobytes()) for k, ds in g.items()}
    return out


def test_caffemodel_to_h5_equals_caffes_own_h5(tmp_path, capsys):
    out = tmp_path / "fcn8s.caffemodel.h5"
    rc, stdout, _ = run(capsys, caffe_fixture("fcn8s.caffemodel"), "-o", out)
    assert rc == 0 and f"wrote {out}" in stdout
    # same groups (every layer, as Net::ToHDF5), same datasets, same bytes as Caffe wrote
    assert h5_tree(out) == h5_tree(caffe_fixture("fcn8s.caffemodel.h5"))
    # and our file keeps the net's layer order
    with h5py.File(out, "r") as f:
        assert list(f["data"].keys()) == [lay.name for lay in weights_info(caffe_fixture("fcn8s.caffemodel")).layers]


def test_caffemodel_to_caffemodel_is_byte_identical(tmp_path, capsys):
    src = caffe_fixture("fcn8s.caffemodel")
    out = tmp_path / "copy.caffemodel"
    rc, _, _ = run(capsys, src, "-o", out, "-q")
    assert rc == 0 and out.read_bytes() == src.read_bytes()


def test_h5_to_caffemodel_with_types_from_prototxt(tmp_path, capsys):
    out = tmp_path / "from_h5.caffemodel"
    rc, stdout, _ = run(capsys, caffe_fixture("fcn8s.caffemodel.h5"), "-o", out,
                        "--prototxt", caffe_fixture("fcn8s.prototxt"), "--strict")
    assert rc == 0 and "passed" in stdout
    a, b = load_weights(caffe_fixture("fcn8s.caffemodel")), load_weights(out)
    assert sorted(a) == sorted(b)
    for k in a:
        assert [x.tobytes() for x in a[k]] == [y.tobytes() for y in b[k]]
    types = {lay.name: lay.type for lay in weights_info(out).layers}
    assert types["conv1_1"] == "Convolution" and types["upscore2"] == "Deconvolution"


def test_v1_to_h5_gives_caffes_loaded_shapes(tmp_path, capsys):
    """V1 legacy blobs become the shapes Caffe gives them once loaded (vgg-v1.npz holds those)."""
    ref = {}
    with np.load(caffe_fixture("vgg-v1.npz")) as z:
        for k in z.files:
            if k.startswith("param/"):
                ref[k[len("param/"):]] = z[k]
    for extra in ([], ["--prototxt", caffe_fixture("vgg-v1.prototxt")]):
        out = tmp_path / f"vgg{len(extra)}.h5"
        rc, stdout, _ = run(capsys, caffe_fixture("vgg-v1.caffemodel"), "-o", out, *extra)
        assert rc == 0, stdout
        with h5py.File(out, "r") as f:
            for key, a in ref.items():
                layer, i = key.split("/")
                ds = f[f"data/{layer}/{i}"]
                assert ds.shape == a.shape, (key, ds.shape, a.shape)
                assert ds[()].tobytes() == a.astype(np.float32).tobytes()


def test_v1_to_caffemodel_keeps_legacy_fields(tmp_path, capsys):
    out = tmp_path / "vgg.caffemodel"
    rc, _, _ = run(capsys, caffe_fixture("vgg-v1.caffemodel"), "-o", out)
    assert rc == 0
    info = weights_info(out)
    assert info.format == "caffemodel-v2"
    assert all(b.legacy_shape for lay in info.layers for b in lay.blobs)
    # with the net, blobs take the net's shapes (BlobShape), as Caffe would save them after loading
    out2 = tmp_path / "vgg2.caffemodel"
    rc, _, _ = run(capsys, caffe_fixture("vgg-v1.caffemodel"), "-o", out2, "--prototxt", caffe_fixture("vgg-v1.prototxt"))
    assert rc == 0
    w = load_weights(out2)
    assert w["fc6"][0].shape == (32, 1024) and w["fc6"][1].shape == (32,) and w["conv1_1"][0].shape == (8, 3, 3, 3)


def test_legacy_blob_of_unknown_type_needs_prototxt_for_h5(tmp_path, capsys):
    from fcn_repro.caffe.caffemodel import CaffeLayer, write_caffemodel
    src = tmp_path / "odd.caffemodel"
    write_caffemodel(src, [CaffeLayer("sc", "Scale", [np.ones((1, 1, 1, 4), np.float32)], legacy=[True])])
    out = tmp_path / "odd.h5"
    rc, _, err = run(capsys, src, "-o", out)
    assert rc == 2 and "sc[0] (Scale, 1x1x1x4)" in err and "--prototxt" in err
    assert not out.exists()
    rc, _, _ = run(capsys, src, "-o", out, "--keep-legacy-shapes")
    assert rc == 0 and load_weights(out)["sc"][0].shape == (1, 1, 1, 4)


def test_table_and_totals(capsys):
    rc, stdout, _ = run(capsys, caffe_fixture("zoo.caffemodel"))
    assert rc == 0
    info = weights_info(caffe_fixture("zoo.caffemodel"))
    lines = stdout.splitlines()
    assert lines[1].split() == ["layer", "blob", "shape", "dtype", "bytes"]
    nblobs = sum(len(lay.blobs) for lay in info.layers)
    body = lines[3:3 + nblobs]
    first = [lay for lay in info.layers if lay.blobs][0]
    assert body[0].split()[:4] == [first.name, "0", "x".join(map(str, first.blobs[0].shape)), "float32"]
    total = lines[3 + nblobs]
    assert total.startswith(f"total: {nblobs} blobs") and f"{info.nbytes:,} bytes" in total


def test_json_report(capsys):
    rc, stdout, _ = run(capsys, caffe_fixture("vgg-v1.caffemodel"), "--json", "-")
    assert rc == 0
    rep = json.loads(stdout)
    assert rep["input_format"] == "caffemodel-v1" and rep["ok"] and rep["check"] is None and not rep["written"]
    fc6 = [b for b in rep["blobs"] if b["layer"] == "fc6" and b["blob"] == 0][0]
    assert fc6 == {"layer": "fc6", "type": "InnerProduct", "blob": 0, "shape": [1, 1, 32, 1024],
                   "stored_shape": [1, 1, 32, 1024], "legacy_shape": True, "dtype": "float32", "bytes": 131072}
    assert rep["totals"]["bytes"] == sum(b["bytes"] for b in rep["blobs"])
    assert rep["totals"]["values"] == rep["totals"]["bytes"] // 4
    assert "relu1_1" in rep["empty_layers"]


def test_check_fails_on_shape_mismatch_and_writes_nothing(tmp_path, capsys):
    w = {k: list(v) for k, v in load_weights(caffe_fixture("fcn8s.caffemodel")).items()}
    w["score_fr"][0] = np.zeros((21, 16, 3, 3), np.float32)
    bad = tmp_path / "bad.caffemodel"
    save_weights(bad, w)
    out = tmp_path / "out.h5"
    rc, _, err = run(capsys, bad, "-o", out, "--prototxt", caffe_fixture("fcn8s.prototxt"))
    assert rc == 1
    assert f"error: {bad}: layer 'score_fr' blob 0: shape mismatch" in err
    assert "(21, 16, 3, 3)" in err and "expects (21, 16, 1, 1)" in err and f"not written: {out}" in err
    assert not out.exists() and os.listdir(tmp_path) == ["bad.caffemodel"]
    rc, stdout, _ = run(capsys, bad, "--prototxt", caffe_fixture("fcn8s.prototxt"), "--json", "-")
    rep = json.loads(stdout)
    assert rc == 1 and not rep["ok"] and rep["check"]["mismatched"] == [
        {"layer": "score_fr", "blob": 0, "stored": [21, 16, 3, 3], "expected": [21, 16, 1, 1]}]


def test_check_blob_count_and_unmatched_layers(tmp_path, capsys):
    w = {k: list(v) for k, v in load_weights(caffe_fixture("fcn8s.caffemodel")).items()}
    w["upscore2"].append(np.zeros(21, np.float32))            # bias_term false: no second blob
    del w["fc7"]                                               # missing in the file
    w["extra_layer"] = [np.zeros(3, np.float32)]               # not in the net
    path = tmp_path / "w.caffemodel"
    save_weights(path, w)
    rc, _, err = run(capsys, path, "--prototxt", caffe_fixture("fcn8s.prototxt"))
    assert rc == 1 and "layer 'upscore2': 2 blobs in the weights" in err and "1 parameter blobs" in err
    del w["upscore2"][1]
    save_weights(path, w)
    rc, stdout, err = run(capsys, path, "--prototxt", caffe_fixture("fcn8s.prototxt"))
    # a net layer the file lacks fails the check, naming it (it would score garbage)
    assert rc == 1 and "error: net layers with parameters not in" in err and "fc7" in err and "FAILED" in stdout
    assert "warning: layers of" in err and "extra_layer" in err
    w["fc7"] = load_weights(caffe_fixture("fcn8s.caffemodel"))["fc7"]
    save_weights(path, w)
    rc, stdout, err = run(capsys, path, "--prototxt", caffe_fixture("fcn8s.prototxt"))
    assert rc == 0 and "passed" in stdout and "warning: layers of" in err and "extra_layer" in err
    rc, _, err = run(capsys, path, "--prototxt", caffe_fixture("fcn8s.prototxt"), "--strict")
    assert rc == 1 and "error: layers of" in err and "extra_layer" in err


def test_check_function_legacy_rule():
    from fcn_repro.caffe.caffemodel import BlobInfo, LayerInfo, ModelInfo

    def info(shape, legacy):
        return ModelInfo("f", "x", "", (LayerInfo("ip", "InnerProduct", (BlobInfo(0, shape, "float32", 0, legacy, 0),)),), 0)
    exp = {"ip": [(32, 1024)]}
    assert not check_weights(info((1, 1, 32, 1024), True), exp).failed(True)
    # the same shape from a BlobShape (or HDF5) is not legacy: Caffe refuses it
    assert check_weights(info((1, 1, 32, 1024), False), exp).mismatched == [("ip", 0, (1, 1, 32, 1024), (32, 1024))]
    assert check_weights(info((1, 32, 1, 1024), True), exp).mismatched
    assert legacy_fits((1, 1, 1, 5), (5,)) and legacy_fits((2, 3, 4, 5), (2, 3, 4, 5))
    assert not legacy_fits((1, 1, 5, 1), (5,)) and not legacy_fits((1, 1, 1, 1, 5), (5,))
    assert not legacy_fits((1, 1, 2, 3), (1, 1, 1, 2, 3))


def test_bad_input_and_usage_exit_2(tmp_path, capsys):
    rc, _, err = run(capsys, tmp_path / "nope.caffemodel")
    assert rc == 2 and "nope.caffemodel: no such weights file" in err
    txt = tmp_path / "net.caffemodel"
    txt.write_text('name: "x"\nlayer { name: "a" }\n')
    rc, _, err = run(capsys, txt, "-o", tmp_path / "o.h5")
    assert rc == 2 and f"{txt}: byte 0: not a Caffe weights file" in err and "text" in err
    rc, _, err = run(capsys, caffe_fixture("zoo.caffemodel"), "-o", tmp_path / "o.bin")
    assert rc == 2 and "unknown weights suffix" in err
    rc, _, err = run(capsys, caffe_fixture("zoo.caffemodel"), "--strict")
    assert rc == 2 and "--strict needs --prototxt" in err
    bad_net = tmp_path / "bad.prototxt"
    bad_net.write_text("layer { name: 'a' \n")
    rc, stdout, err = run(capsys, caffe_fixture("zoo.caffemodel"), "--prototxt", bad_net, "--json", "-")
    assert rc == 2 and f"{bad_net}:2:1" in err and json.loads(stdout)["ok"] is False
    assert sorted(os.listdir(tmp_path)) == ["bad.prototxt", "net.caffemodel"]


def test_interrupted_write_leaves_no_partial_output(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.caffemodel"
    out.write_bytes(b"previous")
    import fcn_repro.caffe.caffemodel as cm
    real = cm._layer_pieces
    calls = []

    def pieces(layer):   # the writer gets half way, then the machine "fails"
        calls.append(layer.name)
        if len(calls) > 10:
            raise KeyboardInterrupt
        return real(layer)
    monkeypatch.setattr(cm, "_layer_pieces", pieces)
    from fcn_repro.cli import EXIT_INTERRUPTED
    assert main([str(caffe_fixture("fcn8s.caffemodel")), "-o", str(out)]) == EXIT_INTERRUPTED   # one line, 130
    assert len(calls) == 11 and "interrupted (Ctrl-C)" in capsys.readouterr().err
    assert out.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["out.caffemodel"]

    # an h5 write failing after some datasets are on disk leaves nothing either
    import fcn_repro.caffe.hdf5 as h5mod
    h5out = tmp_path / "o.h5"
    n = []

    def boom(_):
        n.append(1)
        if len(n) == 5:
            raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        h5mod.save_hdf5(h5out, load_weights(caffe_fixture("fcn8s.caffemodel")), progress=boom)
    assert len(n) == 5 and not h5out.exists() and sorted(os.listdir(tmp_path)) == ["out.caffemodel"]


def test_cli_entry_point_subprocess(tmp_path):
    out = tmp_path / "zoo.h5"
    r = subprocess.run([sys.executable, "-m", "fcn_repro.convert", str(caffe_fixture("zoo.caffemodel")),
                        "-o", str(out), "--json", "-"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["written"] and rep["output_bytes"] == out.stat().st_size
