"""Tiles through the Predictor and ``infer --tile``, scores written block by block, and input sanity."""
from __future__ import annotations

import gc
import json
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import fcn_repro
from conftest import caffe_fixture
from fcn_repro import infer, limits
from fcn_repro.caffe import Net
from fcn_repro.data.transforms import ImageReadError, as_rgb_array, read_image, read_rgb
from fcn_repro.scorefile import FORMATS, ScoreFile, save_scores
from fcn_repro.tiles import Geometry


@pytest.fixture(scope="module")
def model():
    return fcn_repro.load("sample")


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


# ------------------------------------------------------------------ Predictor

def test_predictor_tiles_equal_whole(model):
    img = _img(545, 23)
    whole = model.predictor(tile=0).predict(img, scores=True, probabilities=True)
    assert whole.tiling is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiled = model.predictor(tile=16).predict(img, scores=True, probabilities=True)
    assert tiled.tiling is not None and tiled.tiling.count >= 2
    assert any("too small" in str(w.message) for w in caught)       # enlarged, and said so
    assert np.array_equal(tiled.label, whole.label)
    assert _rel(tiled.scores["score"], whole.scores["score"]) < 1e-6
    assert _rel(tiled.probabilities["score"], whole.probabilities["score"]) < 1e-6


def test_predictor_automatic_tiling_over_the_budget(model, tmp_path):
    img = _img(23, 545, 1)
    assert model.predictor().tile_plan((23, 545)) is None                 # fits the default budget
    need = Geometry(model.net).peak_bytes(23, 545)
    with limits.override(forward_bytes=need // 2):
        pred = model.predictor(batch_size=4).predict([img, img[:, :40]], scores=True)
    assert pred[0].tiling is not None and "budget" in pred[0].tiling.notes[0]
    assert pred[1].tiling is None                                        # a small one still runs whole
    whole = model.predictor(tile=0).predict(img, scores=True)
    assert np.array_equal(pred[0].label, whole.label)
    assert _rel(pred[0].scores["score"], whole.scores["score"]) < 1e-6


def test_predictor_scores_to_a_sink(model, tmp_path):
    img = _img(545, 9, 2)
    files = []

    def sink(src, head, shape):
        files.append(ScoreFile(tmp_path, shape))
        return files[-1]

    pred = next(model.predictor(tile=16).iter([img], scores=True, score_sink=sink))
    assert pred.scores["score"] is files[0]
    whole = model.predictor(tile=0).predict(img, scores=True)
    assert _rel(files[0].read(), whole.scores["score"]) < 1e-6
    out = files[0].commit(tmp_path / "x.npy")
    assert np.load(out).shape == whole.scores["score"].shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]       # no temporary file left


# ------------------------------------------------------------------ infer CLI

def _png(tmp_path, arr, name="big.png"):
    p = tmp_path / name
    Image.fromarray(arr).save(p)
    return p


def test_infer_tile_vs_whole_with_a_prototxt_and_weights(tmp_path, capsys):
    p = _png(tmp_path, _img(1000, 17, 3))
    proto, w = caffe_fixture("fcn8s.prototxt"), caffe_fixture("fcn8s.caffemodel")
    args = [str(p), "--net", str(proto), "--weights", str(w), "--save-scores"]
    assert infer.main(args + ["--tile", "256", "-o", str(tmp_path / "a")]) == 0
    text = capsys.readouterr()
    assert "tiled:" in text.out and "too small" in text.err
    assert infer.main(args + ["--tile", "0", "-o", str(tmp_path / "b")]) == 0
    assert "tiled:" not in capsys.readouterr().out
    a, b = np.load(tmp_path / "a" / "big.npy"), np.load(tmp_path / "b" / "big.npy")
    assert a.dtype == np.float32 and a.shape == b.shape == (21, 1000, 17)
    assert _rel(a, b) < 1e-6 and np.array_equal(a.argmax(0), b.argmax(0))
    assert np.array_equal(np.array(Image.open(tmp_path / "a" / "big.png")),
                          np.array(Image.open(tmp_path / "b" / "big.png")))
    assert not [f for f in (tmp_path / "a").iterdir() if f.name.startswith(".")]


