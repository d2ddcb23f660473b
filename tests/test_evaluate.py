"""evaluate end to end on generated VOC/SIFT Flow/NYUDv2-layout data; error paths; zoo and manifest."""
from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import fcn_repro.evaluate as ev
from fcn_repro import evaluation, hub, registry
from fcn_repro.caffe import fcn_nets, save_weights
from fcn_repro.data import Sample, resource_path
from fcn_repro.data.transforms import read_label_png
from fcn_repro.metrics import absent_classes, fast_hist, scores

REPO = Path(__file__).resolve().parent.parent
SAMPLE = resource_path("sample")
CAFFE = np.load(SAMPLE / "sample.caffe.npz")


def _net_cls():
    from fcn_repro.caffe import Net

    return Net


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No test reads or writes the user's weights/ or cache."""
    monkeypatch.setenv("FCN_REPRO_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("FCN_REPRO_HOME", str(tmp_path / "cache"))


def make_sample_voc(dst: Path, ids=("s0000", "s0003", "s0007", "s0012", "s0020"), split="val") -> Path:
    """A VOC-layout directory holding some of the bundled images under new names."""
    (dst / "JPEGImages").mkdir(parents=True)
    (dst / "SegmentationClass").mkdir()
    (dst / "ImageSets" / "Segmentation").mkdir(parents=True)
    names = []
    for k, i in enumerate(ids):
        n = f"img{k}_{i}"
        shutil.copy(SAMPLE / "sample" / "JPEGImages" / f"{i}.jpg", dst / "JPEGImages" / f"{n}.jpg")
        shutil.copy(SAMPLE / "sample" / "SegmentationClass" / f"{i}.png", dst / "SegmentationClass" / f"{n}.png")
        names.append(n)
    (dst / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return dst


def _caffe_id(name: str) -> str:
    return name.split("_", 1)[1]


# ---------------------------------------------------------------- VOC layout, sample model

def test_evaluate_on_generated_voc_layout(tmp_path):
    data = make_sample_voc(tmp_path / "voc")
    out = io.StringIO()
    rep = ev.evaluate(net="sample", data=str(data), split="val", progress=False, out=out,
                      save_predictions=str(tmp_path / "pred"), json_path=str(tmp_path / "r.json"))
    assert rep["images"] == 5 and rep["world_size"] == 1
    head = rep["heads"]["score"]
    assert head["classes"] == ["background", "disc", "square", "triangle", "ring"]
    # The set's matrix is the sum of Caffe's predictions on these images (pixels where Caffe's
    # own margin is < 1e-3 may differ; there are none in this subset)
    want = np.zeros((5, 5), np.int64)
    for n in (p.stem for p in (data / "JPEGImages").iterdir()):
        cid = _caffe_id(n)
        assert (CAFFE[f"margin/{cid}"] >= 1e-3).all()
        want += fast_hist(read_label_png(data / "SegmentationClass" / f"{n}.png"), CAFFE[f"pred/{cid}"], 5)
        # --save-predictions: palette PNGs of the argmax
        saved = Image.open(tmp_path / "pred" / f"{n}.png")
        assert saved.mode == "P"
        assert np.array_equal(np.array(saved), CAFFE[f"pred/{cid}"])
    assert np.array_equal(head["hist"], want)
    s = scores(want)
    assert head["mean_iu"] == pytest.approx(s["mean_iu"], abs=1e-12)
    # --json holds everything printed
    js = json.loads((tmp_path / "r.json").read_text())
    assert js["heads"]["score"]["hist"] == want.tolist()
    assert js["heads"]["score"]["mean_iu"] == pytest.approx(s["mean_iu"])
    assert js["heads"]["score"]["iu"] == pytest.approx(s["iu"].tolist())
    assert js["images"] == 5 and js["images_per_s"] > 0 and js["split"] == "val"
    text = out.getvalue()
    assert "triangle" in text and f"{100 * s['mean_iu']:.4f}" in text and "images/s" in text
    assert "NOT PASCAL" not in text  # user data: not the bundled-sample banner


def test_cli_limit_json_and_prototxt_path(tmp_path, capsys):
    """--net as a prototxt path with --weights in another format (.h5 written by save_weights)."""
    from fcn_repro.caffe import load_weights

    data = make_sample_voc(tmp_path / "voc", ids=("s0001", "s0002", "s0004"))
    proto = tmp_path / "net.prototxt"
    shutil.copy(SAMPLE / "fcn8s-shapes.prototxt", proto)
    w = tmp_path / "w.h5"
    save_weights(w, load_weights(SAMPLE / "fcn8s-shapes.caffemodel"))
    rc = ev.main(["--net", str(proto), "--weights", str(w), "--data", str(data), "--split", "val",
                  "--limit", "2", "--json", str(tmp_path / "o.json"), "--no-progress", "--device", "cpu"])
    assert rc == 0
    js = json.loads((tmp_path / "o.json").read_text())
    assert js["images"] == 2 and js["limit"] == 2
    want = sum(fast_hist(read_label_png(data / "SegmentationClass" / f"{n}.png"), CAFFE[f"pred/{_caffe_id(n)}"], 5)
               for n in ("img0_s0001", "img1_s0002"))
    assert js["heads"]["score"]["hist"] == want.tolist()
    assert "mean IU" in capsys.readouterr().out


def test_cli_limit_on_the_sample_compares_like_with_like(tmp_path, capsys):
    """--limit N on the bundled sample compares with Caffe's predictions on the same N images."""
    rc = ev.main(["--net", "sample", "--limit", "3", "--no-progress", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "identical to Caffe's on the same 3 images" in out and "DIFFERENT" not in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["images"] == 3 and rep["caffe"]["subset"] and rep["caffe"]["hist_equal"]
    assert rep["caffe"]["hist"] == rep["heads"]["score"]["hist"]
    assert sum(map(sum, rep["caffe"]["hist"])) < sum(map(sum, CAFFE["hist"].tolist()))


def test_cli_embedded_default_limited(tmp_path, capsys):
    """`--net fcn8s` with no data and no weights runs the bundled sample and says so."""
    rc = ev.main(["--net", "fcn8s", "--limit", "3", "--no-progress", "--device", "cpu", "--json", str(tmp_path / "s.json")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "NOT PASCAL VOC" in text and "synthetic shapes" in text
    assert "pixel agreement with Caffe" in text
    assert "fcn8s-heavy-pascal.caffemodel" in text and "--data /path/to/VOCdevkit/VOC2011" in text
    js = json.loads((tmp_path / "s.json").read_text())
    assert js["caffe"]["pixels"] == sum(CAFFE[f"pred/s000{i}"].size for i in range(3))
    assert js["caffe"]["differ"] == js["caffe"]["differ_margin_lt_1e-3"]


def test_fast_forward_gives_caffe_predictions(tmp_path):
    """--fast (fcn_repro.fast) on the sample: Caffe's labels except where Caffe's margin < 1e-3."""
    data = make_sample_voc(tmp_path / "voc", ids=("s0010", "s0016"))
    rep = ev.evaluate(net="sample", data=str(data), split="val", progress=False, out=io.StringIO(), fast=True,
                      save_predictions=str(tmp_path / "p"))
    assert rep["fast"] is True and rep["images"] == 2
    for n in ("img0_s0010", "img1_s0016"):
        cid = _caffe_id(n)
        ours = np.array(Image.open(tmp_path / "p" / f"{n}.png"))
        assert ((ours == CAFFE[f"pred/{cid}"]) | (CAFFE[f"margin/{cid}"] < 1e-3)).all()


# ---------------------------------------------------------------- error paths (exit 2)

def test_missing_weights_and_data_exit_2(tmp_path, capsys):
    rc = ev.main(["--net", "fcn8s", "--data", str(tmp_path / "VOC2011"), "--no-progress"])
    assert rc == ev.EXIT_MISSING == 2
    err = capsys.readouterr().err
    # what is missing, where it was looked for, how to get it: for both
    assert str(tmp_path / "weights" / "fcn8s-heavy-pascal.caffemodel") in err
    assert "http://dl.caffe.berkeleyvision.org/fcn8s-heavy-pascal.caffemodel" in err
    assert f"VOC directory not found: {tmp_path / 'VOC2011'}" in err
    assert "JPEGImages/<id>.jpg" in err and "host.robots.ox.ac.uk" in err


def test_missing_data_only(tmp_path, capsys):
    rc = ev.main(["--net", "sample", "--data", str(tmp_path / "none"), "--no-progress"])
    assert rc == 2
    assert "VOC directory not found" in capsys.readouterr().err
    # a split whose files are missing
    data = make_sample_voc(tmp_path / "voc", ids=("s0001",))
    (data / "JPEGImages" / "img0_s0001.jpg").unlink()
    rc = ev.main(["--net", "sample", "--data", str(data), "--split", "val", "--no-progress"])
    assert rc == 2
    assert "img0_s0001.jpg" in capsys.readouterr().err


def test_no_data_for_a_real_net(tmp_path, capsys):
    w = tmp_path / "weights"
    w.mkdir()
    (w / "fcn32s-heavy-pascal.caffemodel").write_bytes(b"x")
    rc = ev.main(["--net", "fcn32s", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no data given" in err and "VOCdevkit/VOC2011" in err and "weights for" not in err


def test_unknown_net_and_missing_prototxt(tmp_path, capsys):
    assert ev.main(["--net", "fcn7s", "--data", str(tmp_path)]) == 2
    assert "known nets" in capsys.readouterr().err
    assert ev.main(["--net", str(tmp_path / "x.prototxt"), "--weights", "w"]) == 2
    assert "deploy prototxt not found" in capsys.readouterr().err
    proto = tmp_path / "n.prototxt"
    shutil.copy(SAMPLE / "fcn8s-shapes.prototxt", proto)
    assert ev.main(["--net", str(proto), "--data", str(tmp_path)]) == 2
    assert "--weights FILE" in capsys.readouterr().err


def test_weights_of_another_net_are_refused(tmp_path, capsys):
    """A weights file that lacks the net's layers would score garbage: a user error (exit 2) naming them."""
    data = make_sample_voc(tmp_path / "voc", ids=("s0001",))
    w = tmp_path / "partial.caffemodel"
    from fcn_repro.caffe import load_weights

    ws = load_weights(SAMPLE / "fcn8s-shapes.caffemodel")
    ws.pop("score_fr")
    save_weights(w, ws)
    rc = ev.main(["--net", "sample", "--weights", str(w), "--data", str(data), "--split", "val", "--no-progress"])
    assert rc == 2
    assert "score_fr" in capsys.readouterr().err


# ---------------------------------------------------------------- distributed (torchrun, 2 CPU processes)

_DRIVER = """
import json, sys
import torch.distributed as dist
from fcn_repro import cli
import fcn_repro.evaluate as ev
data, out = sys.argv[1], sys.argv[2]
cli.dist_setup("cpu")   # the entry point starts the process group; the library never does
# 1. --limit 1 on 2 processes: rank 1 has no image and no matrix of its own
r = ev.evaluate(net="sample", data=data, split="val", limit=1, device="cpu", progress=False,
                out=open("/dev/null", "w"))
if dist.get_rank() == 0:
    json.dump({"hist": r["heads"]["score"]["hist"].tolist(), "images": r["images"]}, open(out + "/limit1.json", "w"))
# 2. the CLI as a user runs it under torchrun (tears the process group down at the end)
sys.exit(ev.main(["--net", "sample", "--data", data, "--split", "val", "--no-progress", "--device", "cpu",
                  "--json", out + "/two.json", "--save-predictions", out + "/p2"]
                 + (["--report", out + "/rep", "--gallery", "1"] if len(sys.argv) > 3 else [])))
"""


def test_distributed_two_processes_equal_one(tmp_path):
    """torchrun, 2 CPU processes (gloo): the summed matrix equals the 1-process run."""
    data = make_sample_voc(tmp_path / "voc")  # 5 images: shards of 3 and 2
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    report = importlib.util.find_spec("matplotlib") is not None   # the page's gallery: both shards
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(driver), str(data), str(tmp_path)] + (["report"] if report else [])
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("mean IU") == 1  # only rank 0 reports
    two = json.loads((tmp_path / "two.json").read_text())
    one = ev.evaluate(net="sample", data=str(data), split="val", progress=False, out=io.StringIO())
    assert two["world_size"] == 2 and two["images"] == 5
    assert np.array_equal(np.array(two["heads"]["score"]["hist"]), one["heads"]["score"]["hist"])
    assert two["heads"]["score"]["mean_iu"] == pytest.approx(one["heads"]["score"]["mean_iu"], abs=0)
    assert len(list((tmp_path / "p2").glob("*.png"))) == 5  # both shards saved theirs
    lim = json.loads((tmp_path / "limit1.json").read_text())
    lab = read_label_png(data / "SegmentationClass" / "img0_s0000.png")
    assert lim["images"] == 1
    assert lim["hist"] == fast_hist(lab, CAFFE["pred/s0000"], 5).tolist()
    if report:   # the worst and best of all 5 images, not of rank 0's 3: as one process finds them
        ev.evaluate(net="sample", data=str(data), split="val", progress=False, out=io.StringIO(), workers=0,
                    report_dir=str(tmp_path / "rep1"), gallery=1)
        page = (tmp_path / "rep" / "index.html").read_text()
        page1 = (tmp_path / "rep1" / "index.html").read_text()
        ids = lambda t: re.findall(r'<div class="rowhead">([^<]*)<b>', t)  # noqa: E731
        assert ids(page) == ids(page1) and len(ids(page)) == 2 and "(5 images ranked)" in page


# ---------------------------------------------------------------- two heads (SIFT Flow), two inputs (NYUDv2)

def _random_net(tmp_path, name):
    """A reduced-width generated net with random weights written as a .caffemodel."""
    proto = tmp_path / f"{name}.prototxt"
    proto.write_text(fcn_nets.net_text(name, "deploy", widths=fcn_nets.NETS[name].fixture_widths, input_shape=(8, 8)))
    net = _net_cls()(str(proto))
    g = torch.Generator().manual_seed(0)
    weights = {layer: [torch.randn(p.shape, generator=g) * 0.3 for p in ps] for layer, ps in net.params.items()}
    w = tmp_path / f"{name}.caffemodel"
    save_weights(w, weights)
    return proto, w


def _direct_predictions(proto, w, feeds):
    net = _net_cls()(str(proto), weights=str(w))
    net.eval()
    with torch.inference_mode():
        out = net.forward(**{k: torch.from_numpy(v).unsqueeze(0) for k, v in feeds.items()})
    return {b: t[0].argmax(0).numpy() for b, t in out.items()}


def _siftflow_layout(tmp_path):
    sub = "spatial_envelope_256x256_static_8outdoorcategories"
    root = tmp_path / "sift"
    rng = np.random.default_rng(3)
    ids = ["coast_a1", "street_b2"]
    for i in ids:
        (root / "Images" / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (21, 26, 3), dtype=np.uint8)).save(root / "Images" / sub / f"{i}.jpg")
        for d, hi in (("SemanticLabels", 8), ("GeoLabels", 4)):
            (root / d / sub).mkdir(parents=True, exist_ok=True)
            lab = rng.integers(0 if d == "SemanticLabels" else -1, hi, (21, 26)).astype(np.int32)
            if d == "GeoLabels":
                lab[lab == 0] = 1
            scipy.io.savemat(root / d / sub / f"{i}.mat", {"S": lab})
    (root / "test.txt").write_text("\n".join(ids))
    return root


def test_siftflow_validation_in_training_equals_evaluate(tmp_path):
    """Training validation and evaluate are one loop with the dataset's protocol: the same
    scores (SIFT Flow: classes absent from the set are not scored) on the same data."""
    from fcn_repro.data import SIFTFlowSegmentation
    from fcn_repro.evaluation import Validator

    proto, w = _random_net(tmp_path, "siftflow-fcn8s")
    root = _siftflow_layout(tmp_path)
    rep = ev.evaluate(net=str(proto), weights=str(w), data=str(root), dataset_kind="siftflow", split="test",
                      progress=False, out=io.StringIO(), workers=0)
    train_net = _net_cls()(str(proto), weights=str(w))
    val = Validator(proto, SIFTFlowSegmentation(root, "test"), {"data": ("data",)},
                    registry.net("siftflow-fcn8s").pairing)
    got = val.run(train_net)
    for blob in ("score_sem", "score_geo"):
        for k in ("overall_acc", "mean_acc", "mean_iu", "fwavacc"):
            assert got[blob][k] == rep["heads"][blob][k], (blob, k)
        assert got[blob]["excluded_classes"] == rep["heads"][blob]["excluded_classes"]
    assert len(rep["heads"]["score_sem"]["excluded_classes"]) > 0  # the protocol mattered here
    # the old validation (every class in the mean) gave another number
    assert scores(rep["heads"]["score_sem"]["hist"])["mean_iu"] != got["score_sem"]["mean_iu"]


def test_labels_outside_the_classes_warn_once(tmp_path):
    data = make_sample_voc(tmp_path / "voc", ids=("s0001", "s0002"))
    for p in sorted((data / "SegmentationClass").glob("*.png")):
        im = Image.open(p)
        a = np.array(im)
        a[0, :3] = 7  # the sample has 5 classes; 7 is neither a class nor 255
        out = Image.fromarray(a, mode="P")
        out.putpalette(im.getpalette())
        out.save(p)
    with pytest.warns(UserWarning, match=r"outside the 5 classes") as rec:
        ev.evaluate(net="sample", data=str(data), split="val", progress=False, out=io.StringIO(), workers=0)
    assert sum("outside the" in str(r.message) for r in rec) == 1


def test_siftflow_two_heads_and_absent_classes(tmp_path):
    proto, w = _random_net(tmp_path, "siftflow-fcn8s")
    root = _siftflow_layout(tmp_path)
    rep = ev.evaluate(net=str(proto), weights=str(w), data=str(root), dataset_kind="siftflow", split="test",
                      progress=False, out=io.StringIO(), workers=0)
    assert set(rep["heads"]) == {"score_sem", "score_geo"}
    from fcn_repro.data import SIFTFlowSegmentation

    ds = SIFTFlowSegmentation(root, "test")
    hs = {"score_sem": np.zeros((33, 33), np.int64), "score_geo": np.zeros((3, 3), np.int64)}
    for k in range(len(ds)):
        s = ds[k]
        pred = _direct_predictions(proto, w, s.inputs)
        hs["score_sem"] += fast_hist(s.labels["sem"], pred["score_sem"], 33)
        hs["score_geo"] += fast_hist(s.labels["geo"], pred["score_geo"], 3)
    for b, h in hs.items():
        assert np.array_equal(rep["heads"][b]["hist"], h), b
    sem = rep["heads"]["score_sem"]
    # labels 1..7 only: classes 7..32 have no ground truth and are left out of the mean
    assert sem["excluded_classes"] == absent_classes(hs["score_sem"]) and 32 in sem["excluded_classes"]
    assert sem["mean_iu"] == pytest.approx(scores(hs["score_sem"], exclude=absent_classes(hs["score_sem"]))["mean_iu"])
    assert sem["classes"][0] == "awning" and rep["heads"]["score_geo"]["classes"] == ["sky", "horizontal", "vertical"]


def test_nyud_late_fusion_inputs(tmp_path):
    proto, w = _random_net(tmp_path, "nyud-fcn32s-color-hha")
    root = tmp_path / "nyud"
    rng = np.random.default_rng(4)
    for sub in ("images", "hha"):
        (root / "data" / sub).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (19, 23, 3), dtype=np.uint8)).save(root / "data" / sub / "img_5001.png")
    (root / "segmentation").mkdir()
    scipy.io.savemat(root / "segmentation" / "img_5001.mat",
                     {"segmentation": rng.integers(0, 41, (19, 23)).astype(np.uint8)})
    (root / "test.txt").write_text("5001\n")
    rep = ev.evaluate(net=str(proto), weights=str(w), data=str(root), dataset_kind="nyud", split="test",
                      progress=False, out=io.StringIO())
    from fcn_repro.data import NYUDSegmentation

    s = NYUDSegmentation(root, "test", tops=("color", "hha"))[0]
    pred = _direct_predictions(proto, w, s.inputs)["score"]
    assert np.array_equal(rep["heads"]["score"]["hist"], fast_hist(s.labels["label"], pred, 40))


# ---------------------------------------------------------------- input/head mapping rules

def test_net_inputs_rules():
    x3, x1 = np.zeros((3, 2, 2), np.float32), np.ones((1, 2, 2), np.float32)
    s = Sample("i", {"color": x3, "depth": x1, "hha": x3 + 2})
    hha = registry.net("nyud-fcn32s-hha")
    assert evaluation.net_inputs(["data"], s, hha)["data"] is s.inputs["hha"]
    m = evaluation.net_inputs(["color", "depth"], s, registry.net("nyud-fcn32s-color-d"))
    assert set(m) == {"color", "depth"}
    fused = dataclasses.replace(registry.net("nyud-fcn32s-color"), inputs=(registry.InputSpec("data", 4, ("color", "depth")),))
    assert evaluation.net_inputs(["data"], s, fused)["data"].shape == (4, 2, 2)
    assert evaluation.net_inputs(["data"], Sample("i", {"color": x3}), None)["data"] is x3
    with pytest.raises(ValueError, match="no rule"):
        evaluation.net_inputs(["data"], s, None)


def test_score_heads_rules():
    assert evaluation.score_heads(["score"], ["label"]) == {"score": "label"}
    assert evaluation.score_heads(["score_sem", "score_geo"], ["sem", "geo"]) == {"score_sem": "sem", "score_geo": "geo"}
    assert evaluation.score_heads(["score_sem", "score_geo"], ["sem", "geo"], registry.net("siftflow-fcn16s")) == \
        {"score_sem": "sem", "score_geo": "geo"}
    with pytest.raises(ValueError, match="expected output blob"):
        evaluation.score_heads(["score"], ["label"], registry.net("siftflow-fcn8s"))


# ---------------------------------------------------------------- zoo and manifest

def test_zoo_is_the_single_source_of_reference_numbers():
    voc = {n: e for n, e in registry.NETS.items() if e.dataset == "voc"}
    assert {n: e.reference_mean_iu for n, e in voc.items()} == {
        "fcn32s": 63.6261, "fcn16s": 65.0050, "fcn8s": 65.5126, "fcn8s-atonce": 65.3998, "fcn-alexnet": 48.0}
    assert registry.net("fcn8s").url == "http://dl.caffe.berkeleyvision.org/fcn8s-heavy-pascal.caffemodel"
    assert set(registry.NETS) == set(fcn_nets.NETS)  # every generated net is known, and only those
    # the committed manifest (fcn_repro.hub's) names every published file of the cards
    committed = json.loads((REPO / "weights" / "manifest.json").read_text())
    for e in registry.NETS.values():
        if e.caffemodel:
            m = committed["files"][e.caffemodel]
            assert m["url"] == e.url and m["net"] == e.name


# verify_or_record itself (moved to fcn_repro.hub): tests/test_hub.py


def test_evaluate_records_weights_when_first_seen(tmp_path, monkeypatch):
    """The default weights path goes through the manifest (recorded, then verified)."""
    wdir = tmp_path / "weights"
    wdir.mkdir()
    shutil.copy(SAMPLE / "fcn8s-shapes.caffemodel", wdir / "fcn8s-shapes.caffemodel")
    m = hub.build_manifest()
    m["files"]["fcn8s-shapes.caffemodel"] = {"url": None, "bytes": None, "sha256": None}
    hub.write_manifest(m, wdir / "manifest.json")
    data = make_sample_voc(tmp_path / "voc", ids=("s0001",))
    kw = dict(net="sample", weights=str(wdir / "fcn8s-shapes.caffemodel"), data=str(data), split="val",
              progress=False, out=io.StringIO())
    # the file is parsed once, by the net that loads it: no separate parse before the record
    def no_second_parse(*a, **k):
        raise AssertionError("the weights were parsed before the net loaded them")

    monkeypatch.setattr(hub, "check_parses", no_second_parse)
    monkeypatch.setattr(hub, "weights_info", no_second_parse)
    assert ev.evaluate(**kw)["weights_check"]["status"] == "recorded"
    assert ev.evaluate(**kw)["weights_check"]["status"] == "verified"


def test_evaluate_records_no_hash_for_a_file_that_does_not_parse(tmp_path):
    wdir = tmp_path / "weights"
    wdir.mkdir()
    good = (SAMPLE / "fcn8s-shapes.caffemodel").read_bytes()
    (wdir / "fcn8s-shapes.caffemodel").write_bytes(good[: len(good) // 2])   # cut short
    m = hub.build_manifest()
    m["files"]["fcn8s-shapes.caffemodel"] = {"url": None, "bytes": None, "sha256": None}
    hub.write_manifest(m, wdir / "manifest.json")
    data = make_sample_voc(tmp_path / "voc", ids=("s0001",))
    with pytest.raises(ValueError):
        ev.evaluate(net="sample", weights=str(wdir / "fcn8s-shapes.caffemodel"), data=str(data), split="val",
                    progress=False, out=io.StringIO())
    rec = json.loads((wdir / "manifest.json").read_text())["files"]["fcn8s-shapes.caffemodel"]
    assert rec.get("sha256") is None   # recorded only after a complete parse


def test_reference_lines_print_all_four_scores_against_the_card():
    card = registry.net("fcn8s")
    ref = card.reference(asserted=True)
    head = {k: v for k, v in ref.scores().items()}
    head["reference"] = {"source": ref.source, "split": ref.split, "decimals": ref.decimals,
                         "scores": ref.scores(), "comparable": True}
    text = "\n".join(ev._reference_lines(card, head, "seg11valid", None))
    for label, v in (("pixel acc", "91.2212"), ("mean acc", "77.6146"), ("mean IU", "65.5126"), ("f.w. IU", "84.5445")):
        assert label in text and v in text
    assert "MATCH" in text
    head["fwavacc"] += 0.0001  # 0.01 points off in one score
    assert "DIFFERENT" in "\n".join(ev._reference_lines(card, head, "seg11valid", None))
    head["reference"]["comparable"] = False
    assert "not comparable" in "\n".join(ev._reference_lines(card, head, "val", 5))
