"""Dataset readers on generated files: preprocessing and label conventions of FCN's data layers."""
from __future__ import annotations

import pickle
import threading
import time

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fcn_repro.data import (ContextSegmentation, DataMissingError, NYUDSegmentation, SampleLoader, SBDSegmentation,
                            SIFTFlowSegmentation, VOCSegmentation, class_names, make_dataset, resource_path,
                            shard_indices)
from fcn_repro.data import layers as data_layers
from fcn_repro.data.transforms import (ImageReadError, colorize, overlay, preprocess, read_label_png, save_label_png,
                                       voc_palette)
from fcn_repro.errors import FcnReproError
from fcn_repro.registry import MEAN_CONTEXT, MEAN_NYUD_COLOR, MEAN_NYUD_HHA, MEAN_SIFTFLOW, MEAN_VOC

RNG = np.random.default_rng(1234)


def _original_recipe(path, mean):
    """What the FCN layers computed, written out the way they wrote it (test oracle)."""
    in_ = np.array(Image.open(path), dtype=np.float32)
    in_ = in_[:, :, ::-1]
    in_ -= mean
    return in_.transpose((2, 0, 1))


def _write_jpg(path, h, w):
    a = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, quality=90)


def _write_label(path, label):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(label.astype(np.uint8))
    im.putpalette(voc_palette().reshape(-1).tolist())
    im.save(path)


def make_voc(root, ids=("a", "b", "c"), sizes=((20, 30), (17, 11), (25, 25)), split="val"):
    for i, (h, w) in zip(ids, sizes):
        _write_jpg(root / "JPEGImages" / f"{i}.jpg", h, w)
        lab = RNG.integers(0, 21, (h, w))
        lab[0, :] = 255
        _write_label(root / "SegmentationClass" / f"{i}.png", lab)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


# ---------------------------------------------------------------- transforms

def test_preprocess_matches_the_original_layer_arithmetic(tmp_path):
    p = tmp_path / "x.jpg"
    _write_jpg(p, 13, 7)
    rgb = np.asarray(Image.open(p))
    # VOC: float64 mean from param_str -> subtraction in float64, rounded once
    ours = preprocess(rgb, MEAN_VOC)
    ref = _original_recipe(p, np.array((104.00698793, 116.66876762, 122.67891434)))
    assert ours.dtype == np.float32 and ours.shape == (3, 13, 7) and ours.flags.c_contiguous
    assert np.array_equal(ours, ref)
    # channel 0 is blue: the last RGB channel minus the B mean
    assert np.array_equal(ours[0], (rgb[:, :, 2].astype(np.float64) - 104.00698793).astype(np.float32))
    # SIFT Flow / Context: float32 means, float32 subtraction
    for mean in (MEAN_SIFTFLOW, MEAN_CONTEXT):
        assert np.array_equal(preprocess(rgb, mean), _original_recipe(p, mean))
    # the 8-bit table path and the arithmetic path (non-8-bit input) agree bit for bit
    for mean in (MEAN_VOC, MEAN_SIFTFLOW):
        assert np.array_equal(preprocess(rgb.astype(np.float32), mean), preprocess(rgb, mean))
        assert np.array_equal(preprocess(rgb.astype(np.uint16), mean), preprocess(rgb, mean))


def test_mean_dtype_matters_and_is_mirrored():
    # 255 - 104.00698793 rounds differently in float32-only arithmetic for some pixels:
    px = np.arange(256, dtype=np.uint8)[:, None, None].repeat(3, axis=2)
    a64 = preprocess(px, MEAN_VOC)
    a32 = preprocess(px, MEAN_VOC.astype(np.float32))
    exact = (px[:, :, ::-1].astype(np.float64) - MEAN_VOC).astype(np.float32).transpose(2, 0, 1)
    assert np.array_equal(a64, exact)
    assert not np.array_equal(a32, exact)  # the precision of the mean is observable


def test_palette_and_label_png_round_trip(tmp_path):
    pal = voc_palette()
    assert pal.shape == (256, 3)
    assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0]
    assert pal[15].tolist() == [192, 128, 128]  # person
    assert pal[255].tolist() == [224, 224, 192]  # the ignore border colour of VOC
    lab = RNG.integers(0, 21, (9, 14)).astype(np.uint8)
    lab[2, 3] = 255
    save_label_png(tmp_path / "l.png", lab)
    im = Image.open(tmp_path / "l.png")
    assert im.mode == "P"
    assert np.array_equal(np.array(im), lab)
    assert np.array_equal(np.array(im.getpalette()).reshape(-1, 3)[:256], pal)
    assert np.array_equal(read_label_png(tmp_path / "l.png"), lab)
    assert colorize(lab)[2, 3].tolist() == [224, 224, 192]