def test_infer_streams_an_image_over_the_budget(tmp_path, capsys, monkeypatch):
    """By default an image over the forward budget is streamed layer by layer: the same labels and scores as
    the whole image, the output and summary.json say so, the scores are written band by band."""
    p = _png(tmp_path, _img(700, 41, 5))
    proto, w = caffe_fixture("fcn8s.prototxt"), caffe_fixture("fcn8s.caffemodel")
    args = [str(p), "--net", str(proto), "--weights", str(w), "--save-scores", "--no-progress"]
    need = Geometry(Net(str(proto), str(w))).peak_bytes(700, 41)
    monkeypatch.setenv("FCN_REPRO_MAX_FORWARD_BYTES", str(need // 3))
    assert infer.main(args + ["-o", str(tmp_path / "a"), "--fast"]) == 0
    text = capsys.readouterr()
    assert "streamed layer by layer in bands of" in text.out and "over the budget" in text.err
    tiles = json.loads((tmp_path / "a" / "summary.json").read_text())["images"][str(p)]["tiles"]
    assert tiles["streamed_rows"] > 0 and tiles["count"] >= 2
    monkeypatch.delenv("FCN_REPRO_MAX_FORWARD_BYTES")
    assert infer.main(args + ["--tile", "0", "-o", str(tmp_path / "b"), "--fast"]) == 0
    a, b = np.load(tmp_path / "a" / "big.npy"), np.load(tmp_path / "b" / "big.npy")
    assert a.shape == b.shape == (21, 700, 41)
    assert _rel(a, b) < 1e-6 and np.array_equal(a.argmax(0), b.argmax(0))
    assert np.array_equal(np.array(Image.open(tmp_path / "a" / "big.png")),
                          np.array(Image.open(tmp_path / "b" / "big.png")))


def test_infer_two_input_nyud_streamed_and_whole(tmp_path, capsys, monkeypatch):
    """A net of two image reads (NYUDv2 color + HHA, a prototxt path): the IMAGE arguments are the colour
    images, --input hha=DIR pairs each with its HHA file by name; streamed equals whole."""
    rng = np.random.default_rng(7)
    for d in ("color", "hha"):
        (tmp_path / d).mkdir()
        for n in ("a", "b"):
            Image.fromarray(rng.integers(0, 255, (300, 41, 3), dtype=np.uint8)).save(tmp_path / d / f"{n}.png")
    proto, w = caffe_fixture("nyud-fcn32s-color-hha.prototxt"), caffe_fixture("nyud-fcn32s-color-hha.caffemodel")
    args = [str(tmp_path / "color"), "--net", str(proto), "--weights", str(w), "--save-scores", "--no-progress"]
    assert infer.main(args + ["-o", str(tmp_path / "o")]) == 2
    assert "--input hha=FILE_OR_DIR" in capsys.readouterr().err
    assert infer.main(args + ["--input", "depth=x", "-o", str(tmp_path / "o")]) == 2
    assert "this net reads color, hha" in capsys.readouterr().err
    assert infer.main(args + ["--input", f"hha={tmp_path / 'hha' / 'a.png'}", "-o", str(tmp_path / "o")]) == 2
    assert "give a directory" in capsys.readouterr().err
    args += ["--input", f"hha={tmp_path / 'hha'}"]
    assert infer.main(args + ["--tile", "0", "-o", str(tmp_path / "whole")]) == 0
    assert "streamed" not in capsys.readouterr().out
    need = Geometry(Net(str(proto), str(w))).peak_bytes(300, 41)
    monkeypatch.setenv("FCN_REPRO_MAX_FORWARD_BYTES", str(need // 3))
    assert infer.main(args + ["-o", str(tmp_path / "streamed")]) == 0
    assert "streamed layer by layer" in capsys.readouterr().out
    for n in ("a", "b"):
        a, b = np.load(tmp_path / "whole" / f"{n}.npy"), np.load(tmp_path / "streamed" / f"{n}.npy")
        assert a.shape == (40, 300, 41) and _rel(a, b) < 1e-6 and np.array_equal(a.argmax(0), b.argmax(0))
    # the HHA image matters: other HHA files give other scores
    (tmp_path / "hha2").mkdir()
    for n in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (300, 41, 3), dtype=np.uint8)).save(tmp_path / "hha2" / f"{n}.png")
    monkeypatch.delenv("FCN_REPRO_MAX_FORWARD_BYTES")
    assert infer.main(args[:-1] + [f"hha={tmp_path / 'hha2'}", "-o", str(tmp_path / "other")]) == 0
    assert _rel(np.load(tmp_path / "other" / "a.npy"), np.load(tmp_path / "whole" / "a.npy")) > 1e-3


def test_infer_a_prototxt_whose_input_is_not_named_data(tmp_path, capsys):
    """A deploy prototxt of one's own whose one input blob has another name is a colour net on that blob."""
    from fcn_repro.caffe import save_weights
    proto = tmp_path / "own.prototxt"
    proto.write_text('name: "own"\n'
                     'layer { name: "in" type: "Input" top: "image" input_param { shape { dim: 1 dim: 3 dim: 8 '
                     'dim: 8 } } }\n'
                     'layer { name: "c" type: "Convolution" bottom: "image" top: "score" convolution_param { '
                     'num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }\n')
    net = Net(str(proto), seed=0)
    save_weights(tmp_path / "own.caffemodel", {"c": [p.detach().numpy() for p in net.parameters()]})
    p = _png(tmp_path, _img(30, 20, 6), "i.png")
    assert infer.main([str(p), "--net", str(proto), "--weights", str(tmp_path / "own.caffemodel"), "--save-scores",
                       "-o", str(tmp_path / "o")]) == 0, capsys.readouterr().err
    got = np.load(tmp_path / "o" / "i.npy")
    from fcn_repro import registry
    x = np.asarray(Image.open(p), np.float32)[:, :, ::-1] - registry.dataset("voc").means["data"]   # BGR - mean
    with torch.inference_mode():
        ref = net(image=torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), np.float32))[None])["score"][0]
    assert _rel(got, ref.numpy()) < 1e-6


