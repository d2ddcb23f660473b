"""Regression against the reference numbers.

Always on: the bundled sample (a reduced FCN-8s trained in real Caffe) must
give Caffe's own prediction at every pixel, except where Caffe's top-two
score margin is below 1e-3, and so Caffe's scores to 1e-5.

When the originals are present: every PASCAL VOC net of the zoo on VOC2011
seg11valid must give the published mean IU (FACTS.md, taken from
fcn_repro.zoo) to the published precision. Set

    FCN_REPRO_WEIGHTS_DIR=/path/to/dir/with/the/original/caffemodels
    FCN_REPRO_VOC_DIR=/path/to/VOCdevkit/VOC2011

(FCN_REPRO_DEVICE=cuda to run on a GPU; on 2 CPU cores FCN-8s takes about an
hour for the 736 images). Without them these tests skip and say why.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fcn_repro.evaluate as ev
from fcn_repro import registry
from fcn_repro.data import resource_path
from fcn_repro.metrics import scores

SAMPLE = resource_path("sample")


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """The embedded default, run once: its report and its saved predictions."""
    d = tmp_path_factory.mktemp("sample")
    mp = pytest.MonkeyPatch()
    mp.setenv("FCN_REPRO_WEIGHTS_DIR", str(d / "weights"))
    try:
        out = io.StringIO()
        rep = ev.evaluate(net="sample", save_predictions=str(d / "pred"), progress=False, out=out, device="cpu")
    finally:
        mp.undo()
    return rep, d / "pred", out.getvalue()


def test_sample_every_pixel_matches_caffe(sample_run):
    rep, pred_dir, _ = sample_run
    z = np.load(SAMPLE / "sample.caffe.npz")
    ids = [k[5:] for k in z.files if k.startswith("pred/")]
    assert len(ids) == 24 and rep["images"] == 24
    total = differ = 0
    for i in ids:
        ours = np.array(Image.open(pred_dir / f"{i}.png"))
        theirs = z[f"pred/{i}"]
        margin = z[f"margin/{i}"]
        assert ours.shape == theirs.shape, i
        diff = ours != theirs
        # a pixel may differ only where Caffe itself barely decided
        assert not (diff & (margin >= 1e-3)).any(), f"{i}: {int((diff & (margin >= 1e-3)).sum())} confident pixels differ"
        total += ours.size
        differ += int(diff.sum())
    assert total == 349_836
    assert differ <= int(sum((z[k] < 1e-3).sum() for k in z.files if k.startswith("margin/")))  # 16
    assert rep["caffe"]["agree"] == total - differ


def test_sample_scores_match_caffe(sample_run):
    rep, _, _ = sample_run
    z = np.load(SAMPLE / "sample.caffe.npz")
    head = rep["heads"]["score"]
    for k in ("overall_acc", "mean_acc", "mean_iu", "fwavacc"):
        assert abs(head[k] - float(z[f"metric/{k}"])) < 1e-5, k
    np.testing.assert_allclose(head["iu"], z["metric/iu"], atol=1e-5)
    # the scores are those of our own matrix (FACTS.md formulas), not copied from Caffe's
    assert head["mean_iu"] == scores(head["hist"])["mean_iu"]
    assert np.abs(head["hist"] - z["hist"]).sum() <= 2 * 16


def test_sample_report_says_what_it_is(sample_run):
    _, _, text = sample_run
    assert "NOT PASCAL VOC" in text
    assert "ours vs Caffe's own run" in text and "pixel agreement with Caffe" in text
    assert "To run the real reproduction" in text and registry.net("fcn8s").url in text


# ---------------------------------------------------------------- the published numbers

VOC_NETS = [n for n, e in registry.NETS.items() if e.dataset == "voc"]


def _originals(name: str):
    wdir, voc = os.environ.get("FCN_REPRO_WEIGHTS_DIR"), os.environ.get("FCN_REPRO_VOC_DIR")
    entry = registry.net(name)
    if not wdir or not voc:
        pytest.skip("set FCN_REPRO_WEIGHTS_DIR (original caffemodels) and FCN_REPRO_VOC_DIR "
                    "(VOCdevkit/VOC2011) to check the reference mean IU")
    w = Path(wdir) / entry.caffemodel
    if not w.is_file():
        pytest.skip(f"{w} not present (download {entry.url})")
    if not (Path(voc) / "JPEGImages").is_dir():
        pytest.skip(f"{voc} is not a VOC year directory (JPEGImages/ missing)")
    return entry, w, voc


def test_reference_voc_nets_are_listed():
    assert VOC_NETS == ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn-alexnet"]


@pytest.mark.slow
@pytest.mark.parametrize("name", VOC_NETS)
def test_reference_mean_iu(name):
    entry, w, voc = _originals(name)
    device = os.environ.get("FCN_REPRO_DEVICE", "cpu")
    rep = ev.evaluate(net=name, weights=str(w), data=voc, split="seg11valid", device=device,
                      progress=True, out=io.StringIO())
    assert rep["images"] == 736
    head = rep["heads"]["score"]
    ref = entry.reference("score", asserted=True)
    # every published score (four decimals for the VGG nets, mean IU to one
    # decimal for FCN-AlexNet), to half a unit of its last digit, at least 0.005 points
    tol = max(0.005, 0.5 * 10 ** -ref.decimals)
    for key, want in ref.scores().items():
        if want is None:
            continue
        ours = 100 * head[key]
        assert abs(ours - 100 * want) <= tol, f"{name}: {key} {ours:.4f}, published {100 * want:.{ref.decimals}f}"
