"""Streaming (fcn_repro.streaming): every layer's rows computed once, band by band, give the whole-image scores.

Every Caffe fixture net (two-head SIFT Flow and two-input NYUD included),
plain and fast forward, float64 (to 1e-12) and float32 (1e-6 relative, the
issue's bound, and the same argmax), at image sizes from the smallest the net
takes (1x1: pad 100 makes it one score) to a tall strip, with bands of 1 row
up to a few strides and bands that do not divide the image; column windows
(exact tiles along the columns) under streamed rows; prototxts with layers the
FCNs lack (AVE pooling with pad, stride 2, a convolution read twice); the
memory bound (the rows held do not grow with the image); the planner's choice
and its refusals; FCN-8s at the real widths (slow: ~1 min), streamed and tiled.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fcn_repro.caffe import Net
from fcn_repro.caffe.fcn_nets import build_net
from fcn_repro.caffe.fillers import bilinear_weight
from fcn_repro.caffe.prototxt import write_prototxt
from fcn_repro.fast import optimize
from fcn_repro.fast.fidelity import fidelity
from fcn_repro.streaming import Stream, StreamError, plan_image, run_image
from fcn_repro.tiles import Geometry, TilingError, run_tiled
from test_tiles import F32_REL, NETS, _feed, _model, _net

CPU = torch.device("cpu")


def _streamed(net, geo, feed, chunk, tile=None, budget=None, held_rows=None):
    h, w = next(iter(feed.values())).shape[1:]
    plan = (plan_image(net, (h, w), tile=tile, geometry=geo, stream=chunk) if chunk
            else plan_image(net, (h, w), budget=budget, geometry=geo))
    got = {}

    def sink(head, shape):
        got[head] = np.full(shape, np.nan, next(iter(feed.values())).dtype)
        return got[head]

    if held_rows is not None:
        stream = Stream(net, geo)
        x = {b: torch.from_numpy(v)[None] for b, v in feed.items()}
        stream.run(x, plan.stream, (h, w), (0, w), lambda *a: None, held_rows=held_rows)
        return plan, None, None
    labels = run_image(net, feed, plan, geo.outputs, CPU, scores=sink, progress=False, geometry=geo)
    return plan, labels, got


def _check(net, geo, feed, chunk, rel, tile=None, budget=None):
    with torch.inference_mode():
        whole = net(**{b: torch.from_numpy(v)[None] for b, v in feed.items()})
    plan, labels, got = _streamed(net, geo, feed, chunk, tile, budget)
    assert plan.stream > 0, plan.describe()
    for head in geo.outputs:
        ref = whole[head][0].numpy()
        assert got[head].shape == ref.shape and not np.isnan(got[head]).any(), head
        err = float(np.abs(got[head] - ref).max() / np.abs(ref).max())
        assert err <= rel, (head, plan.describe(), err)
        assert np.array_equal(labels[head], ref.argmax(0)), head
    return plan


CASES = [((1, 1), 1), ((37, 3), 5), ((545, 5), 32), ((300, 40), 7)]


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
@pytest.mark.parametrize("name", NETS)
def test_streamed_equals_whole_float32(name, fast):
    m, geo = _model(name, fast)
    for (h, w), chunk in CASES:
        _check(m, geo, _feed(geo, h, w, np.float32, seed=h), chunk, F32_REL)


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
@pytest.mark.parametrize("name", ["fcn32s", "fcn8s", "fcn-alexnet", "siftflow-fcn8s", "nyud-fcn32s-color-hha"])
def test_streamed_equals_whole_float64(name, fast):
    m, geo = _model(name, fast, torch.float64)
    for (h, w), chunk in CASES[1:]:
        _check(m, geo, _feed(geo, h, w, np.float64, seed=h), chunk, 1e-12)


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
@pytest.mark.parametrize("name", ["fcn8s", "siftflow-fcn8s", "nyud-fcn32s-color-hha"])
def test_streamed_rows_in_column_windows(name, fast):
    """Column windows too small for the net's margins (enlarged) under streamed rows, 2-D images."""
    m, geo = _model(name, fast)
    plan = _check(m, geo, _feed(geo, 515, 509, np.float32, seed=3), 64, F32_REL, tile=16)
    assert len(plan.cols) >= 2 and plan.rows[0].keep1 == plan.out_size[0]
    assert "streamed" in plan.describe() and "column windows" in plan.describe()


