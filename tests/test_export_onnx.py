"""ONNX export (fcn_repro.export.to_onnx and python -m fcn_repro.export), run by onnxruntime.

Every Caffe fixture net is exported once (traced at 96x112, batch 2) and run
at 67x91 and 120x100 (the fixtures' two sizes, neither the example's):
within 1e-5 relative of our forward and of Caffe's own scores, argmax
identical. The full-width FCN-8s deploy net, with random weights written by
save_weights, at 500x500 and 375x500. Errors: TRAIN net, a layer without a
translation, an unwritable output (nothing half-written).
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[onnx]')")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[onnx]')")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install -e '.[onnx]')")

from fcn_repro.caffe import save_weights  # noqa: E402
from fcn_repro.caffe.net import Net  # noqa: E402
from fcn_repro.errors import OutputError  # noqa: E402
from fcn_repro.export import ExportError, check_onnx, export_program, to_onnx  # noqa: E402
from fcn_repro.export import onnx_export  # noqa: E402

from conftest import caffe_fixture  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_NETS = ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn-alexnet", "siftflow-fcn8s",
                "nyud-fcn32s-color-hha", "pascalcontext-fcn8s"]


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _session(path) -> "ort.InferenceSession":
    return ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.parametrize("name", FIXTURE_NETS)
def test_fixture_net_onnx_any_size_equals_ours_and_caffe(name, tmp_path):
    net = Net(caffe_fixture(f"{name}.prototxt"), caffe_fixture(f"{name}.caffemodel"))
    io_npz = np.load(caffe_fixture(f"{name}.io.npz"))
    program = export_program(net)  # example: 96x112, batch 2
    path = tmp_path / f"{name}.onnx"
    result = to_onnx(net, path, program=program)
    assert result.dynamic and result.inputs == net.inputs and result.outputs == net.outputs

    model = onnx.load(os.fspath(path))
    assert [i.name for i in model.graph.input] == net.inputs
    assert [o.name for o in model.graph.output] == net.outputs
    for i in model.graph.input:  # batch, height and width are symbolic in the file
        dims = i.type.tensor_type.shape.dim
        assert [bool(dims[k].dim_param) for k in range(4)] == [True, False, True, True]
    ops_used = {n.op_type for n in model.graph.node}
    assert "ConvTranspose" in ops_used and "Dropout" not in ops_used

    sess = _session(path)
    for s in ("s0", "s1"):  # 67x91 and 120x100
        feeds = {b: io_npz[f"{s}/{b}"] for b in net.inputs}
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        with torch.no_grad():
            ours = net(**{b: torch.from_numpy(v) for b, v in feeds.items()})
        for o in net.outputs:
            ref, caffe = ours[o].numpy(), io_npz[f"{s}/{o}"]
            assert got[o].shape == ref.shape == caffe.shape
            assert _rel(got[o], ref) < 1e-5, (s, o)
            assert _rel(got[o], caffe) < 1e-5, (s, o)
            assert np.array_equal(got[o].argmax(1), ref.argmax(1))
            assert np.array_equal(got[o].argmax(1), caffe.argmax(1))

    # the torch.export program the file came from: saved, loaded, run at another size and batch
    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    loaded = torch.export.load(buf).module()
    xs = [torch.from_numpy(np.repeat(io_npz[f"s1/{b}"], 3, axis=0)) for b in net.inputs]
    with torch.no_grad():
        got = loaded(*xs)
    for o in net.outputs:
        assert got[o].shape[0] == 3 and _rel(got[o][1:2].numpy(), io_npz[f"s1/{o}"]) < 1e-5


@pytest.mark.slow
def test_full_width_fcn8s_deploy_500x500_and_375x500(tmp_path):
    prototxt = ROOT / "prototxt" / "fcn8s" / "deploy.prototxt"
    net = Net(prototxt)
    g = torch.Generator().manual_seed(0)
    weights = {}
    for layer, params in net.params.items():
        blobs = []
        for p in params:
            if p.dim() > 1:  # He-scaled, so that 500x500 scores stay finite and informative
                fan_in = p[0].numel()
                blobs.append((torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5).numpy())
            else:
                blobs.append((torch.randn(p.shape, generator=g) * 0.1).numpy())
        weights[layer] = blobs
    wpath = tmp_path / "fcn8s-random.caffemodel"
    save_weights(wpath, weights)
    net = Net(prototxt, wpath)
    path = tmp_path / "fcn8s.onnx"
    to_onnx(net, path)
    rows = check_onnx(path, net, [(500, 500), (375, 500)])
    assert [r["size"] for r in rows] == [(500, 500), (375, 500)]
    for r in rows:
        assert r["max_rel"] < 1e-5, r
        # random weights make near-ties: a pixel in 10^5 may flip at 1e-7 differences
        assert r["argmax_agree"] > 0.9999, r


def test_static_export_and_fast_depthwise(tmp_path):
    # fcn-alexnet's upsampling weight is diagonal (bilinear): --fast makes it depthwise
    net = Net(caffe_fixture("fcn-alexnet.prototxt"), caffe_fixture("fcn-alexnet.caffemodel"))
    io_npz = np.load(caffe_fixture("fcn-alexnet.io.npz"))
    path = tmp_path / "alex.onnx"
    result = to_onnx(net, path, static=(67, 91), fast=True)
    assert not result.dynamic and result.depthwise == ["upscore"]
    model = onnx.load(os.fspath(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert (dims[2].dim_value, dims[3].dim_value) == (67, 91)
    groups = [a.i for n in model.graph.node if n.op_type == "ConvTranspose" for a in n.attribute if a.name == "group"]
    assert groups == [21]
    got = _session(path).run(None, {"data": io_npz["s0/data"]})[0]
    assert _rel(got, io_npz["s0/score"]) < 1e-5
    # the net given to to_onnx is left as it was
    assert net.layer("upscore").group == 1 and tuple(net.params["upscore"][0].shape) == (21, 21, 63, 63)


POOLS = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 8 dim: 8 } } }
layer { name: "mpool" type: "Pooling" bottom: "data" top: "mpool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "apool" type: "Pooling" bottom: "mpool" top: "apool"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "mpool2" type: "Pooling" bottom: "data" top: "mpool2"
        pooling_param { pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 3 stride_w: 2 pad_h: 1 pad_w: 2 } }
layer { name: "mpool3" type: "Pooling" bottom: "data" top: "mpool3"
        pooling_param { pool: MAX kernel_size: 2 stride: 3 } }
"""


