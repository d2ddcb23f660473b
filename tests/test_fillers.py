"""Caffe fillers and FCN's bilinear upsampling initialisation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fcn_repro.caffe.fillers import (
    FillerError, bilinear_kernel, bilinear_weight, fill, fill_layer, fill_params, layer_fillers,
)
from fcn_repro.caffe.prototxt import parse_text


def _brute_bilinear(k):
    # The FACTS.md formula written out element by element.
    f = math.ceil(k / 2)
    c = f - 1 if k % 2 == 1 else f - 0.5
    return np.array([[(1 - abs(i - c) / f) * (1 - abs(j - c) / f) for j in range(k)] for i in range(k)])


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 16, 32, 63, 64])
def test_bilinear_kernel_formula(k):
    np.testing.assert_allclose(bilinear_kernel(k, np.float64), _brute_bilinear(k), rtol=0, atol=1e-15)


def test_bilinear_kernel_known_values():
    # k=4 (FCN's upscore2): f=2, c=1.5 -> 1-D weights 0.25, 0.75, 0.75, 0.25.
    np.testing.assert_allclose(bilinear_kernel(4, np.float64)[0] / 0.25, [0.25, 0.75, 0.75, 0.25])
    # odd k=3: f=2, c=1 -> 0.5, 1, 0.5; the kernel is symmetric and peaks at the centre.
    np.testing.assert_allclose(bilinear_kernel(3, np.float64)[1], [0.5, 1.0, 0.5])
    k63 = bilinear_kernel(63, np.float64)
    assert k63.argmax() == 31 * 63 + 31 and np.allclose(k63, k63[::-1, ::-1])
    # Interpolation property for an even kernel with stride f: the taps that
    # land on one output pixel sum to 1 (here the 1-D taps f apart).
    k64 = bilinear_kernel(64, np.float64)
    w = k64[31] / math.sqrt(k64[31, 31])  # the 1-D weights: kernel = outer(w, w)
    for r in range(32):
        assert abs(w[r] + w[r + 32] - 1.0) < 1e-12


def test_bilinear_weight_diagonal_and_depthwise():
    w = bilinear_weight((21, 21, 4, 4))
    assert w.dtype == np.float32 and w.shape == (21, 21, 4, 4)
    for i in range(21):
        np.testing.assert_array_equal(w[i, i], bilinear_kernel(4))
    off = w.copy()
    off[np.arange(21), np.arange(21)] = 0
    assert not off.any()
    d = bilinear_weight((5, 1, 6, 6))
    for i in range(5):
        np.testing.assert_array_equal(d[i, 0], bilinear_kernel(6))
    with pytest.raises(FillerError, match="square"):
        bilinear_weight((3, 3, 4, 5), where="layer 'up'")
    with pytest.raises(FillerError, match="layer 'up'"):
        bilinear_weight((3, 4, 4, 4), where="layer 'up'")


def test_caffe_bilinear_filler_fills_every_channel_pair():
    w = fill((3, 2, 5, 5), {"type": "bilinear"})
    for i in range(3):
        for j in range(2):
            np.testing.assert_array_equal(w[i, j], bilinear_kernel(5))
    with pytest.raises(FillerError, match="square"):
        fill((2, 2, 3, 4), {"type": "bilinear"})


def test_constant_default_is_zero():
    assert not fill((4, 3, 2, 2)).any()
    assert (fill((7,), {"type": "constant", "value": 2}) == 2).all()


def test_random_fillers_statistics():
    rng = np.random.default_rng(0)
    shape = (64, 32, 3, 3)  # fan_in 288, fan_out 576
    u = fill(shape, {"type": "uniform", "min": -2, "max": 3}, rng)
    assert u.min() >= -2 and u.max() <= 3 and abs(u.mean() - 0.5) < 0.05
    g = fill(shape, {"type": "gaussian", "mean": 1, "std": 0.5}, rng)
    assert abs(g.mean() - 1) < 0.02 and abs(g.std() - 0.5) < 0.02
    x = fill(shape, {"type": "xavier"}, rng)
    lim = math.sqrt(3 / 288)
    assert np.abs(x).max() <= lim and abs(x.std() - lim / math.sqrt(3)) < 0.005
    xo = fill(shape, {"type": "xavier", "variance_norm": "FAN_OUT"}, rng)
    assert np.abs(xo).max() <= math.sqrt(3 / 576) and np.abs(xo).max() > math.sqrt(3 / 288) * 0.6
    m = fill(shape, {"type": "msra"}, rng)
    assert abs(m.std() - math.sqrt(2 / 288)) / math.sqrt(2 / 288) < 0.03
    ma = fill(shape, {"type": "msra", "variance_norm": "AVERAGE"}, rng)
    assert abs(ma.std() - math.sqrt(2 / 432)) / math.sqrt(2 / 432) < 0.03
    pu = fill((10, 6), {"type": "positive_unitball"}, rng)
    assert (pu >= 0).all()
    np.testing.assert_allclose(pu.sum(1), 1, rtol=1e-6)
    sp = fill((100, 400), {"type": "gaussian", "sparse": 10}, rng)
    assert abs((sp != 0).mean() - 0.1) < 0.01
    with pytest.raises(FillerError, match="unknown filler"):
        fill((2,), {"type": "nope"})
    with pytest.raises(FillerError, match="sparse"):
        fill((2, 2), {"type": "xavier", "sparse": 1})


def test_seeded_fills_repeat():
    a = fill((5, 5), {"type": "gaussian"}, np.random.default_rng(3))
    b = fill((5, 5), {"type": "gaussian"}, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)


NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.01 }
                      bias_filler { type: "constant" value: 0.5 } } }
layer { name: "score" type: "Convolution" bottom: "conv" top: "score" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "sc" type: "Scale" bottom: "score" top: "sc" scale_param { bias_term: true } }
layer { name: "up" type: "Deconvolution" bottom: "sc" top: "up"
  convolution_param { num_output: 2 kernel_size: 4 stride: 2 weight_filler { type: "bilinear" } bias_term: false } }
"""