def test_automatic_plan_streams_over_budget():
    net = _net("fcn8s")
    geo = Geometry(net)
    feed = _feed(geo, 700, 90, np.float32)
    est = geo.peak_bytes(700, 90)
    plan = _check(net, geo, feed, None, F32_REL, budget=est // 3)
    assert plan.stream % geo.stride[0] == 0 and len(plan.cols) == 1
    assert "over the budget" in plan.notes[0] and "streamed layer by layer" in plan.notes[0]
    # a budget too small for a band of the full width: column windows, still exact
    plan = _check(net, geo, _feed(geo, 300, 700, np.float32), None, F32_REL, budget=est // 400)
    assert plan.stream == geo.stride[0] and len(plan.cols) > 1
    assert not plan_image(net, (700, 90), budget=est, geometry=geo).tiled      # fits: whole image
    assert not plan_image(net, (700, 90), tile=96, budget=est // 3, geometry=geo).stream   # tiles asked for
    with pytest.raises(TilingError, match="run_image"):
        run_tiled(net, feed, plan, geo.outputs, CPU)


def test_rows_held_do_not_grow_with_the_image():
    """What a map holds is bounded by the band and the layers' windows, not by the image's height."""
    net = _net("fcn8s")
    geo = Geometry(net)
    held = []
    for h in (400, 1600):
        rows: dict = {}
        _streamed(net, geo, _feed(geo, h, 24, np.float32), 32, held_rows=rows)
        held.append(rows)
    assert held[0].keys() == held[1].keys()
    assert max(held[1].values()) <= 32 + 8
    for v in held[0]:
        assert held[1][v] <= held[0][v] + 2, v


_ODD = """
name: "odd"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 20 dim: 20 } } }
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
        convolution_param { num_output: 4 kernel_h: 5 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 3 pad_w: 1 dilation: 1
                            weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "r" type: "ReLU" bottom: "c" top: "r" }
layer { name: "s" type: "Eltwise" bottom: "c" bottom: "r" top: "s" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 } }
layer { name: "p" type: "Pooling" bottom: "s" top: "p" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "q" type: "Pooling" bottom: "s" top: "q" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "cp" type: "Crop" bottom: "p" bottom: "q" top: "cp" crop_param { axis: 2 offset: 1 } }
layer { name: "cat" type: "Concat" bottom: "q" bottom: "cp" top: "cat" }
layer { name: "d" type: "Convolution" bottom: "cat" top: "d"
        convolution_param { num_output: 3 kernel_size: 3 dilation: 2 pad: 2
                            weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.2 } } }
layer { name: "up" type: "Deconvolution" bottom: "d" top: "up"
        convolution_param { num_output: 3 kernel_size: 6 stride: 4 pad: 0 group: 3
                            weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.3 } } }
layer { name: "score" type: "Crop" bottom: "up" bottom: "data" top: "score" crop_param { axis: 2 offset: 1 } }
"""


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
def test_any_prototxt(tmp_path, fast):
    """Layers and windows the FCNs lack: a stride-2 tall kernel, a convolution read by a ReLU and an Eltwise
    (no in-place fusion there), AVE pooling with pad, MAX pooling with CEIL rounding, a crop, a concat, a
    dilated convolution and a grouped deconvolution."""
    p = tmp_path / "odd.prototxt"
    p.write_text(_ODD)
    net = Net(str(p), seed=0).eval().double()
    m = optimize(net) if fast else net
    geo = Geometry(net)
    rng = np.random.default_rng(1)
    for (h, w), chunk in [((61, 23), 1), ((61, 23), 4), ((97, 40), 13), ((20, 20), 50)]:
        _check(m, geo, {"data": rng.standard_normal((3, h, w))}, chunk, 1e-12)
    assert not any(n.relu for n in Stream(net, geo).nodes)


_LRN = """
name: "l"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 20 dim: 20 } } }
layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "n" type: "LRN" bottom: "c" top: "n" lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL } }
"""


def test_refusals(tmp_path):
    p = tmp_path / "lrn.prototxt"
    p.write_text(_LRN)
    net = Net(str(p), seed=0).eval()
    geo = Geometry(net)
    with pytest.raises(StreamError, match="'n' \\(LRN\\).*WITHIN_CHANNEL"):
        Stream(net, geo)
    with pytest.raises(StreamError):
        plan_image(net, (400, 400), geometry=geo, stream=8)
    # the automatic plan falls back to exact tiles for it
    plan = plan_image(net, (400, 400), budget=geo.peak_bytes(400, 400) // 8, geometry=geo)
    assert plan.tiled and not plan.stream and plan.count > 1
    fcn = _net("fcn32s")
    with pytest.raises(TilingError, match="at least 1"):
        plan_image(fcn, (100, 100), stream=0)


@pytest.mark.slow
def test_full_width_fcn8s_streamed_and_tiled():
    """FCN-8s at the real widths (64..512 channels, fc 4096: the fast path's Winograd layers, fc6's 7x7 GEMM),
    He-scaled random weights and the bilinear upsampling, at 1000x420: plain, streamed and tiled equal the
    whole image within 1e-6 relative, the same argmax; fast, whole, streamed and tiled are each within the
    fast path's error budget of the plain whole image (fcn_repro.fast.fidelity)."""
    with tempfile.TemporaryDirectory() as d:
        proto = Path(d) / "fcn8s.prototxt"
        write_prototxt(proto, build_net("fcn8s", "deploy"))
        net = Net(str(proto), seed=0).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in net.layer_names:
            params = net.params.get(name) or []
            for i, p in enumerate(params):
                if net.layer(name).type_name == "Deconvolution" and i == 0:
                    p.copy_(torch.from_numpy(bilinear_weight(tuple(p.shape))))
                elif i == 0:
                    p.normal_(0.0, float(np.sqrt(2.0 / np.prod(p.shape[1:]))), generator=g)
                else:
                    p.normal_(0.0, 0.1, generator=g)
    geo = Geometry(net)
    rng = np.random.default_rng(5)
    feed = {"data": (rng.uniform(0, 255, (3, 420, 1000)) - 110).astype(np.float32)}
    x = torch.from_numpy(feed["data"])[None]
    with torch.inference_mode():
        plain = net(data=x)["score"][0].numpy()
    _check(net, geo, feed, 64, F32_REL)
    _tiled_equals(net, geo, feed, plain, lambda got: float(np.abs(got - plain).max() / np.abs(plain).max())
                  <= F32_REL and np.array_equal(got.argmax(0), plain.argmax(0)))
    # The fast path's Winograd layers round by a pixel's place in their tile grid, laid on the whole map;
    # the whole image's compressed background is not laid on it, so streamed, tiled and whole fast
    # scores differ by rounding: each within the fast path's budget of the plain forward.
    fast = optimize(net)
    assert any(k.wino is not None for k in fast._kernels.values()) or not fast._kernels
    with torch.inference_mode():
        whole = fast(data=x)["score"][0].numpy()
    assert fidelity(whole, plain).ok, str(fidelity(whole, plain))
    plan, labels, got = _streamed(fast, geo, feed, 64)
    assert plan.stream > 0 and fidelity(got["score"], plain).ok, str(fidelity(got["score"], plain))
    assert np.array_equal(labels["score"], got["score"].argmax(0))
    _tiled_equals(fast, geo, feed, plain, lambda got: fidelity(got, plain).ok)


def _tiled_equals(m, geo, feed, ref, ok):
    plan = plan_image(m, ref.shape[1:], tile=300, geometry=geo)
    got = {}
    labels = run_image(m, feed, plan, ["score"], CPU, progress=False, geometry=geo,
                       scores=lambda h, shape: got.setdefault(h, np.zeros(shape, np.float32)))
    assert plan.count > 1 and not plan.stream
    assert ok(got["score"])
    assert np.array_equal(labels["score"], got["score"].argmax(0))