def test_rgb_label_png_is_refused(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="palette"):
        read_label_png(tmp_path / "rgb.png")


def test_overlay_blends_and_keeps_ignored_pixels():
    img = np.full((2, 2, 3), 100, np.uint8)
    lab = np.array([[0, 1], [255, 1]])
    ov = overlay(img, lab, alpha=0.5)
    assert ov[0, 1].tolist() == [114, 50, 50]  # (100 + 128) / 2, (100 + 0) / 2
    assert ov[1, 0].tolist() == [100, 100, 100]  # ignore keeps the image
    assert ov[0, 0].tolist() == [100, 100, 100]  # background (black) is not dimmed by default
    assert overlay(img, lab, alpha=0.5, background_alpha=0.5)[0, 0].tolist() == [50, 50, 50]


def test_overlay_and_label_png_take_a_users_palette(tmp_path):
    from fcn_repro.labels import LabelSet

    ls = LabelSet.own(["soil", "leaf"], [0, 0, 0, 40, 200, 60] + [0] * 762)
    img = np.full((2, 2, 3), 100, np.uint8)
    lab = np.array([[0, 1], [1, 0]], np.uint8)
    assert colorize(lab, ls)[0, 1].tolist() == [40, 200, 60]          # the user's leaf green, not VOC dark red
    assert overlay(img, lab, alpha=1.0, labels=ls)[1, 0].tolist() == [40, 200, 60]
    assert overlay(img, lab, alpha=1.0, labels=ls)[0, 0].tolist() == [100, 100, 100]
    assert colorize(lab, np.array([[1, 2, 3], [4, 5, 6]]))[0, 1].tolist() == [4, 5, 6]   # a bare (N, 3) palette
    save_label_png(tmp_path / "u.png", lab, ls)
    with Image.open(tmp_path / "u.png") as im:
        assert np.array(im.getpalette()).reshape(-1, 3)[1].tolist() == [40, 200, 60]
        assert np.array_equal(np.array(im), lab)
    with pytest.raises(ValueError, match="palette"):
        colorize(lab, np.zeros((3, 4)))


def test_class_lists():
    assert len(class_names("pascal")) == 21 and class_names("pascal")[15] == "person"
    assert len(class_names("pascalcontext")) == 60 and class_names("pascalcontext")[0] == "background"
    sem = class_names("siftflow")
    assert len(sem) == 33 and sem[0] == "awning" and sem[32] == "window"
    assert class_names("siftflow-geo") == ["sky", "horizontal", "vertical"]
    assert len(class_names("nyud")) == 40 and class_names("nyud")[0] == "wall"


# ---------------------------------------------------------------- VOC

def test_voc_reader(tmp_path):
    root = make_voc(tmp_path / "VOC2011")
    ds = VOCSegmentation(root, split="val", keep_image=True)
    assert ds.ids == ["a", "b", "c"] and len(ds) == 3
    s = ds[1]
    assert s.id == "b"
    assert s.inputs["data"].shape == (3, 17, 11) and s.inputs["data"].dtype == np.float32
    assert np.array_equal(s.inputs["data"], _original_recipe(root / "JPEGImages" / "b.jpg",
                                                             np.array((104.00698793, 116.66876762, 122.67891434))))
    lab = s.labels["label"]
    assert lab.dtype == np.uint8 and lab.shape == (17, 11)
    assert (lab[0] == 255).all() and lab[1:].max() <= 20
    assert s.image.shape == (17, 11, 3)
    assert ds.heads["label"] == class_names("pascal")


def test_voc_seg11valid_falls_back_to_packaged_list(tmp_path):
    root = make_voc(tmp_path / "VOC2011")
    ds = VOCSegmentation(root, split="seg11valid")
    assert len(ds) == 736 and ds.ids[0] == "2007_000033"
    assert ds.split_file == resource_path("data", "pascal-seg11valid.txt")
    with pytest.raises(DataMissingError, match="736 file|are missing") as e:
        ds.check_files()
    assert "JPEGImages/2007_000033.jpg" in str(e.value) and "VOC" in str(e.value)


