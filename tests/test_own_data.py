"""Your own data: a plain images/ + labels/ folder of 3 classes, fine-tuning the bundled sample on it.

The dataset is generated here (discs and squares on noise, the sample's scale);
the commands are the documented ones (README "Train on your own data").
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image

from fcn_repro import rundir
from fcn_repro.caffe import fcn_nets, load_weights
from fcn_repro.caffe.net import Net
from fcn_repro.data import make_dataset
from fcn_repro.data.__main__ import main as data_main
from fcn_repro.data.check import check_dataset
from fcn_repro.errors import FcnReproError
from fcn_repro.data.folder import FolderSegmentation, OwnDataError, open_own, own_labels
from fcn_repro import owntrain, registry, runs
from fcn_repro.train import main as train_main

ROOT = Path(__file__).resolve().parent.parent
CLASSES = "bg,disc,square"


def act_when_trained(proc: subprocess.Popen, run: Path, iterations: int, act) -> tuple:
    """Wait (at most 120 s) until the training process ``proc`` has logged ``iterations`` train records
    in RUN/log.jsonl, then call ``act()``; return its (stdout, stderr). Killed if it outlives the test."""
    log = run / "log.jsonl"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if log.is_file() and log.read_text().count('"type": "train"') >= iterations:
                act()
                break
            time.sleep(0.02)
        return proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()


def make_shapes(root: Path, n: int = 24, size=(96, 72), seed: int = 0, val: int = 8, palette=None) -> Path:
    """n images of 1-2 discs (class 1) and squares (class 2) on noise; the last ``val`` are val.txt.
    Labels: mode L, or mode P with ``palette`` (a colour per class)."""
    rng = np.random.RandomState(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        img = rng.randint(60, 200, size=(h, w, 3)).astype(np.uint8)
        lab = np.zeros((h, w), np.uint8)
        for _ in range(rng.randint(1, 3)):
            cls = rng.randint(1, 3)
            cy, cx, r = rng.randint(12, h - 12), rng.randint(12, w - 12), rng.randint(7, 12)
            m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if cls == 1 else ((abs(yy - cy) <= r) & (abs(xx - cx) <= r))
            img[m] = np.clip((230, 40, 40) if cls == 1 else (40, 40, 230), 0, 255)
            lab[m] = cls
        suffix = ".png" if i % 7 == 3 else ".jpg"      # any suffix PIL reads
        Image.fromarray(img).save(root / "images" / f"im{i:03d}{suffix}")
        out = Image.fromarray(lab, "L")
        if palette is not None:
            out = out.convert("P")
            out.putpalette([v for c in palette for v in c] + [0] * (3 * (256 - len(palette))))
        out.save(root / "labels" / f"im{i:03d}.png")
    if val:
        ids = [f"im{i:03d}" for i in range(n)]
        (root / "train.txt").write_text("\n".join(ids[:-val]) + "\n")
        (root / "val.txt").write_text("\n".join(ids[-val:]) + "\n")
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("own") / "shapes")


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """`train --net sample --data DIR --classes bg,disc,square --iters N --out RUN`, validated before and after."""
    run = tmp_path_factory.mktemp("runs") / "shapes-run"
    rc = train_main(["--net", "sample", "--data", str(shapes), "--classes", CLASSES, "--iters", "40",
                     "--test-initialization", "--out", str(run), "--no-progress"])
    assert rc == 0
    return run


def _records(run: Path, kind: str):
    return [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines() if json.loads(ln)["type"] == kind]


# ------------------------------------------------------------------ the data

def test_folder_reader_pairs_any_suffix_and_splits(shapes, tmp_path):
    ds = FolderSegmentation(shapes, "train", classes=["bg", "disc", "square"])
    assert len(ds) == 16 and ds.heads == {"label": ["bg", "disc", "square"]}
    s = ds.load(3)                                   # im003 is a .png image
    assert ds.image_path(3).suffix == ".png" and s.inputs["data"].shape == (3, 72, 96)
    assert set(np.unique(s.labels["label"])) <= {0, 1, 2}
    assert len(make_dataset("folder", shapes, "val", classes=["a", "b", "c"])) == 8
    # no lists: the stated deterministic split, every 5th sorted stem to val, disjoint and complete
    bare = make_shapes(tmp_path / "bare", n=11, val=0)
    tr, va = FolderSegmentation(bare, "train"), FolderSegmentation(bare, "val")
    assert va.ids == ["im004", "im009"] and sorted(tr.ids + va.ids) == sorted(f"im{i:03d}" for i in range(11))
    assert "every 5th" in tr.split_note
    assert FolderSegmentation(bare, "train").ids == tr.ids     # deterministic


def test_split_ids_stay_inside_the_folder(shapes, tmp_path):
    bad = make_shapes(tmp_path / "bad", n=3, val=0)
    (bad / "val.txt").write_text("../../etc/passwd\n")
    with pytest.raises(FcnReproError, match="not a plain file name") as e:
        FolderSegmentation(bad, "val")
    assert str(bad / "val.txt") in str(e.value)
    rep = check_dataset(bad, ["bg", "disc", "square"])
    assert [p for p, _ in rep.problems] == [str(bad / "val.txt")]


def test_classes_from_file_and_palette_from_the_labels(tmp_path):
    root = make_shapes(tmp_path / "pal", n=3, val=0)
    with pytest.raises(OwnDataError, match="--classes"):
        own_labels(root)
    (root / "classes.txt").write_text("sky\nball\nbox\n")
    assert own_labels(root).names == ("sky", "ball", "box")
    lab = Image.open(root / "labels" / "im000.png").convert("P")
    lab.putpalette([10, 20, 30, 200, 0, 0, 0, 0, 200] + [0] * (253 * 3))
    lab.save(root / "labels" / "im000.png")
    ls = own_labels(root, ["a", "b", "c"])
    assert ls.colours().tolist() == [[10, 20, 30], [200, 0, 0], [0, 0, 200]]


def as_voc(src: Path, voc: Path, splits: dict) -> Path:
    """The images and labels of ``src`` (a folder) re-laid as a VOC-layout directory; splits: name -> stems."""
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name, stems in splits.items():
        for s in stems:
            Image.open(next((src / "images").glob(f"{s}.*"))).convert("RGB").save(voc / "JPEGImages" / f"{s}.jpg")
            (voc / "SegmentationClass" / f"{s}.png").write_bytes((src / "labels" / f"{s}.png").read_bytes())
        (voc / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(stems) + "\n")
    return voc


def test_voc_layout_with_any_number_of_classes(tmp_path):
    src = make_shapes(tmp_path / "src", n=4, val=0)
    voc = as_voc(src, tmp_path / "voc", {"train": ["im000", "im001", "im002"], "more": ["im003"]})
    ds = open_own(voc, "train", ["bg", "disc", "square"])
    assert len(ds) == 3 and ds.heads == {"label": ["bg", "disc", "square"]}
    assert check_dataset(voc, ["bg", "disc", "square"]).ok
    # read as PASCAL (the packaged seg11valid list): the error points at the lists that are there
    with pytest.raises(FcnReproError, match="seg11valid") as e:
        make_dataset("voc", voc, "seg11valid").check_files()
    assert f"{voc / 'ImageSets' / 'Segmentation'} lists the split(s) more, train: give --split more" in str(e.value)
    make_dataset("voc", voc, "train").check_files()          # a split that is there: no complaint


def test_sample_on_a_voc_layout_asks_for_classes_and_trains_on_its_train_list(tmp_path, capsys):
    """`train --net sample --data DIR` reads DIR as the user's data: classes asked for, not the sample's
    five; the train list read, not the sample's val split."""
    src = make_shapes(tmp_path / "src", n=5, size=(48, 40), val=0)
    voc = as_voc(src, tmp_path / "voc", {"train": ["im000", "im001", "im002"], "val": ["im003", "im004"]})
    run = tmp_path / "run"
    common = ["--net", "sample", "--data", str(voc), "--iters", "1", "--test-every", "0", "--no-progress"]
    assert train_main(common + ["--out", str(run)]) == 2
    assert f"{voc}: no class names: pass --classes" in capsys.readouterr().err and not run.exists()
    assert train_main(common + ["--classes", CLASSES, "--out", str(run)]) == 0
    info = rundir.read_run(run)
    assert (info.extra["dataset"], info.extra["split"], info.extra["val_split"]) == ("voc", "train", "val")
    assert info.heads["score"].names == tuple(CLASSES.split(","))
    notes = _records(run, "setup")[0]["notes"]
    assert f"training split: {voc / 'ImageSets' / 'Segmentation' / 'train.txt'} (3 images)" in notes