def test_padded_ceil_pooling_follows_caffe_at_every_size(tmp_path):
    # Padded MAX and AVE pooling with CEIL rounding: Caffe drops a last window
    # that would start in the bottom/right padding; without padding it keeps a
    # last window that starts past the image (mpool3 at H = 0 mod 3: -FLT_MAX),
    # which PyTorch's and ONNX's ceil_mode drop. One file, odd and even sizes.
    from fcn_repro.caffe.shapes import caffe_pool_out

    net = Net(POOLS)
    path = tmp_path / "pools.onnx"
    # traced at 13x16, a size where PyTorch's rule and Caffe's agree for every layer
    to_onnx(net, path, example=(torch.randn(2, 2, 13, 16),))
    sess = _session(path)
    names = [o.name for o in sess.get_outputs()]
    assert names == ["apool", "mpool2", "mpool3"]
    dropped = 0
    for h in range(3, 16):
        w = h + 4
        x = torch.randn(2, 2, h, w)
        with torch.no_grad():
            ref = net(x)
        got = dict(zip(names, sess.run(None, {"data": x.numpy()})))
        for o in names:
            assert got[o].shape == tuple(ref[o].shape), (o, h, w)
        assert _rel(got["apool"], ref["apool"].numpy()) < 1e-6, (h, w)
        for o in ("mpool2", "mpool3"):  # a maximum is exact in any runtime
            assert np.array_equal(got[o], ref[o].numpy()), (o, h, w)
        assert got["mpool2"].shape[2:] == (caffe_pool_out(h, 2, 3, 1, True, True),
                                           caffe_pool_out(w, 3, 2, 2, True, True))
        assert got["mpool3"].shape[2] == caffe_pool_out(h, 2, 3, 0, True, False)
        dropped += caffe_pool_out(h, 2, 3, 1, True, True) != caffe_pool_out(h, 2, 3, 1, True, False)
    assert dropped > 0  # the sizes include ones where Caffe's rule drops a window