@pytest.mark.parametrize("ending", [e for e in FORMATS if e != ".npy"])
def test_infer_scores_formats(tmp_path, ending):
    p = _png(tmp_path, _img(40, 30, 4), "s.png")
    assert infer.main([str(p), "--net", "sample", "--save-scores", "--scores-format", ending, "--tile", "0",
                       "-o", str(tmp_path / "o")]) == 0
    ref = fcn_repro.load("sample").predictor(tile=0).predict(p, scores=True).scores["score"]
    got = np.load(tmp_path / "o" / f"s{ending}")
    got = got["scores"] if ending.endswith(".npz") else got
    assert got.dtype == (np.float16 if ".f16" in ending else np.float32)
    assert np.allclose(got, ref, rtol=1e-3, atol=1e-2 * np.abs(ref).max())


def test_infer_bad_tile(tmp_path, capsys):
    p = _png(tmp_path, _img(20, 20), "s.png")
    assert infer.main([str(p), "--net", "sample", "--tile", "-3", "-o", str(tmp_path / "o")]) == 2
    assert "--tile -3" in capsys.readouterr().err


# ------------------------------------------------------------------ score files

def test_scorefile_blocks_and_cleanup(tmp_path):
    a = np.random.default_rng(0).standard_normal((3, 50, 70)).astype(np.float32)
    for ending in FORMATS:
        f = ScoreFile(tmp_path, a.shape, ending)
        f[:, 0:20, :] = a[:, 0:20]
        f[:, 20:50, 0:33] = a[:, 20:50, 0:33]
        f[:, 20:50, 33:70] = a[:, 20:50, 33:70]
        out = f.commit(tmp_path / f"x{ending}")
        got = np.load(out)
        got = got["scores"] if ending.endswith(".npz") else got
        assert got.dtype == FORMATS[ending][0] and np.allclose(got, a, atol=1e-3 if ".f16" in ending else 0)
        save_scores(a, tmp_path / f"y{ending}", ending)
        again = np.load(tmp_path / f"y{ending}")
        assert np.array_equal(again["scores"] if ending.endswith(".npz") else again, got)
    with pytest.raises(ValueError):
        ScoreFile(tmp_path, a.shape)[:, 0:2, 0:2] = a[:, :3, :2]
    dropped = ScoreFile(tmp_path, a.shape)
    del dropped
    gc.collect()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{s}{e}" for s in "xy" for e in FORMATS)


