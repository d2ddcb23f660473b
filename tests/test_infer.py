"""infer end to end: label PNGs, overlays, the per-image class summary, error paths."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn_repro import registry
from fcn_repro import infer as inf
from fcn_repro.data import resource_path
from fcn_repro.data.transforms import voc_palette

SAMPLE = resource_path("sample")
CAFFE = np.load(SAMPLE / "sample.caffe.npz")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FCN_REPRO_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("FCN_REPRO_HOME", str(tmp_path / "cache"))


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
        ov = np.array(Image.open(out / f"{i}_overlay.png"))
        rgb = np.array(Image.open(path).convert("RGB"))
        h, w = rgb.shape[:2]
        assert ov.shape[0] > h and ov.shape[1] >= w          # the overlay, its legend below
        top, strip = ov[:h, :w].astype(int), ov[h:]
        # background (class 0, black) is left as the photo; the classes at half opacity
        bg = lab == 0
        assert np.array_equal(top[bg], rgb[bg])
        fg = ~bg
        pal = voc_palette().astype(int)
        assert np.abs(top[fg] - np.rint(0.5 * rgb[fg] + 0.5 * pal[lab[fg]])).max() <= 1
        # the legend: a swatch of each class present, in its colour (exact pixels inside the patch)
        for c in np.unique(lab):
            assert (strip.reshape(-1, 3) == pal[c]).all(1).sum() >= 20, c
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
    from fcn_repro.predict import Transforms

    assert Transforms.for_net(registry.net("siftflow-fcn8s")).mean[0] == pytest.approx(114.578)
    assert Transforms.for_net(registry.net("fcn8s")).mean[2] == pytest.approx(122.67891434)
    assert Transforms.for_net(registry.net("pascalcontext-fcn8s")).mean.dtype == np.float32


def _jpeg(path, h=40, w=56, seed=0, exif_orientation=None):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {}
    if exif_orientation is not None:
        ex = Image.Exif()
        ex[0x0112] = exif_orientation
        kw["exif"] = ex
    Image.fromarray(a).save(path, quality=95, **kw)
    return path


def test_infer_directories_globs_and_no_overwrites(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _jpeg(a / "x.jpg", seed=1)
    _jpeg(b / "x.jpg", seed=2)             # same stem from another directory
    _jpeg(b / "x-2.jpg", seed=3)           # the name the second x would take
    _jpeg(a / "y_overlay.jpg", seed=4)     # its label file is y's overlay name
    _jpeg(a / "y.jpg", seed=5)
    (a / "notes.txt").write_text("not an image")
    out = tmp_path / "o"
    rc = inf.main([str(a), str(b / "*.jpg"), "--net", "sample", "-o", str(out), "--device", "cpu",
                   "--save-scores"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())["images"]
    assert len(summary) == 5
    written = [v["outputs"]["score"][k] for v in summary.values() for k in ("labels", "overlay", "scores")]
    assert len(set(written)) == len(written) == 15            # no two outputs share a file
    assert sorted(p.name for p in out.iterdir()) == sorted([Path(w).name for w in written] + ["summary.json"])
    for src, v in summary.items():
        rec = v["outputs"]["score"]
        lab = np.array(Image.open(rec["labels"]))
        sc = np.load(rec["scores"])
        assert sc.dtype == np.float32 and sc.shape == (5,) + lab.shape
        assert np.array_equal(sc.argmax(0), lab)
        # each output belongs to its own image: the label of a fresh run on that image alone
        assert lab.shape == np.array(Image.open(src)).shape[:2]


def test_infer_applies_exif_orientation(tmp_path):
    p = _jpeg(tmp_path / "r.jpg", h=30, w=50, exif_orientation=6)   # stored 50 wide, shown 30 wide
    res = inf.infer([str(p)], net="sample", outdir=str(tmp_path / "o"), out=io.StringIO())
    assert res[str(p)]["size"] == [50, 30]
    assert np.array(Image.open(tmp_path / "o" / "r.png")).shape == (50, 30)
    assert Image.open(tmp_path / "o" / "r_overlay.png").size[1] > 50      # upright, with the legend below
    res = inf.infer([str(p)], net="sample", outdir=str(tmp_path / "o2"), out=io.StringIO(), legend=False)
    assert Image.open(tmp_path / "o2" / "r_overlay.png").size == (30, 50)


def test_infer_skips_unreadable_images_with_a_warning(tmp_path, capsys):
    d = tmp_path / "in"
    good = _jpeg(d / "good.jpg")
    (d / "junk.jpg").write_bytes(b"not a jpeg at all" * 10)
    cut = _jpeg(d / "cut.jpg", h=64, w=64, seed=7)
    cut.write_bytes(cut.read_bytes()[:300])
    rc = inf.main([str(d), "--net", "sample", "-o", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "warning: skipped" in err and "junk.jpg" in err and "cut.jpg" in err and "Traceback" not in err
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert list(s["images"]) == [str(good)]
    assert sorted(Path(x["image"]).name for x in s["skipped"]) == ["cut.jpg", "junk.jpg"]


def test_infer_cuda_without_cuda_is_a_clean_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    img = _jpeg(tmp_path / "x.jpg")
    rc = inf.main([str(img), "--net", "sample", "-o", str(tmp_path / "o"), "--device", "cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("error: --device cuda: CUDA is not available here") and "--device cpu" in err[0]
    assert not (tmp_path / "o").exists()


def test_infer_nothing_matching_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert inf.main([str(tmp_path / "empty"), "--net", "sample", "-o", str(tmp_path / "o")]) == 2
    assert "no image files" in capsys.readouterr().err


def test_infer_json_report_and_outputs_checked_first(tmp_path, capsys):
    img = _jpeg(tmp_path / "in" / "x.jpg")
    # --json into a directory that is a file: refused before any work, nothing written
    (tmp_path / "file").write_text("")
    rc = inf.main([str(img), "--net", "sample", "-o", str(tmp_path / "o"), "--json", str(tmp_path / "file" / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --json")
    assert not (tmp_path / "o").exists()
    # --json -: the report on stdout (valid JSON), the per-image lines on stderr
    rc = inf.main([str(img), "--net", "sample", "-o", str(tmp_path / "o"), "--json", "-"])
    cap = capsys.readouterr()
    assert rc == 0
    report = json.loads(cap.out)
    assert report == json.loads((tmp_path / "o" / "summary.json").read_text())
    assert list(report["images"]) == [str(img)] and report["net"] == "sample"
    assert f"{img} (56x40):" in cap.err
    # --json FILE: the same report in FILE
    rc = inf.main([str(img), "--net", "sample", "-o", str(tmp_path / "o2"), "--json", str(tmp_path / "r.json")])
    assert rc == 0
    assert json.loads((tmp_path / "r.json").read_text())["images"][str(img)]["size"] == [40, 56]


def test_infer_version_and_bad_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        inf.main(["--version"])
    assert e.value.code == 0 and "fcn_repro" in capsys.readouterr().out
    img = _jpeg(tmp_path / "x.jpg")
    for opt in (["--batch-size", "0"], ["--alpha", "2"], ["--device", "tpu"]):
        rc = inf.main([str(img), "--net", "sample", "-o", str(tmp_path / "o")] + opt)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {opt[0]}")
    assert not (tmp_path / "o").exists()