def test_voc_missing_layout_messages(tmp_path):
    with pytest.raises(DataMissingError, match="not found") as e:
        VOCSegmentation(tmp_path / "nope")
    assert "JPEGImages/<id>.jpg" in str(e.value) and "host.robots.ox.ac.uk" in str(e.value)
    (tmp_path / "VOCdevkit" / "VOC2011" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(DataMissingError, match="VOC2011"):
        VOCSegmentation(tmp_path / "VOCdevkit")
    root = make_voc(tmp_path / "V")
    with pytest.raises(DataMissingError, match="train.txt"):
        VOCSegmentation(root, split="train")


def test_voc_label_size_mismatch(tmp_path):
    root = make_voc(tmp_path / "V", ids=("a",), sizes=((10, 10),))
    _write_label(root / "SegmentationClass" / "a.png", np.zeros((9, 10)))
    with pytest.raises(ImageReadError, match="differs") as e:
        VOCSegmentation(root, split="val")[0]
    assert e.value.filename == str(root / "SegmentationClass" / "a.png")
    assert str(root / "JPEGImages" / "a.jpg") in str(e.value)


def test_data_missing_error_is_a_project_error_and_a_missing_file(tmp_path):
    with pytest.raises(DataMissingError) as e:
        VOCSegmentation(tmp_path / "nope")
    err = e.value
    assert isinstance(err, FcnReproError) and isinstance(err, ValueError) and isinstance(err, FileNotFoundError)
    assert str(err).startswith("VOC directory not found") and "[Errno" not in str(err)
    back = pickle.loads(pickle.dumps(err))   # worker processes re-raise it in the parent
    assert type(back) is DataMissingError and str(back) == str(err)


# ---------------------------------------------------------------- SBD

def test_sbd_reader(tmp_path):
    root = tmp_path / "dataset"
    _write_jpg(root / "img" / "x1.jpg", 12, 8)
    seg = RNG.integers(0, 21, (12, 8)).astype(np.uint8)
    (root / "cls").mkdir()
    scipy.io.savemat(root / "cls" / "x1.mat", {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros(1)}})
    (root / "train.txt").write_text("x1\n")
    ds = SBDSegmentation(root, "train")
    s = ds[0]
    assert np.array_equal(s.labels["label"], seg)
    assert np.array_equal(s.inputs["data"], _original_recipe(root / "img" / "x1.jpg", MEAN_VOC))
    with pytest.raises(DataMissingError, match="SBD"):
        SBDSegmentation(tmp_path, "train")
    with pytest.raises(DataMissingError, match="SBD split list 'val' not found"):
        SBDSegmentation(root, "val")
    scipy.io.savemat(root / "cls" / "x1.mat", {"other": seg})
    with pytest.raises(FcnReproError, match="GTcls") as e:
        ds[0]
    assert e.value.filename == str(root / "cls" / "x1.mat")
    scipy.io.savemat(root / "cls" / "x1.mat", {"GTcls": {"Segmentation": seg[:-1], "Boundaries": np.zeros(1)}})
    with pytest.raises(ImageReadError, match="differs") as e:
        ds[0]
    assert e.value.filename == str(root / "cls" / "x1.mat")


# ---------------------------------------------------------------- SIFT Flow

def test_siftflow_reader(tmp_path):
    sub = "spatial_envelope_256x256_static_8outdoorcategories"
    _write_jpg(tmp_path / "Images" / sub / "coast_x1.jpg", 6, 5)
    sem = RNG.integers(0, 34, (6, 5)).astype(np.int32)
    sem[0, 0], sem[0, 1], sem[0, 2] = 0, 1, 33
    geo = RNG.integers(1, 4, (6, 5)).astype(np.int32)
    geo[1, 0] = -1
    for d, v in (("SemanticLabels", sem), ("GeoLabels", geo)):
        (tmp_path / d / sub).mkdir(parents=True)
        scipy.io.savemat(tmp_path / d / sub / "coast_x1.mat", {"S": v})
    (tmp_path / "test.txt").write_text("coast_x1\n")
    ds = SIFTFlowSegmentation(tmp_path, "test")
    assert ds.exclude_absent
    s = ds[0]
    assert np.array_equal(s.inputs["data"], _original_recipe(tmp_path / "Images" / sub / "coast_x1.jpg",
                                                             np.array((114.578, 115.294, 108.353), np.float32)))
    ls, lg = s.labels["sem"], s.labels["geo"]
    assert ls[0, 0] == 255 and ls[0, 1] == 0 and ls[0, 2] == 32          # void -> 255, 1..33 -> 0..32
    assert np.array_equal(ls[sem > 0], (sem[sem > 0] - 1).astype(np.uint8))
    assert lg[1, 0] == 255                                                 # geometric void -1 -> 255
    assert np.array_equal(lg[geo > 0], (geo[geo > 0] - 1).astype(np.uint8))
    assert set(ds.heads) == {"sem", "geo"}