# ------------------------------------------------------------------ input sanity

def _png16(path, arr):
    """A 16-bit PNG (grey (H, W) or RGB (H, W, 3)) written byte by byte."""
    h, w = arr.shape[:2]
    colour = 2 if arr.ndim == 3 else 0
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_16_bit_pngs_read_with_their_values(tmp_path):
    v8 = np.arange(0, 256, 17, dtype=np.uint16).reshape(2, 8)
    grey = read_rgb(_png16(tmp_path / "g.png", v8 * 257))             # an 8-bit image stored at 16 bits
    assert grey.dtype == np.uint8 and grey.shape == (2, 8, 3)
    assert np.array_equal(grey[:, :, 0], v8) and np.array_equal(grey[:, :, 2], v8)
    ramp = np.array([[0, 255, 256, 40000, 65535]], np.uint16)
    assert read_rgb(_png16(tmp_path / "r.png", ramp))[0, :, 1].tolist() == [0, 0, 1, 156, 255]
    rgb = np.stack([v8 * 257, 65535 - v8 * 257, v8 * 100], -1)
    got = read_rgb(_png16(tmp_path / "c.png", rgb))                   # colour: PIL's high byte, the same rule
    assert np.array_equal(got, (rgb >> 8).astype(np.uint8))
    assert np.array_equal(read_image(Image.open(tmp_path / "g.png")), grey)


def test_image_arrays_converted_or_refused():
    rgb = _img(6, 5)
    assert as_rgb_array(rgb) is not None and np.array_equal(as_rgb_array(rgb), rgb)
    grey = rgb[:, :, 0]
    assert np.array_equal(as_rgb_array(grey), np.repeat(grey[:, :, None], 3, 2))
    assert np.array_equal(as_rgb_array(np.dstack([rgb, np.full((6, 5), 7, np.uint8)])), rgb)      # RGBA
    with pytest.warns(UserWarning, match="channels-first"):
        assert np.array_equal(as_rgb_array(rgb.transpose(2, 0, 1)), rgb)
    assert np.array_equal(as_rgb_array(rgb.astype(np.uint16) * 257), rgb)
    assert np.array_equal(as_rgb_array(rgb.astype(np.float32)), rgb.astype(np.float32))
    with pytest.raises(ImageReadError, match=r"within \[0, 1\].*255"):
        as_rgb_array(rgb / 255.0)
    for bad in (rgb.astype(np.int32) * 2, np.full((4, 4, 3), np.nan), np.zeros((5, 6, 7)), np.zeros((2, 3, 4, 5)),
                np.zeros((4, 4), bool)):
        with pytest.raises(ImageReadError):
            as_rgb_array(bad)


def test_predictor_refuses_or_converts_arrays(model):
    rgb = _img(30, 40, 5)
    ref = model.predict(rgb).label
    with pytest.warns(UserWarning, match="channels-first"):
        assert np.array_equal(model.predict(rgb.transpose(2, 0, 1)).label, ref)
    with pytest.raises(ImageReadError, match="255"):
        model.predict(rgb / 255.0)
    assert model.predict(rgb[:, :, 0]).label.shape == (30, 40)
    assert np.array_equal(model.predict(np.dstack([rgb, rgb[:, :, :1]])).label, ref)


def test_geometry_of_the_sample_and_fast(model):
    fast = fcn_repro.load("sample", fast=True)
    assert Geometry(fast.net).stride == Geometry(model.net).stride == (32, 32)
    img = _img(545, 11, 6)
    a = fast.predictor(tile=16).predict(img, scores=True)
    b = fast.predictor(tile=0).predict(img, scores=True)
    assert a.tiling is not None and np.array_equal(a.label, b.label)
    assert _rel(a.scores["score"], b.scores["score"]) < 1e-6
    assert isinstance(torch.from_numpy(a.scores["score"]), torch.Tensor)
