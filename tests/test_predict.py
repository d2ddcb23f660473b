"""fcn_repro.load and the Predictor: image in, labels out (on the bundled sample and generated images)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import fcn_repro
from fcn_repro import hub, registry
from fcn_repro.data import resource_path
from fcn_repro.registry import MEAN_NYUD_COLOR, MEAN_NYUD_HHA, MEAN_NYUD_LOGD, MEAN_VOC
from fcn_repro.data.transforms import preprocess
from fcn_repro.resolve import WeightsNotFoundError
from fcn_repro.predict import Prediction, Predictor, Transforms, expand_images

SAMPLE = resource_path("sample")
CAFFE = np.load(SAMPLE / "sample.caffe.npz")


@pytest.fixture(scope="module")
def model():
    return fcn_repro.load("sample")


def _img(h, w, seed):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_load_sample_gives_net_transforms_and_categories(model):
    assert model.meta["categories"] == ["background", "disc", "square", "triangle", "ring"]
    assert model.meta["heads"] == {"score": model.meta["categories"]}
    assert model.meta["inputs"] == {"data": ["data"]}
    assert np.array_equal(model.transforms().mean, MEAN_VOC)
    assert not model.net.training
    rgb = np.array(Image.open(SAMPLE / "sample" / "JPEGImages" / "s0003.jpg").convert("RGB"))
    x = model.transforms()(rgb)
    assert list(x) == ["data"] and np.array_equal(x["data"], preprocess(rgb, MEAN_VOC))
    with torch.no_grad():
        ref = model.net(data=torch.from_numpy(x["data"])[None])["score"][0].argmax(0).numpy()
    pred = model.predict(SAMPLE / "sample" / "JPEGImages" / "s0003.jpg")
    assert isinstance(pred, Prediction) and np.array_equal(pred.label, ref)
    # Caffe's own prediction, except where its top two scores are within float rounding
    assert ((pred.label == CAFFE["pred/s0003"]) | (CAFFE["margin/s0003"] < 1e-3)).all()


def test_predict_directory_and_list_in_order(model, tmp_path):
    paths = []
    for i, (h, w) in enumerate([(40, 52), (40, 52), (33, 61), (40, 52)]):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(_img(h, w, i)).save(p)
        paths.append(p)
    (tmp_path / "readme.txt").write_text("x")
    got = model.predict(tmp_path)
    assert isinstance(got, list) and [p.source for p in got] == paths
    assert [p.size for p in got] == [(40, 52), (40, 52), (33, 61), (40, 52)]
    assert [p.source for p in model.predict(str(tmp_path / "im[13].png"))] == [paths[1], paths[3]]
    arrays = [np.array(Image.open(p)) for p in paths]
    assert [p.size for p in model.predict(arrays)] == [(40, 52), (40, 52), (33, 61), (40, 52)]


def test_batching_equal_sizes_changes_nothing(model):
    imgs = [_img(36, 44, s) for s in range(3)] + [_img(50, 30, 9)] + [_img(36, 44, 5)]
    calls = []
    orig = model.net.forward

    def spy(**kw):
        calls.append(tuple(next(iter(kw.values())).shape))
        return orig(**kw)

    model.net.forward = spy
    try:
        batched = model.predictor(batch_size=4).predict(imgs, scores=True)
        calls_batched, calls[:] = list(calls), []
        single = model.predictor(batch_size=1).predict(imgs, scores=True)
    finally:
        del model.net.forward
    assert [c[0] for c in calls_batched] == [3, 1, 1]      # consecutive equal sizes go together
    assert [c[0] for c in calls] == [1] * 5
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a.scores["score"], b.scores["score"], rtol=1e-5, atol=1e-5)
        margin = np.sort(b.scores["score"], 0)
        assert ((a.label == b.label) | (margin[-1] - margin[-2] < 1e-4)).all()


def test_scores_and_probabilities(model):
    p = model.predict(_img(30, 40, 1), scores=True, probabilities=True)
    s, pr = p.scores["score"], p.probabilities["score"]
    assert s.shape == pr.shape == (5, 30, 40) and s.dtype == pr.dtype == np.float32
    np.testing.assert_allclose(pr.sum(0), 1.0, rtol=1e-5)
    assert np.array_equal(pr.argmax(0), p.label) or (np.abs(pr.argmax(0) != p.label).mean() < 1e-3)
    assert model.predict(_img(30, 40, 1)).scores is None


def test_unreadable_image_raises_or_is_skipped(model, tmp_path):
    good = tmp_path / "a.png"
    Image.fromarray(_img(20, 20, 0)).save(good)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ValueError, match="b.png"):
        model.predict([good, bad])
    errors = []
    got = list(model.predictor().iter([bad, good], on_error=lambda s, e: errors.append((s, e))))
    assert [g.source for g in got] == [good] and errors[0][0] == bad


def test_nyud_transforms_take_color_hha_depth():
    t = Transforms.for_net(registry.net("nyud-fcn32s-color-hha"))
    assert t.reads == ["color", "hha"] and not t.single_image
    rgb, hha = _img(6, 7, 1), _img(6, 7, 2)
    x = t(color=rgb, hha=hha)
    assert np.array_equal(x["color"], preprocess(rgb, MEAN_NYUD_COLOR))
    assert np.array_equal(x["hha"], preprocess(hha, MEAN_NYUD_HHA, bgr=False))    # HHA: file channel order
    with pytest.raises(ValueError, match="hha"):
        t(rgb)
    d = Transforms.for_net(registry.net("nyud-fcn32s-color-d"))
    depth = np.full((6, 7), 2500, np.uint16)
    y = d(color=rgb, depth=depth)
    assert y["depth"].shape == (1, 6, 7)
    np.testing.assert_array_equal(y["depth"][0], np.log(np.float32(2500)) - MEAN_NYUD_LOGD[0])


def test_load_without_weights_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("FCN_REPRO_WEIGHTS_DIR", str(tmp_path / "w"))
    with pytest.raises(WeightsNotFoundError) as ei:
        fcn_repro.load("fcn16s")
    msg = str(ei.value)
    assert "download=True" in msg and "python -m fcn_repro.zoo download fcn16s" in msg
    with pytest.raises(ValueError, match="unknown net"):
        fcn_repro.load("fcn7s")


def test_load_with_given_weights_refuses_another_nets_file(tmp_path):
    with pytest.raises(ValueError):
        fcn_repro.load("sample", weights=resource_path("sample", "fcn8s-shapes.prototxt"))


def test_expand_images_keeps_missing_paths(tmp_path):
    assert expand_images([tmp_path / "nope.jpg"]) == [tmp_path / "nope.jpg"]
    assert expand_images(str(tmp_path / "*.jpg")) == []


def test_predictor_on_a_plain_net(model):
    p = Predictor(model.net, Transforms.for_net(None), batch_size=3)
    assert p.predict(_img(24, 24, 3)).label.shape == (24, 24)


def test_weights_found_in_the_download_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FCN_REPRO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FCN_REPRO_WEIGHTS_DIR", str(tmp_path / "home" / "weights"))
    (tmp_path / "home" / "weights").mkdir(parents=True)
    f = tmp_path / "home" / "weights" / "fcn16s-heavy-pascal.caffemodel"
    f.write_bytes(b"x")
    assert hub.find_weights(f.name) == f


def test_predictor_feeds_a_two_input_nyud_net():
    from conftest import caffe_fixture
    from fcn_repro.caffe import Net

    net = Net(str(caffe_fixture("nyud-fcn32s-color-hha.prototxt")),
              weights=str(caffe_fixture("nyud-fcn32s-color-hha.caffemodel"))).eval()
    t = Transforms.for_net(registry.net("nyud-fcn32s-color-hha"))
    rgb, hha = _img(21, 26, 4), _img(21, 26, 5)
    got = Predictor(net, t).predict({"color": rgb, "hha": hha}, scores=True)
    x = t(color=rgb, hha=hha)
    with torch.no_grad():
        ref = net(**{k: torch.from_numpy(v)[None] for k, v in x.items()})["score"][0].numpy()
    assert np.array_equal(got.scores["score"], ref) and np.array_equal(got.label, ref.argmax(0))