def test_checker_names_each_problem_with_its_file(tmp_path, capsys):
    root = make_shapes(tmp_path / "broken", n=10, val=0)
    lab = np.array(Image.open(root / "labels" / "im002.png"))
    lab[0, 0] = 7
    Image.fromarray(lab, "L").save(root / "labels" / "im002.png")
    (root / "labels" / "im004.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((10, 10), np.uint8), "L").save(root / "labels" / "im005.png")   # wrong size
    os.remove(next((root / "images").glob("im006.*")))                                       # label without image
    Image.fromarray(np.zeros((72, 96, 3), np.uint8)).save(root / "images" / "extra.jpg")     # image without label
    assert data_main(["check", str(root), "--classes", CLASSES]) == 1
    out = capsys.readouterr().out
    assert f"{root / 'labels' / 'im002.png'}: label value(s) 7 outside the 3 classes" in out
    assert f"{root / 'labels' / 'im004.png'}: cannot read label" in out
    assert f"{root / 'labels' / 'im005.png'}: label size 10x10 differs" in out
    assert f"{root / 'labels' / 'im006.png'}: no image" in out
    assert f"{root / 'images' / 'extra.jpg'}: no label" in out
    assert "5 problem(s)" in out
    good = make_shapes(tmp_path / "good", n=4, val=0)
    rep = check_dataset(good, ["bg", "disc", "square"])
    assert rep.ok and rep.pairs == 4 and int(rep.pixels.sum()) == 4 * 72 * 96
    # the report is never written over a file of the dataset (a label, by its own or another name)
    label = good / "labels" / "im001.png"
    before = label.read_bytes()
    os.symlink(label, tmp_path / "alias.json")
    for target in (label, tmp_path / "alias.json"):
        assert data_main(["check", str(good), "--classes", CLASSES, "--json", str(target), "--no-progress"]) == 2
        assert "is one of the inputs" in capsys.readouterr().err
    assert label.read_bytes() == before
    assert data_main(["check", str(good), "--classes", CLASSES, "--json", str(good / "report.json"),
                      "--no-progress"]) == 0 and (good / "report.json").is_file()   # a new file inside DIR is fine


def test_train_names_a_bad_label_before_any_iteration(tmp_path, capsys):
    root = make_shapes(tmp_path / "seven", n=6, val=2)
    lab = np.array(Image.open(root / "labels" / "im001.png"))
    lab[5, 5] = 7
    Image.fromarray(lab, "L").save(root / "labels" / "im001.png")
    run = tmp_path / "run"
    assert train_main(["--net", "sample", "--data", str(root), "--classes", CLASSES, "--iters", "2",
                       "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(root / "labels" / "im001.png") in err and "7 outside the 3 classes" in err
    assert not (run / "log.jsonl").exists()


def test_missing_init_weights_are_named_before_anything_is_written(shapes, tmp_path, capsys):
    run = tmp_path / "run"
    missing = tmp_path / "nowhere.caffemodel"
    assert train_main(["--net", "sample", "--data", str(shapes), "--classes", CLASSES, "--init", str(missing),
                       "--iters", "1", "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--init {missing}" in err and "image/label pairs" not in err      # before the data are read
    assert not run.exists()                                                   # a refused start leaves nothing


# ------------------------------------------------------------------ nets for N classes

@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn-alexnet"])
def test_nets_for_n_classes_from_the_same_definitions(name):
    d = fcn_nets.NETS[name]
    net = Net(fcn_nets.build_net(name, "deploy", widths=d.fixture_widths, input_shape=(8, 8), num_classes=3))
    orig = Net(fcn_nets.build_net(name, "deploy", widths=d.fixture_widths, input_shape=(8, 8)))
    assert net.layer_names == orig.layer_names
    for layer, ps in net.params.items():
        for p, q in zip(ps, orig.params[layer]):
            if layer.startswith(("score", "upscore")):
                assert p.shape[0] == 3 and q.shape[0] == 21
            else:
                assert p.shape == q.shape


def test_sample_definition_is_the_bundled_sample():
    ours = Net(fcn_nets.build_net("fcn8s", "deploy", widths=fcn_nets.SAMPLE_WIDTHS, num_classes=5))
    bundled = Net(str(registry.resource_path("sample", "fcn8s-shapes.prototxt")))
    assert ours.layer_names == bundled.layer_names
    assert {k: [tuple(p.shape) for p in v] for k, v in ours.params.items()} == \
           {k: [tuple(p.shape) for p in v] for k, v in bundled.params.items()}
    with pytest.raises(ValueError, match="several score heads"):
        fcn_nets.build_net("siftflow-fcn8s", num_classes=3)


def test_class_surgery_copies_what_fits_and_reinitialises_the_class_layers(tmp_path):
    paths = owntrain.write_nets(tmp_path, owntrain.own_net("sample"), 3)
    net = Net(str(paths["train"]), phase="TRAIN")
    init = owntrain.init_weights("sample")
    rep = owntrain.class_surgery(net, init)
    src = load_weights(init)
    assert rep["copied"] == ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                             "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7"]
    assert set(rep["reinitialised"]) == {"score_fr", "score_pool4", "score_pool3", "upscore2", "upscore_pool4",
                                         "upscore8"}
    assert np.array_equal(net.params["fc7"][0].detach().numpy(), src["fc7"][0])
    for layer in ("score_fr", "score_pool4", "score_pool3"):
        assert not net.params[layer][0].detach().numpy().any()        # zero, as the original train nets
    up = net.params["upscore8"][0].detach().numpy()
    assert up.shape == (3, 3, 16, 16) and up[0, 0].max() > 0 and not up[0, 1].any()   # bilinear, diagonal
    assert net.param_specs["upscore8"][0][0] == 0                                     # frozen


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn-alexnet"])
def test_surgery_from_the_21_class_net_to_3_classes(name, tmp_path):
    """From a VOC net (fixture widths, filler weights standing in for the published ones) to 3 classes:
    the report's copied layers hold the source's weights, its re-initialised ones are exactly the layers
    whose shape depends on the class count and start as the 3-class train net's fillers start them;
    its bilinear ones are the upsampling layers, frozen."""
    from fcn_repro.caffe import save_weights

    widths = fcn_nets.NETS[name].fixture_widths
    nets = {}
    for n in (21, 3):
        d = tmp_path / f"c{n}"
        d.mkdir()
        nets[n] = owntrain.write_nets(d, owntrain.OwnNet(name, name, widths), n)["train"]
    src = Net(str(nets[21]), phase="TRAIN", seed=5)
    init = tmp_path / "voc.caffemodel"
    save_weights(init, {k: [p.detach().numpy() for p in v] for k, v in src.params.items()})
    net, fresh = Net(str(nets[3]), phase="TRAIN", seed=9), Net(str(nets[3]), phase="TRAIN", seed=9)
    rep = owntrain.class_surgery(net, str(init))
    differ = {k for k, v in net.params.items() if [p.shape for p in v] != [p.shape for p in src.params[k]]}
    assert differ and set(rep["reinitialised"]) == differ
    assert set(rep["copied"]) == set(net.params) - differ and not rep["left_to_fillers"]
    deconv = {k for k, t in zip(net.layer_names, net.layer_types) if t == "Deconvolution"}
    assert deconv and set(rep["bilinear"]) == deconv
    for k, v in net.params.items():
        for i, p in enumerate(v):
            got = p.detach().numpy()
            if k in deconv:
                assert got.shape[:2] == (3, 3) and got[0, 0].max() > 0 and not got[0, 1].any(), k
                assert net.param_specs[k][i][0] == 0, k                          # frozen
            elif k in differ:
                assert np.array_equal(got, fresh.params[k][i].detach().numpy()), k   # the train net's filler
            else:
                assert np.array_equal(got, src.params[k][i].detach().numpy()), k     # copied


def test_learning_rate_rule():
    vgg = owntrain.own_net("fcn8s")
    lr, why = owntrain.own_rate(vgg, False, 1e-10, 100 * 100)
    assert lr == pytest.approx(1e-10 * 25) and "image area" in why
    lr, why = owntrain.own_rate(owntrain.own_net("fcn-alexnet"), True, 1e-4, 100 * 100)
    assert lr == 1e-4 and "normalised" in why
    # the paper's nets on the paper's data keep their solver files untouched
    assert fcn_nets.NETS["fcn8s"].solver["base_lr"] == 1e-10


# ------------------------------------------------------------------ training: a run directory is a model

def test_fine_tunes_the_sample_to_a_much_better_mean_iu(trained):
    tests = _records(trained, "test")
    start, end = tests[0]["scores"]["score"]["mean_iu"], tests[-1]["scores"]["score"]["mean_iu"]
    assert tests[0]["iter"] == 0 and tests[-1]["iter"] == 40
    assert end > start + 0.2, (start, end)
    setup = _records(trained, "setup")[0]["notes"]
    assert any("base_lr" in n for n in setup) and any("re-initialised" in n for n in setup)
    info = rundir.read_run(trained)
    assert info.complete and info.iteration == 40 and info.net == "sample"
    assert info.heads["score"].names == ("bg", "disc", "square")
    assert info.weights.name == "train_iter_40.caffemodel" and info.deploy.name == "deploy.prototxt"
    assert info.mean["data"].tolist() == pytest.approx(list(registry.MEAN_VOC))
    assert (info.extra["dataset"], info.extra["split"], info.extra["val_split"]) == ("folder", "train", "val")
    w = load_weights(info.weights)
    assert w["score_fr"][0].shape[0] == 3


def test_second_run_on_a_live_runs_out_refuses_and_a_finished_run_is_kept(shapes, trained, tmp_path, capsys):
    live = tmp_path / "live"
    live.mkdir()
    with FileLock(str(live / runs.LOCK_FILE)):
        assert train_main(["--net", "sample", "--data", str(shapes), "--classes", CLASSES, "--iters", "1",
                           "--out", str(live), "--no-progress"]) == 2
    assert "live training run" in capsys.readouterr().err
    before = (trained / "log.jsonl").read_bytes()
    assert train_main(["--net", "sample", "--data", str(shapes), "--classes", CLASSES, "--iters", "2",
                       "--snapshot-every", "1", "--keep-snapshots", "1", "--out", str(trained)]) == 0
    assert (trained / "log.jsonl").read_bytes() == before               # the earlier run is untouched
    second = trained.with_name(trained.name + "-2")
    assert "writing this one to" in capsys.readouterr().err
    assert sorted(p.name for p in second.glob("*.solverstate.h5")) == ["train_iter_2.solverstate.h5"]
    assert rundir.read_run(second).weights.name == "train_iter_2.caffemodel"


def test_sigint_snapshots_and_resume_is_bit_exact(tmp_path, capsys):
    """Ctrl-C to a real `python -m fcn_repro.train` once it has logged iterations: a second train on its
    --out is refused while it lives; it stops with a snapshot; `--resume RUN` ends with the weights of an
    uninterrupted run, bit for bit. The data have no lists: the log states the deterministic split; the labels' own palette is the run's."""
    palette = [(20, 30, 40), (250, 200, 0), (0, 90, 255)]
    data = make_shapes(tmp_path / "bare", n=10, size=(48, 40), val=0, palette=palette)
    args = ["--net", "sample", "--data", str(data), "--classes", CLASSES, "--max-iter", "12", "--no-progress",
            "--test-every", "0"]
    whole = tmp_path / "whole"
    assert train_main(args + ["--out", str(whole)]) == 0
    notes = _records(whole, "setup")[0]["notes"]
    assert any(n.startswith("training split: 'train': no train.txt") and "every 5th" in n and "(8 images)" in n
               for n in notes), notes
    assert f"{data}: 10 image/label pairs, {10 * 48 * 40} labelled pixels" in notes    # the checker's counts
    assert any(n.strip().startswith("2 square") for n in notes)
    assert rundir.read_run(whole).heads["score"].colours().tolist() == [list(c) for c in palette]   # the PNGs'
    run = tmp_path / "interrupted"
    env = dict(os.environ, PYTHONPATH=str(ROOT))       # the same threads as this process: the same sums
    proc = subprocess.Popen([sys.executable, "-m", "fcn_repro.train"] + args + ["--out", str(run)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    refused = []

    def second_train_then_sigint():
        capsys.readouterr()
        refused.append(train_main(args + ["--out", str(run)]))        # the run is live: refused, not RUN-2
        os.kill(proc.pid, signal.SIGINT)
    out, err = act_when_trained(proc, run, 3, second_train_then_sigint)
    assert refused == [2] and "a live training run holds this directory" in capsys.readouterr().err
    assert not run.with_name(run.name + "-2").exists()
    assert proc.returncode == 130, err
    state = runs.latest_state(run)
    stopped = int(state.name.split("_iter_")[1].split(".")[0])
    assert 3 <= stopped < 12 and "--resume" in err and "Traceback" not in err
    info = rundir.read_run(run)
    assert not info.complete and info.iteration == stopped
    assert train_main(args + ["--out", str(run), "--resume", str(run)]) == 0
    a, b = load_weights(whole / "train_iter_12.caffemodel"), load_weights(run / "train_iter_12.caffemodel")
    assert a.keys() == b.keys()
    for k in a:
        for x, y in zip(a[k], b[k]):
            assert np.array_equal(x, y), k
    assert rundir.read_run(run).complete
    start = load_weights(owntrain.init_weights("sample"))
    assert not np.array_equal(a["fc7"][0], start["fc7"][0])          # the runs did train


def test_staged_schedule_in_one_command(shapes, tmp_path, monkeypatch):
    """--staged: FCN-32s, FCN-16s from it, FCN-8s from that; each stage's surgery from the one before
    (the fixture widths stand in for VGG-16's, to keep it fast)."""
    real = owntrain.own_net

    def small(name):
        d = real(name)
        return owntrain.OwnNet(d.name, d.definition, fcn_nets.NETS[d.definition].fixture_widths, d.normalize,
                               d.solver)
    monkeypatch.setattr(owntrain, "own_net", small)
    out = tmp_path / "staged"
    assert train_main(["--net", "fcn8s", "--staged", "--data", str(shapes), "--classes", CLASSES, "--iters", "1",
                       "--test-every", "0", "--out", str(out), "--no-progress"]) == 0
    s32, s16 = rundir.read_run(out / "stage-fcn32s"), rundir.read_run(out / "stage-fcn16s")
    final = rundir.read_run(out)
    assert (s32.net, s16.net, final.net) == ("fcn32s", "fcn16s", "fcn8s")
    assert all(r.complete and r.heads["score"].names == ("bg", "disc", "square") for r in (s32, s16, final))
    assert s16.extra["surgery"]["from"] == os.fspath(s32.weights)
    assert "score_fr" in s16.extra["surgery"]["copied"]             # same classes: the score layer carries over
    assert "score_pool4" in s16.extra["surgery"]["left_to_fillers"]  # new in FCN-16s: zero, as the paper's
    assert final.extra["surgery"]["from"] == os.fspath(s16.weights)
    setup = _records(out, "setup")[0]["notes"]
    assert any("scaled by the image area" in n for n in setup)       # the unnormalised VGG rule


def test_two_processes_train_own_data_as_one_with_iter_size_two(shapes, tmp_path):
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    common = ["--net", "sample", "--data", str(shapes), "--classes", CLASSES, "--iters", "2", "--test-every", "0",
              "--no-progress"]
    assert train_main(common + ["--iter-size", "2", "--out", str(tmp_path / "one")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           "-m", "fcn_repro.train"] + common + ["--iter-size", "1", "--out", str(tmp_path / "two")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    one, two = rundir.read_run(tmp_path / "one"), rundir.read_run(tmp_path / "two")
    assert two.complete and two.heads == one.heads
    a, b = load_weights(one.weights), load_weights(two.weights)
    for k in a:
        for x, y in zip(a[k], b[k]):
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(x).max())), err_msg=k)
    start = load_weights(owntrain.init_weights("sample"))
    assert not np.array_equal(a["fc7"][0], start["fc7"][0])          # the runs did train


def test_the_runs_report_page_shows_the_users_classes(trained):
    """The end of the run writes RUN/report/index.html, its last validation in the user's classes
    and colours (issue 21); in a browser when there is one (tests/test_report_browser.py)."""
    pytest.importorskip("matplotlib", reason="the report page needs matplotlib: pip install 'fcn_repro[report]'")
    from test_report_browser import CHROMIUM, check_in_browser

    page = trained / "report" / "index.html"
    text = page.read_text(encoding="utf-8")
    assert "validation at iteration 40" in text and "train_iter_40.caffemodel" in text
    colours = rundir.read_run(trained).heads["score"].colours()
    for c, name in enumerate(CLASSES.split(",")):
        r, g, b = (int(v) for v in colours[c])
        assert f'rgb({r},{g},{b})"></span>{name}<' in text      # the gallery's legend: their name, their colour
    assert ">background<" not in text
    if CHROMIUM is not None:
        assert check_in_browser(page)["images"] > 2


# ------------------------------------------------------------------ the run is a model: evaluate, infer, load, export

def _val_images(shapes: Path, k: int = 2):
    stems = (shapes / "val.txt").read_text().split()[:k]
    return [next((shapes / "images").glob(f"{s}.*")) for s in stems]


def test_evaluate_a_run_on_the_folders_val_txt_in_the_users_classes(shapes, trained, tmp_path, capsys):
    from fcn_repro.evaluate import main as evaluate_main

    assert evaluate_main(["--net", str(trained), "--data", str(shapes), "--json", "-", "--no-progress"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["split"] == "val" and rep["split_file"] == str(shapes / "val.txt") and rep["images"] == 8
    head = rep["heads"]["score"]
    assert head["classes"] == CLASSES.split(",")
    assert head["palette"] == rundir.read_run(trained).heads["score"].colours().tolist()
    last = _records(trained, "test")[-1]["scores"]["score"]
    assert head["mean_iu"] == pytest.approx(last["mean_iu"], abs=1e-12)      # the run's last validation
    assert evaluate_main(["--net", str(trained), "--data", str(shapes), "--no-progress"]) == 0
    text = capsys.readouterr().out
    for c, name in enumerate(CLASSES.split(",")):
        assert f"    {c}  {name}" in text
    assert "aeroplane" not in text and "class 1" not in text
    # the same images in a VOC layout: its val list, the run's classes
    voc = as_voc(shapes, tmp_path / "voc", {"val": (shapes / "val.txt").read_text().split()})
    assert evaluate_main(["--net", str(trained), "--data", str(voc), "--json", "-", "--no-progress"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert (rep["dataset"], rep["split"], rep["images"]) == ("voc", "val", 8)
    assert rep["heads"]["score"]["classes"] == CLASSES.split(",")
    # the same labelled pixels per class (the images are re-encoded: the predictions may differ slightly)
    assert np.array(rep["heads"]["score"]["hist"]).sum(1).tolist() == np.array(head["hist"]).sum(1).tolist()


def test_load_and_infer_a_run_carry_the_users_classes_and_agree(shapes, trained, tmp_path, capsys):
    import fcn_repro
    from fcn_repro.infer import main as infer_main

    m = fcn_repro.load(trained)
    assert m.classes == CLASSES.split(",") and m.meta["heads"] == {"score": CLASSES.split(",")}
    assert repr(m).startswith(f"Pretrained('{trained.name}', classes=['bg', 'disc', 'square']")
    images = _val_images(shapes)
    out = tmp_path / "inf"
    assert infer_main([str(p) for p in images] + ["--net", str(trained), "-o", str(out), "--no-legend"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    colours = rundir.read_run(trained).heads["score"].colours()
    for img in images:
        pred = m.predict(img)
        png = Image.open(out / f"{img.stem}.png")
        assert png.mode == "P" and np.array_equal(np.array(png), pred.labels["score"])      # the same labels
        assert np.array(png.getpalette()[:9]).reshape(3, 3).tolist() == colours.tolist()
        names = [c["name"] for c in summary["images"][str(img)]["outputs"]["score"]["classes"]]
        assert names and set(names) <= set(CLASSES.split(","))
        assert f"{img} ({pred.size[1]}x{pred.size[0]}):" in printed
        truth = np.array(Image.open(shapes / "labels" / f"{img.stem}.png"))
        assert (pred.labels["score"] == truth).mean() > 0.9          # a trained model, not the start
    assert "bg " in printed and "background" not in printed


def test_export_a_run_to_onnx_the_same_argmax_in_onnxruntime(shapes, trained, tmp_path, capsys):
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(mod, reason="ONNX export needs the onnx extra: pip install 'fcn_repro[onnx]'")
    import onnx
    import onnxruntime as ort
    import fcn_repro
    from fcn_repro.export.__main__ import main as export_main

    path = tmp_path / "model.onnx"
    assert export_main([str(trained), "-o", str(path)]) == 0
    assert "score: 3 classes: bg, disc, square" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(os.fspath(path)).metadata_props}
    assert json.loads(meta["fcn_repro.heads"])["score"]["names"] == CLASSES.split(",")
    m = fcn_repro.load(trained)
    sess = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    for img in _val_images(shapes, 3):
        x = m.transforms()(img)["data"][None].astype(np.float32)
        (theirs,) = sess.run(["score"], {"data": x})
        ours = m.predict(img, scores=True)
        assert theirs.shape == (1, 3) + ours.labels["score"].shape
        np.testing.assert_allclose(theirs[0], ours.scores["score"], rtol=0, atol=1e-4 * np.abs(theirs).max())
        assert np.array_equal(theirs[0].argmax(0), ours.labels["score"])


def test_a_deploy_prototxt_with_weights_and_classes_prints_the_names(shapes, trained, tmp_path, capsys,
                                                                       monkeypatch):
    """The run's files without the run: `--net deploy.prototxt --weights W --classes a,b,c`."""
    from fcn_repro.evaluate import main as evaluate_main
    from fcn_repro.export import __main__ as export_cli
    from fcn_repro.infer import main as infer_main

    info = rundir.read_run(trained)
    files = ["--net", str(info.deploy), "--weights", str(info.weights)]
    assert evaluate_main(files + ["--classes", CLASSES, "--data", str(shapes), "--limit", "2", "--json", "-",
                                  "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["heads"]["score"]["classes"] == CLASSES.split(",")
    img = _val_images(shapes, 1)[0]
    assert infer_main([str(img)] + files + ["--classes", CLASSES, "-o", str(tmp_path / "o"), "--no-legend"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert {c["name"] for c in summary["images"][str(img)]["outputs"]["score"]["classes"]} <= set(CLASSES.split(","))
    assert infer_main([str(img)] + files + ["-o", str(tmp_path / "p"), "--no-legend"]) == 0
    assert "class 0" in capsys.readouterr().out                        # without names: numbers
    seen = {}

    def fake_to_onnx(net, path, **kw):
        seen.update(kw["labels"])
        raise export_cli.cli.UsageError("stop here")                    # the names are what is checked
    monkeypatch.setattr(export_cli, "to_onnx", fake_to_onnx)
    assert export_cli.main([str(info.deploy), "--weights", str(info.weights), "--classes", CLASSES,
                            "-o", str(tmp_path / "m.onnx")]) == 2
    assert {b: ls.names for b, ls in seen.items()} == {"score": tuple(CLASSES.split(","))}