def test_siftflow_packaged_split(tmp_path):
    (tmp_path / "Images" / "spatial_envelope_256x256_static_8outdoorcategories").mkdir(parents=True)
    ds = SIFTFlowSegmentation(tmp_path, "test")
    assert len(ds) == 200 and ds.split_file == resource_path("data", "siftflow-test.txt")
    assert "highway_bost181" not in ds.ids and "street_urb506" not in ds.ids


# ---------------------------------------------------------------- NYUDv2

def test_nyud_reader(tmp_path):
    h, w = 7, 9
    for sub in ("images", "hha"):
        (tmp_path / "data" / sub).mkdir(parents=True)
        Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "data" / sub / "img_5001.png")
    (tmp_path / "data" / "depth").mkdir()
    depth = RNG.integers(500, 9000, (h, w)).astype(np.uint16)
    Image.fromarray(depth).save(tmp_path / "data" / "depth" / "img_5001.png")
    seg = RNG.integers(0, 41, (h, w)).astype(np.uint8)
    seg[0, 0], seg[0, 1] = 0, 40
    (tmp_path / "segmentation").mkdir()
    scipy.io.savemat(tmp_path / "segmentation" / "img_5001.mat", {"segmentation": seg})
    (tmp_path / "test.txt").write_text("5001\n")
    ds = NYUDSegmentation(tmp_path, "test", tops=("color", "hha", "depth"))
    s = ds[0]
    assert np.array_equal(s.inputs["color"], _original_recipe(tmp_path / "data" / "images" / "img_5001.png",
                                                              MEAN_NYUD_COLOR))
    hha = np.array(Image.open(tmp_path / "data" / "hha" / "img_5001.png"), dtype=np.float32)
    assert np.array_equal(s.inputs["hha"], (hha - MEAN_NYUD_HHA).transpose(2, 0, 1))  # no channel reversal
    d = np.log(depth.astype(np.float32)) - np.float32(7.844)
    assert s.inputs["depth"].shape == (1, h, w)
    assert np.array_equal(s.inputs["depth"][0], d)
    lab = s.labels["label"]
    assert lab[0, 0] == 255 and lab[0, 1] == 39
    # one size check for every reader: a project error naming the label and the input
    depth_path = tmp_path / "data" / "depth" / "img_5001.png"
    Image.fromarray(depth[:, :-1]).save(depth_path)
    with pytest.raises(ImageReadError, match="differs") as e:
        ds[0]
    assert e.value.filename == str(tmp_path / "segmentation" / "img_5001.mat") and str(depth_path) in str(e.value)
    Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(depth_path)   # not a depth map
    with pytest.raises(ImageReadError, match="single-channel") as e:
        ds[0]
    assert e.value.filename == str(depth_path)
    Image.fromarray(depth).save(depth_path)
    assert np.array_equal(lab[seg > 0], seg[seg > 0] - 1)
    # packaged split list when the directory has none
    (tmp_path / "test.txt").unlink()
    assert len(NYUDSegmentation(tmp_path, "test")) == 654


# ---------------------------------------------------------------- PASCAL-Context

def test_context_reader(tmp_path):
    names59 = class_names("pascalcontext")[1:]
    renamed = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}
    full = ["accordion", "air conditioner"] + [renamed.get(n, n) for n in names59][::-1] + ["zebra"]
    (tmp_path / "labels.txt").write_text("".join(f"{i + 1}: {n}\n" for i, n in enumerate(full)))
    voc = tmp_path / "VOC2010"
    _write_jpg(voc / "JPEGImages" / "2008_000001.jpg", 5, 6)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "val.txt").write_text("2008_000001\n")
    lm = np.array([[0, 1, 2, 3, 4, 5], [len(full), len(full) - 1, 0, 0, 0, 0]] + [[1] * 6] * 3)
    (tmp_path / "trainval").mkdir()
    scipy.io.savemat(tmp_path / "trainval" / "2008_000001.mat", {"LabelMap": lm})
    ds = ContextSegmentation(tmp_path, "val")
    lab = ds[0].labels["label"]
    idx = {n: i + 1 for i, n in enumerate(full)}
    want = {0: 0, 1: 0, 2: 0, len(full): 0}                      # unlabelled / not in the 59 -> 0
    for k, n in enumerate(names59, start=1):
        want[idx[renamed.get(n, n)]] = k
    assert lab.tolist()[0] == [want[v] for v in lm[0]]
    assert lab[1, 1] == want[len(full) - 1] == 1                 # the first class, 'aeroplane'
    assert lab[0, 3] == 59                                        # 'wood' (listed first, reversed)
    assert np.array_equal(ds[0].inputs["data"], _original_recipe(voc / "JPEGImages" / "2008_000001.jpg",
                                                                 MEAN_CONTEXT))