def test_cli_check_and_names(tmp_path):
    out = tmp_path / "sub" / "fcn16s.onnx"
    r = subprocess.run([sys.executable, "-m", "fcn_repro.export", str(caffe_fixture("fcn16s.prototxt")),
                        "--weights", str(caffe_fixture("fcn16s.caffemodel")), "-o", str(out), "--static",
                        "60x70", "--check"], capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr
    assert "inputs ['data'], outputs ['score']" in r.stdout
    assert "check 60x70 score: max relative difference" in r.stdout and "argmax agreement 100.0000%" in r.stdout
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["fcn16s.onnx"]


def test_cli_user_errors_exit_2(tmp_path):
    base = [sys.executable, "-m", "fcn_repro.export"]
    r = subprocess.run(base + [str(caffe_fixture("fcn16s.prototxt")), "-o", str(tmp_path / "a.onnx")],
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "--weights" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run(base + ["no-such-net", "-o", str(tmp_path / "a.onnx")],
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 2 and "unknown net 'no-such-net'" in r.stderr and "prototxt" in r.stderr
    assert not any(tmp_path.iterdir())


def test_train_net_refused(tmp_path):
    net = Net(caffe_fixture("fcn16s.train.prototxt"), phase="TRAIN")
    with pytest.raises(ExportError, match=r"TRAIN phase"):
        to_onnx(net, tmp_path / "t.onnx")
    assert not any(tmp_path.iterdir())


def test_layer_without_translation_is_named(tmp_path):
    net = Net(caffe_fixture("fcn16s.train.prototxt"), phase="TEST",
              input_shapes={"data": (1, 3, 64, 64), "label": (1, 1, 64, 64)})
    with pytest.raises(ExportError, match=r"fcn16s\.train\.prototxt: layer 'loss': type SoftmaxWithLoss "
                                          r"has no export.*deploy net"):
        to_onnx(net, tmp_path / "t.onnx")
    assert not any(tmp_path.iterdir())


def test_unwritable_output_leaves_nothing(tmp_path):
    net = Net(caffe_fixture("fcn16s.prototxt"), caffe_fixture("fcn16s.caffemodel"))
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should be")
    with pytest.raises(OutputError, match=r"not-a-dir/out\.onnx: can not create its directory"):
        to_onnx(net, blocker / "out.onnx", static=(40, 40))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-dir"]


def test_failed_write_leaves_no_half_file(tmp_path, monkeypatch):
    net = Net(caffe_fixture("fcn16s.prototxt"), caffe_fixture("fcn16s.caffemodel"))
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous")
    real_open = open

    class Full(io.RawIOBase):
        def __init__(self, f):
            self.f = f

        def write(self, b):
            self.f.write(bytes(b)[:100])
            raise OSError(28, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
            return False

    def fake_open(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        return Full(f) if "w" in mode and str(file).endswith(".fcnpart") else f

    monkeypatch.setattr(onnx_export, "open", fake_open, raising=False)
    with pytest.raises(OutputError, match="No space left on device"):
        to_onnx(net, target, static=(40, 40))
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_opencv_onnx_importer_runs_the_file(tmp_path):
    cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed (test-only: pip install opencv-python)")
    net = Net(caffe_fixture("fcn8s.prototxt"), caffe_fixture("fcn8s.caffemodel"))
    io_npz = np.load(caffe_fixture("fcn8s.io.npz"))
    path = tmp_path / "fcn8s.onnx"
    if int(cv2.__version__.split(".")[0]) >= 5:
        to_onnx(net, path)   # OpenCV 5 imports the any-size file
    else:
        # OpenCV 4's ONNX importer refuses dynamic shapes (its Shape node parser
        # asserts !isDynamicShape): it gets the --static file at the input's size
        to_onnx(net, path, static=tuple(io_npz["s1/data"].shape[2:]))
    dnn = cv2.dnn.readNetFromONNX(os.fspath(path))
    dnn.setInput(io_npz["s1/data"], "data")
    got = dnn.forward("score")
    assert got.shape == io_npz["s1/score"].shape
    assert _rel(got, io_npz["s1/score"]) < 1e-4


def test_cli_file_carries_classes_preprocessing_and_named_axes(tmp_path):
    """A consumer without fcn_repro reads from the file what the net needs: the class names,
    each input's channel order, mean and scale; the dynamic axes have readable names."""
    import fcn_repro
    from fcn_repro.export.onnx_export import read_metadata

    out = tmp_path / "sample.onnx"
    r = subprocess.run([sys.executable, "-m", "fcn_repro.export", "sample", "-o", str(out)],
                       capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr
    model = fcn_repro.load("sample")
    meta = read_metadata(out)
    assert meta["heads"]["score"]["names"] == model.meta["categories"]
    (part,) = meta["inputs"]["data"]
    assert part["channels"] == "BGR" and part["scale"] == 1.0
    np.testing.assert_allclose(part["mean"], model.transforms().mean)
    # the formula the metadata states is what the package feeds the net
    rgb = (np.arange(4 * 5 * 3) % 256).astype(np.uint8).reshape(4, 5, 3)
    stated = ((rgb[:, :, ::-1].astype(np.float64) - np.asarray(part["mean"])) * part["scale"]).transpose(2, 0, 1)
    np.testing.assert_allclose(model.transforms()(rgb)["data"], stated, rtol=0, atol=1e-4)
    proto = onnx.load(str(out))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*proto.graph.input, *proto.graph.output]}
    assert dims["data"] == ["batch", 3, "height", "width"]
    assert dims["score"] == ["batch", len(model.meta["categories"]), "height", "width"]