def test_layer_fillers_defaults_and_fill_params():
    net = parse_text(NET)
    layers = {str(layer.get("name")): layer for layer in net.getall("layer")}
    f = layer_fillers(layers["score"], 2)
    assert [str(x.get("type")) for x in f] == ["constant", "constant"] and float(f[0].get("value")) == 0
    s = layer_fillers(layers["sc"], 2)
    assert float(s[0].get("value")) == 1 and float(s[1].get("value")) == 0  # Scale gamma defaults to 1
    blobs = fill_layer(layers["conv"], [(4, 3, 3, 3), (4,)], np.random.default_rng(0))
    assert abs(blobs[0].std() - 0.01) < 0.005 and (blobs[1] == 0.5).all()

    params = {
        "conv": [torch.nn.Parameter(torch.full((4, 3, 3, 3), 9.0)), torch.nn.Parameter(torch.full((4,), 9.0))],
        "score": [torch.nn.Parameter(torch.full((2, 4, 1, 1), 9.0)), torch.nn.Parameter(torch.full((2,), 9.0))],
        "sc": [torch.nn.Parameter(torch.full((2,), 9.0)), torch.nn.Parameter(torch.full((2,), 9.0))],
        "up": [torch.nn.Parameter(torch.full((2, 2, 4, 4), 9.0))],
    }
    params["alias"] = [params["conv"][0]]  # a shared blob is filled once, by its owner
    done = fill_params(params, net, rng=1)
    assert done == ["conv", "score", "sc", "up"]
    assert not params["score"][0].any() and not params["score"][1].any()
    assert (params["sc"][0] == 1).all() and (params["sc"][1] == 0).all()
    assert (params["conv"][1] == 0.5).all() and params["conv"][0].abs().max() < 0.1
    np.testing.assert_array_equal(params["up"][0][1, 0].detach().numpy(), bilinear_kernel(4))
    # same seed, same values
    before = params["conv"][0].detach().clone()
    fill_params(params, net, rng=1, layers=["conv"])
    assert torch.equal(before, params["conv"][0])


def test_scale_with_gamma_bottom_fills_beta_with_bias_filler():
    """Gamma from a second bottom: the layer's only blob is beta (bias_filler, default 0)."""
    from fcn_repro.caffe.fillers import layer_fillers
    from fcn_repro.caffe.prototxt import parse_text
    two = parse_text('type: "Scale" bottom: "a" bottom: "g" '
                     'scale_param { bias_term: true filler { type: "constant" value: 3 } }')
    (f,) = layer_fillers(two, 1)
    assert str(f.get("type")) == "constant" and float(f.get("value", 0)) == 0
    one = parse_text('type: "Scale" bottom: "a" scale_param { bias_term: true }')
    gamma, beta = layer_fillers(one, 2)
    assert float(gamma.get("value")) == 1 and float(beta.get("value", 0)) == 0