# ---------------------------------------------------------------- loader

class _Slow:
    """A dataset whose items take a while and record which threads decoded them."""

    name = "slow"

    def __init__(self, n):
        self.n = n
        self.threads = set()

    def __len__(self):
        return self.n

    def load(self, i):
        self.threads.add(threading.get_ident())
        time.sleep(0.02 * ((i * 7) % 3))
        if i == 13:
            raise RuntimeError("bad item 13")
        return i


def test_loader_keeps_order_and_uses_workers():
    ds = _Slow(12)
    assert list(SampleLoader(ds, workers=3, prefetch=2)) == list(range(12))
    assert len(ds.threads) > 1
    assert list(SampleLoader(ds, [5, 1, 9], workers=0)) == [5, 1, 9]


def test_loader_propagates_errors():
    with pytest.raises(RuntimeError, match="bad item 13"):
        list(SampleLoader(_Slow(20), workers=2))


def test_shard_indices():
    assert shard_indices(7, 0, 2) == [0, 2, 4, 6]
    assert shard_indices(7, 1, 2) == [1, 3, 5]
    assert shard_indices(7, 1, 2, limit=4) == [1, 3]
    assert sorted(shard_indices(10, 0, 3) + shard_indices(10, 1, 3) + shard_indices(10, 2, 3)) == list(range(10))
    with pytest.raises(ValueError):
        shard_indices(3, 2, 2)


# ---------------------------------------------------------------- data layers of the generated nets

def test_python_data_layers_map_to_readers(tmp_path):
    root = make_voc(tmp_path / "V", split="seg11valid")
    ds = data_layers.reader_from_layer("VOCSegDataLayer", '{"seed": 1337, "split": "seg11valid"}', root)
    assert isinstance(ds, VOCSegmentation) and ds.ids == ["a", "b", "c"]
    tops = data_layers.layer_tops("VOCSegDataLayer", {})
    arrays = data_layers.sample_to_tops(ds[0], tops)
    assert arrays[0].shape == (3, 20, 30) and arrays[1].shape == (1, 20, 30)
    assert data_layers.layer_tops("SIFTFlowSegDataLayer", {}) == ["data", "sem", "geo"]
    assert data_layers.layer_tops("NYUDSegDataLayer", {"tops": ["color", "hha", "label"]}) == ["color", "hha", "label"]
    assert data_layers.parse_param_str("{'split': 'val'}") == {"split": "val"}
    with pytest.raises(ValueError, match="unknown data layer"):
        data_layers.layer_tops("NoSuchLayer", {})
    assert isinstance(make_dataset("voc", root, "seg11valid"), VOCSegmentation)
    with pytest.raises(ValueError, match="unknown dataset"):
        make_dataset("coco", root, "val")


def test_opening_images_in_threads_keeps_a_once_warning_once(tmp_path):
    """open_checked runs in loader threads: it must not touch the warning filters
    (warnings.catch_warnings() is not thread-safe, and each entry made Python forget which
    warnings it had shown, so the ops' FallbackWarning came once per image)."""
    import subprocess
    import sys
    import textwrap

    for i in range(8):
        Image.new("RGB", (4, 3), (i, 0, 0)).save(tmp_path / f"{i}.png")
    code = textwrap.dedent(f"""
        import glob, warnings
        from concurrent.futures import ThreadPoolExecutor
        from fcn_repro.data.transforms import open_checked, read_rgb
        from fcn_repro.ops import FallbackWarning
        paths = sorted(glob.glob({str(tmp_path)!r} + "/*.png"))
        def load(p):
            with open_checked(p) as im:
                im.load()
            return read_rgb(p).shape
        with ThreadPoolExecutor(4) as pool:
            for p in paths:
                warnings.warn("the same warning from the same line", FallbackWarning)
                list(pool.map(load, paths))
                open_checked(p).close()
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # the warning's own line (Python 3.13 also prints the source line of ``-c`` code below it)
    assert r.stderr.count("FallbackWarning: the same warning from the same line") == 1, r.stderr
