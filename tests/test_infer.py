"""infer end to end: label PNGs, overlays, the per-image class summary, error paths."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from fcn_repro import infer as inf
from fcn_repro.data import resource_path
from fcn_repro.data.transforms import voc_palette

SAMPLE = resource_path("sample")
CAFFE = np.load(SAMPLE / "sample.caffe.npz")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FCN_REPRO_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("FCN_REPRO_CACHE", str(tmp_path / "cache"))


def test_infer_sample_model_writes_labels_overlays_summary(tmp_path, capsys):
    imgs = []
    for i in ("s0002", "s0009"):
        dst = tmp_path / "in" / f"{i}.jpg"
        dst.parent.mkdir(exist_ok=True)
        shutil.copy(SAMPLE / "sample" / "JPEGImages" / f"{i}.jpg", dst)
        imgs.append(str(dst))
    rc = inf.main(imgs + ["--net", "sample", "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert rc == 0
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    printed = capsys.readouterr().out
    for i, path in zip(("s0002", "s0009"), imgs):
        lab_im = Image.open(out / f"{i}.png")
        assert lab_im.mode == "P"
        assert np.array_equal(np.array(lab_im.getpalette()).reshape(-1, 3)[:256], voc_palette())
        lab = np.array(lab_im)
        caffe = CAFFE[f"pred/{i}"]
        ok = (lab == caffe) | (CAFFE[f"margin/{i}"] < 1e-3)
        assert ok.all()
        ov = Image.open(out / f"{i}_overlay.png")
        rgb = np.array(Image.open(path).convert("RGB"))
        assert ov.mode == "RGB" and ov.size == (rgb.shape[1], rgb.shape[0])
        # background (class 0, black) at half opacity halves the image
        bg = lab == 0
        assert np.abs(np.array(ov)[bg].astype(int) - np.rint(rgb[bg] * 0.5)).max() <= 1
        classes = summary["images"][path]["outputs"]["score"]["classes"]
        counts = np.bincount(lab.ravel(), minlength=5)
        assert [c["class"] for c in classes] == [int(c) for c in np.argsort(-counts, kind="stable") if counts[c]]
        assert sum(c["fraction"] for c in classes) == pytest.approx(1.0)
        assert {c["name"] for c in classes} <= {"background", "disc", "square", "triangle", "ring"}
        top = classes[0]
        assert f"{top['name']} {100 * top['fraction']:.1f}%" in printed


def test_infer_missing_default_weights_exit_2(tmp_path, capsys):
    img = tmp_path / "x.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    rc = inf.main([str(img), "--net", "fcn8s", "-o", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "weights" / "fcn8s-heavy-pascal.caffemodel") in err
    assert "http://dl.caffe.berkeleyvision.org/fcn8s-heavy-pascal.caffemodel" in err
    assert "--net sample" in err
    assert not (tmp_path / "o").exists()


def test_infer_missing_image_exit_2(tmp_path, capsys):
    rc = inf.main([str(tmp_path / "nope.jpg"), "--net", "sample", "-o", str(tmp_path / "o")])
    assert rc == 2
    assert "nope.jpg" in capsys.readouterr().err


def test_infer_library_with_prototxt_path(tmp_path):
    proto = tmp_path / "net.prototxt"
    shutil.copy(SAMPLE / "fcn8s-shapes.prototxt", proto)
    img = SAMPLE / "sample" / "JPEGImages" / "s0005.jpg"
    res = inf.infer([str(img)], net=str(proto), weights=str(SAMPLE / "fcn8s-shapes.caffemodel"),
                    outdir=str(tmp_path / "o"), out=io.StringIO())
    classes = res[str(img)]["outputs"]["score"]["classes"]
    assert all(c["name"].startswith("class ") for c in classes)  # no class list for a bare prototxt
    lab = np.array(Image.open(tmp_path / "o" / "s0005.png"))
    assert ((lab == CAFFE["pred/s0005"]) | (CAFFE["margin/s0005"] < 1e-3)).all()


def test_summarize():
    lab = np.array([[0, 0, 3], [3, 3, 1]])
    s = inf.summarize(lab, ["bg", "a", "b", "c"])
    assert [(c["name"], c["pixels"]) for c in s] == [("c", 3), ("bg", 2), ("a", 1)]
    assert s[0]["fraction"] == pytest.approx(0.5)
    assert inf.summarize(np.array([7]))[0]["name"] == "class 7"


def test_means_follow_the_dataset():
    from fcn_repro import zoo

    assert inf.MEANS[zoo.get("siftflow-fcn8s").dataset][0] == pytest.approx(114.578)
    assert inf.MEANS[zoo.get("fcn8s").dataset][2] == pytest.approx(122.67891434)
    assert inf.MEANS[zoo.get("pascalcontext-fcn8s").dataset].dtype == np.float32
