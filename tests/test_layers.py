"""Layer semantics against independent numpy references of Caffe's rules (FACTS.md).

Each layer is built through the public Net API from a tiny prototxt, so the
parameter parsing is exercised too. The Caffe fixtures (test_conformance.py)
check the same layers against real Caffe on fixed cases; these tests sweep
the edge cases (pooling windows, ties, normalization modes) more widely.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fcn_repro.caffe import Net
from fcn_repro.caffe.layers import LayerError, NetError
from fcn_repro.caffe.layers.pooling import caffe_pool_out, torch_pool_out

FLT_MAX = float(np.finfo(np.float32).max)


def layer_net(ltype: str, body: str = "", bottoms: dict | None = None, tops=("y",), name="l",
              extra: str = "", **kw) -> Net:
    """A net with Input layers for ``bottoms`` {name: shape} and one layer of ``ltype``."""
    bottoms = bottoms or {"x": (2, 3, 9, 11)}
    text = ""
    for b, shape in bottoms.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        text += f'layer {{ name: "{b}" type: "Input" top: "{b}" input_param {{ shape {{ {dims} }} }} }}\n'
    text += (f'layer {{ name: "{name}" type: "{ltype}" '
             + " ".join(f'bottom: "{b}"' for b in bottoms) + " "
             + " ".join(f'top: "{t}"' for t in tops) + f" {extra} {body} }}\n")
    return Net(text, **kw)


def rnd(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


# ------------------------------------------------------------------ pooling

def ref_pool(x: np.ndarray, k, s, p, method: str, ceil: bool = True, global_pool=False):
    """Caffe's pooling, written from FACTS.md with explicit loops (float64)."""
    n, c, H, W = x.shape
    if global_pool:
        k, s, p = (H, W), (1, 1), (0, 0)

    def out_size(size, kk, ss, pp):
        v = (size + 2 * pp - kk) / ss
        o = (math.ceil(v) if ceil else math.floor(v)) + 1
        if (p[0] > 0 or p[1] > 0) and (o - 1) * ss >= size + pp:
            o -= 1
        return o

    oh, ow = out_size(H, k[0], s[0], p[0]), out_size(W, k[1], s[1], p[1])
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s[0] - p[0], j * s[1] - p[1]
            if method == "MAX":
                h0, h1 = max(hs, 0), min(hs + k[0], H)
                w0, w1 = max(ws, 0), min(ws + k[1], W)
                win = x[:, :, h0:h1, w0:w1].reshape(n, c, -1)
                y[:, :, i, j] = win.max(-1) if win.shape[-1] else -FLT_MAX
            else:
                he, we = min(hs + k[0], H + p[0]), min(ws + k[1], W + p[1])
                size = (he - hs) * (we - ws)
                h0, h1, w0, w1 = max(hs, 0), min(he, H), max(ws, 0), min(we, W)
                y[:, :, i, j] = x[:, :, h0:h1, w0:w1].sum((2, 3)) / size
    return y


POOL_CASES = [
    # (kernel, stride, pad, H, W)
    ((2, 2), (2, 2), (0, 0), 9, 11),     # FCN pools, odd sizes: ceil adds a clipped window
    ((3, 3), (2, 2), (0, 0), 15, 19),
    ((3, 3), (2, 2), (1, 1), 15, 19),
    ((3, 3), (2, 2), (1, 1), 6, 5),      # the last-window clipping rule applies
    ((2, 2), (2, 2), (1, 1), 5, 7),      # pad > 0 and (out-1)*s >= H+p: one window dropped
    ((2, 3), (2, 3), (0, 0), 15, 19),    # rectangular
    ((3, 2), (1, 2), (1, 0), 7, 8),      # pad on one axis only: the rule still checks both
    ((4, 4), (3, 3), (3, 3), 10, 9),     # pad > kernel/2: PyTorch cannot pad this itself
    ((1, 1), (3, 3), (0, 0), 5, 8),      # stride > kernel, no pad: a window starts past the image
    ((5, 5), (1, 1), (2, 2), 3, 4),      # kernel larger than the image
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("ceil", [True, False])
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: "k{}s{}p{}_{}x{}".format(*c))
def test_pooling_matches_caffe_rule(case, method, ceil):
    k, s, p, H, W = case
    body = (f"pooling_param {{ pool: {method} kernel_h: {k[0]} kernel_w: {k[1]} stride_h: {s[0]} "
            f"stride_w: {s[1]} pad_h: {p[0]} pad_w: {p[1]} round_mode: {'CEIL' if ceil else 'FLOOR'} }}")
    x = rnd(2, 3, H, W)
    ref = ref_pool(x.numpy(), k, s, p, method, ceil)
    try:
        net = layer_net("Pooling", body, {"x": (2, 3, H, W)})
    except NetError as e:  # pragma: no cover - every case here is a valid Caffe layer
        raise AssertionError(e)
    layer = net.layer("l")
    for explicit in (False, True):
        layer.force_explicit = explicit
        y = net.double()(x=x)["y"].detach().numpy()
        assert y.shape == ref.shape, (explicit, y.shape, ref.shape)
        np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12, err_msg=f"explicit={explicit}")


def test_pooling_default_round_mode_is_ceil_and_global():
    x = rnd(1, 2, 7, 5)
    net = layer_net("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }", {"x": (1, 2, 7, 5)}).double()
    assert net(x=x)["y"].shape == (1, 2, 4, 3)
    net = layer_net("Pooling", "pooling_param { pool: AVE global_pooling: true }", {"x": (1, 2, 7, 5)}).double()
    y = net(x=x)["y"]
    assert y.shape == (1, 2, 1, 1)
    np.testing.assert_allclose(y.numpy()[..., 0, 0], x.numpy().mean((2, 3)), rtol=1e-12)
    # global pooling follows the input size at every forward (Caffe reshapes)
    assert net(x=rnd(1, 2, 4, 9))["y"].shape == (1, 2, 1, 1)


def test_pooling_max_gradient_goes_to_first_max_on_ties():
    """Caffe's MAX backward: the first maximum in window scan order (row-major) gets the gradient."""
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 1, 1] = x[0, 0, 1, 0] = 1.0  # tie inside the first window: (1, 0) comes first
    x.requires_grad_(True)
    net = layer_net("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }", {"x": (1, 1, 4, 4)}).double()
    net(x=x)["y"].sum().backward()
    g = x.grad[0, 0].numpy()
    assert g[1, 0] == 1 and g[1, 1] == 0 and g[0, 0] == 0
    # the all-zero windows: their first element (top-left) gets it
    assert g[0, 2] == 1 and g[2, 0] == 1 and g[2, 2] == 1 and g.sum() == 4


def test_pooling_mask_top_holds_argmax_index():
    x = rnd(1, 2, 7, 9)
    for explicit in (False, True):
        net = layer_net("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }",
                        {"x": (1, 2, 7, 9)}, tops=("y", "mask")).double()
        net.layer("l").force_explicit = explicit
        out = net(x=x)
        y, mask = out["y"].numpy(), out["mask"].numpy()
        flat = x.numpy().reshape(1, 2, -1)
        idx = mask.astype(np.int64).reshape(1, 2, -1)
        np.testing.assert_array_equal(np.take_along_axis(flat, idx, -1), y.reshape(1, 2, -1))


def test_pooling_rejects_bad_params():
    with pytest.raises(LayerError, match="pad .* smaller than the kernel"):
        layer_net("Pooling", "pooling_param { pool: MAX kernel_size: 2 pad: 2 }")
    with pytest.raises(LayerError, match="kernel_size .*required"):
        layer_net("Pooling", "pooling_param { pool: MAX }")
    with pytest.raises(LayerError, match="global_pooling"):
        layer_net("Pooling", "pooling_param { pool: MAX global_pooling: true kernel_size: 2 }")
    with pytest.raises(LayerError, match="STOCHASTIC"):
        layer_net("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 2 }")


def test_pooling_output_size_rules():
    # FCN's 2x2/2 pools on any size: PyTorch's ceil mode agrees with Caffe's
    for n in range(1, 40):
        assert caffe_pool_out(n, 2, 2, 0, True, False) == torch_pool_out(n, 2, 2, 0, True)
    # stride > kernel without padding: Caffe keeps a window PyTorch drops
    assert caffe_pool_out(5, 1, 3, 0, True, False) == 3 and torch_pool_out(5, 1, 3, 0, True) == 2
    # with padding the last window must start inside the image or the left padding
    assert caffe_pool_out(5, 2, 2, 1, True, True) == 3  # ceil(5/2)+1 = 4, but (4-1)*2 >= 5+1
    assert caffe_pool_out(6, 3, 2, 1, True, True) == 4


# --------------------------------------------------------------------- LRN

def ref_lrn(x: np.ndarray, n: int, alpha: float, beta: float, k: float, region: str):
    N, C, H, W = x.shape
    sq = x ** 2
    half = (n - 1) // 2
    if region == "ACROSS_CHANNELS":
        scale = np.empty_like(x)
        for c in range(C):
            lo, hi = max(0, c - half), min(C, c + half + 1)
            scale[:, c] = k + alpha / n * sq[:, lo:hi].sum(1)
    else:
        pad = np.pad(sq, ((0, 0), (0, 0), (half, half), (half, half)))
        acc = np.zeros_like(x)
        for i in range(n):
            for j in range(n):
                acc += pad[:, :, i:i + H, j:j + W]
        scale = 1 + alpha * acc / (n * n)
    return x * scale ** -beta


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn(region, size):
    x = rnd(2, 7, 6, 5)
    body = f"lrn_param {{ local_size: {size} alpha: 0.7 beta: 0.6 k: 1.5 norm_region: {region} }}"
    net = layer_net("LRN", body, {"x": (2, 7, 6, 5)}).double()
    y = net(x=x)["y"].detach().numpy()
    np.testing.assert_allclose(y, ref_lrn(x.numpy(), size, 0.7, 0.6, 1.5, region), rtol=1e-12)
    with pytest.raises(LayerError, match="odd"):
        layer_net("LRN", "lrn_param { local_size: 4 }")


# ----------------------------------------------------------------- Eltwise

def test_eltwise_sum_prod_max():
    xs = {"a": (2, 3, 4, 5), "b": (2, 3, 4, 5), "c": (2, 3, 4, 5)}
    a, b, c = rnd(2, 3, 4, 5, seed=1), rnd(2, 3, 4, 5, seed=2), rnd(2, 3, 4, 5, seed=3)
    net = layer_net("Eltwise", "eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 3 }", xs).double()
    np.testing.assert_allclose(net(a=a, b=b, c=c)["y"].detach().numpy(), (0.5 * a - 2 * b + 3 * c).numpy(), rtol=1e-12)
    net = layer_net("Eltwise", "", xs).double()  # default operation: SUM
    np.testing.assert_allclose(net(a=a, b=b, c=c)["y"].detach().numpy(), (a + b + c).numpy(), rtol=1e-12)
    net = layer_net("Eltwise", "eltwise_param { operation: PROD }", xs).double()
    np.testing.assert_allclose(net(a=a, b=b, c=c)["y"].detach().numpy(), (a * b * c).numpy(), rtol=1e-12)
    net = layer_net("Eltwise", "eltwise_param { operation: MAX }", xs).double()
    np.testing.assert_array_equal(net(a=a, b=b, c=c)["y"].detach().numpy(), np.maximum(np.maximum(a.numpy(), b.numpy()), c.numpy()))
    with pytest.raises(LayerError, match="2 coeff values for 3 bottoms"):
        layer_net("Eltwise", "eltwise_param { coeff: 1 coeff: 2 }", xs)
    with pytest.raises(LayerError, match="only allowed with operation SUM"):
        layer_net("Eltwise", "eltwise_param { operation: MAX coeff: 1 coeff: 2 coeff: 3 }", xs)
    with pytest.raises(LayerError, match="same shape"):
        layer_net("Eltwise", "", {"a": (1, 2, 3, 3), "b": (1, 2, 3, 4)})(a=rnd(1, 2, 3, 3), b=rnd(1, 2, 3, 4))


def test_eltwise_max_gradient_follows_caffe_tie_rule():
    """Caffe: between bottoms 0 and 1 a tie goes to bottom 1; a later bottom needs to be strictly greater."""
    xs = {"a": (1, 1, 1, 4), "b": (1, 1, 1, 4), "c": (1, 1, 1, 4)}
    a = torch.tensor([[[[1.0, 2.0, 0.0, 5.0]]]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[[[1.0, 1.0, 3.0, 5.0]]]], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([[[[0.0, 2.0, 3.0, 9.0]]]], dtype=torch.float64, requires_grad=True)
    net = layer_net("Eltwise", "eltwise_param { operation: MAX }", xs).double()
    net(a=a, b=b, c=c)["y"].sum().backward()
    np.testing.assert_array_equal(a.grad.flatten().numpy(), [0, 1, 0, 0])
    np.testing.assert_array_equal(b.grad.flatten().numpy(), [1, 0, 1, 0])
    np.testing.assert_array_equal(c.grad.flatten().numpy(), [0, 0, 0, 1])


# -------------------------------------------------------------------- Crop

def test_crop_offsets_and_axes():
    x, ref = rnd(2, 5, 9, 11), rnd(1, 2, 4, 6)
    bottoms = {"x": (2, 5, 9, 11), "ref": (1, 2, 4, 6)}
    cases = [("crop_param { axis: 2 offset: 3 }", (slice(None), slice(None), slice(3, 7), slice(3, 9))),
             ("crop_param { axis: 2 offset: 1 offset: 5 }", (slice(None), slice(None), slice(1, 5), slice(5, 11))),
             ("crop_param { axis: 1 offset: 2 offset: 0 offset: 4 }", (slice(None), slice(2, 4), slice(0, 4), slice(4, 10))),
             ("crop_param { axis: -1 offset: 2 }", (slice(None), slice(None), slice(None), slice(2, 8))),
             ("", (slice(None), slice(None), slice(0, 4), slice(0, 6)))]
    for body, idx in cases:
        y = layer_net("Crop", body, bottoms).double()(x=x, ref=ref)["y"]
        np.testing.assert_array_equal(y.numpy(), x.numpy()[idx], err_msg=body)


def test_crop_out_of_range_names_layer_blobs_and_shapes():
    net = layer_net("Crop", "crop_param { axis: 2 offset: 6 }", {"big": (1, 2, 9, 11), "small": (1, 1, 4, 6)},
                    name="score_pool4c").double()
    with pytest.raises(LayerError) as ei:
        net(big=rnd(1, 2, 9, 11), small=rnd(1, 1, 4, 6))
    msg = str(ei.value)
    for s in ("score_pool4c", "'big'", "'small'", "(1, 2, 9, 11)", "(1, 1, 4, 6)", "offset 6"):
        assert s in msg, (s, msg)
    with pytest.raises(LayerError, match="needs 0, 1 or 2"):
        layer_net("Crop", "crop_param { axis: 2 offset: 1 offset: 2 offset: 3 }",
                  {"big": (1, 2, 9, 11), "small": (1, 1, 4, 6)})


# ------------------------------------------------------------ Scale, Concat

def test_scale_variants():
    x = rnd(2, 3, 4, 5)
    net = layer_net("Scale", "scale_param { bias_term: true }", {"x": (2, 3, 4, 5)}).double()
    gamma, beta = net.params["l"]
    assert gamma.shape == (3,) and beta.shape == (3,)
    # Caffe's default fillers: gamma 1, beta 0
    np.testing.assert_array_equal(gamma.detach().numpy(), 1.0)
    np.testing.assert_array_equal(beta.detach().numpy(), 0.0)
    with torch.no_grad():
        gamma.copy_(torch.tensor([1.0, -2.0, 3.0]))
        beta.copy_(torch.tensor([0.5, 0.0, -1.0]))
    y = net(x=x)["y"].detach().numpy()
    np.testing.assert_allclose(y, x.numpy() * np.array([1, -2, 3])[:, None, None] + np.array([0.5, 0, -1])[:, None, None])

    net = layer_net("Scale", "scale_param { axis: 1 num_axes: 2 }", {"x": (2, 3, 4, 5)}).double()
    assert net.params["l"][0].shape == (3, 4)
    net = layer_net("Scale", "scale_param { axis: 2 num_axes: -1 }", {"x": (2, 3, 4, 5)}).double()
    assert net.params["l"][0].shape == (4, 5)
    net = layer_net("Scale", "scale_param { num_axes: 0 filler { type: 'constant' value: 0.01 } }",
                    {"x": (2, 3, 4, 5)}).double()
    assert net.params["l"][0].shape == ()
    np.testing.assert_allclose(net(x=x)["y"].detach().numpy(), 0.01 * x.numpy())

    # gamma from a second bottom, broadcast from axis 0
    net = layer_net("Scale", "scale_param { axis: 0 bias_term: true }", {"x": (2, 3, 4, 5), "g": (2, 3)}).double()
    assert [p.shape for p in net.params["l"]] == [(2, 3)]  # only beta is a parameter
    g = rnd(2, 3, seed=5)
    np.testing.assert_allclose(net(x=x, g=g)["y"].detach().numpy(), x.numpy() * g.numpy()[:, :, None, None])


def test_concat():
    a, b = rnd(2, 3, 4, 5), rnd(2, 2, 4, 5, seed=1)
    net = layer_net("Concat", "", {"a": (2, 3, 4, 5), "b": (2, 2, 4, 5)}).double()
    np.testing.assert_array_equal(net(a=a, b=b)["y"].detach().numpy(), np.concatenate([a, b], 1))
    net = layer_net("Concat", "concat_param { axis: -1 }", {"a": (2, 3, 4, 5), "b": (2, 3, 4, 2)}).double()
    assert net(a=a, b=rnd(2, 3, 4, 2))["y"].shape == (2, 3, 4, 7)
    with pytest.raises(LayerError, match="every axis but 1"):
        layer_net("Concat", "", {"a": (2, 3, 4, 5), "b": (2, 3, 4, 6)})


# ------------------------------------------------------- conv / deconv / IP

def test_convolution_geometry_fields():
    x = rnd(1, 4, 11, 13)
    body = ("convolution_param { num_output: 6 group: 2 kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 1 "
            "stride_h: 2 stride_w: 3 dilation: 2 }")
    net = layer_net("Convolution", body, {"x": (1, 4, 11, 13)}).double()
    w, b = net.params["l"]
    assert w.shape == (6, 2, 3, 2) and b.shape == (6,)
    with torch.no_grad():
        w.copy_(rnd(6, 2, 3, 2, seed=4))
        b.copy_(rnd(6, seed=5))
    y = net(x=x)["y"]
    # out = floor((H + 2p - (d(k-1)+1)) / s) + 1
    assert y.shape == (1, 6, (11 + 4 - 5) // 2 + 1, (13 + 2 - 3) // 3 + 1)
    ref = torch.nn.functional.conv2d(x, w, b, (2, 3), (2, 1), (2, 2), 2)
    np.testing.assert_allclose(y.detach().numpy(), ref.detach().numpy(), rtol=1e-12)
    # repeated fields: one value per spatial axis
    net = layer_net("Convolution", "convolution_param { num_output: 2 kernel_size: 3 kernel_size: 1 "
                    "pad: 1 pad: 0 stride: 1 stride: 2 bias_term: false }", {"x": (1, 4, 11, 13)})
    assert [tuple(p.shape) for p in net.params["l"]] == [(2, 4, 3, 1)]
    assert net(x=rnd(1, 4, 11, 13, dtype=torch.float32))["y"].shape == (1, 2, 11, 7)
    with pytest.raises(LayerError, match="either kernel_size or kernel_h/kernel_w"):
        layer_net("Convolution", "convolution_param { num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3 }")
    with pytest.raises(LayerError, match="num_output"):
        layer_net("Convolution", "convolution_param { kernel_size: 3 }")
    with pytest.raises(LayerError, match="group"):
        layer_net("Convolution", "convolution_param { num_output: 4 kernel_size: 1 group: 2 }",
                  {"x": (1, 3, 5, 5)})


def test_deconvolution_shape_and_values():
    x = rnd(1, 4, 5, 6)
    body = "convolution_param { num_output: 6 group: 2 kernel_h: 4 kernel_w: 3 stride_h: 2 stride_w: 3 pad: 1 }"
    net = layer_net("Deconvolution", body, {"x": (1, 4, 5, 6)}).double()
    w, b = net.params["l"]
    assert w.shape == (4, 3, 4, 3) and b.shape == (6,)  # (Cin, Cout/group, kh, kw)
    with torch.no_grad():
        w.copy_(rnd(4, 3, 4, 3, seed=2))
        b.copy_(rnd(6, seed=3))
    y = net(x=x)["y"]
    assert y.shape == (1, 6, 2 * 4 + 4 - 2, 3 * 5 + 3 - 2)  # s(H-1) + d(k-1) + 1 - 2p
    ref = torch.nn.functional.conv_transpose2d(x, w, b, (2, 3), 1, groups=2)
    np.testing.assert_allclose(y.detach().numpy(), ref.detach().numpy(), rtol=1e-12)


def test_inner_product_axis_and_transpose():
    x = rnd(2, 3, 4, 5)
    net = layer_net("InnerProduct", "inner_product_param { num_output: 7 }", {"x": (2, 3, 4, 5)}).double()
    w, b = net.params["l"]
    assert w.shape == (7, 60) and b.shape == (7,)
    with torch.no_grad():
        w.copy_(rnd(7, 60, seed=1))
        b.copy_(rnd(7, seed=2))
    y = net(x=x)["y"].detach().numpy()
    np.testing.assert_allclose(y, x.numpy().reshape(2, 60) @ w.detach().numpy().T + b.detach().numpy(), rtol=1e-12)
    net = layer_net("InnerProduct", "inner_product_param { num_output: 7 axis: 2 transpose: true bias_term: false }",
                    {"x": (2, 3, 4, 5)}).double()
    (w,) = net.params["l"]
    assert w.shape == (20, 7)
    with torch.no_grad():
        w.copy_(rnd(20, 7, seed=3))
    y = net(x=x)["y"].detach().numpy()
    assert y.shape == (2, 3, 7)
    np.testing.assert_allclose(y, x.numpy().reshape(2, 3, 20) @ w.detach().numpy(), rtol=1e-12)
    with pytest.raises(LayerError, match="expect 60"):
        layer_net("InnerProduct", "inner_product_param { num_output: 7 }", {"x": (2, 3, 4, 5)})(
            x=rnd(2, 3, 4, 6, dtype=torch.float32))


# ------------------------------------------------------- ReLU, Dropout, Softmax

def test_relu_negative_slope_and_gradient_at_zero():
    x = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64).reshape(1, 1, 1, 3).requires_grad_(True)
    net = layer_net("ReLU", "relu_param { negative_slope: 0.1 }", {"x": (1, 1, 1, 3)}).double()
    y = net(x=x)["y"]
    np.testing.assert_allclose(y.detach().flatten().numpy(), [-0.2, 0.0, 3.0])
    y.sum().backward()
    # Caffe: gradient 1 where x > 0, negative_slope where x <= 0
    np.testing.assert_allclose(x.grad.flatten().numpy(), [0.1, 0.1, 1.0])
    x.grad = None
    net = layer_net("ReLU", "", {"x": (1, 1, 1, 3)}).double()
    net(x=x)["y"].sum().backward()
    np.testing.assert_allclose(x.grad.flatten().numpy(), [0.0, 0.0, 1.0])


def test_dropout_phases():
    x = torch.ones(4, 8, 32, 32, dtype=torch.float64)
    net = layer_net("Dropout", "dropout_param { dropout_ratio: 0.25 }", {"x": (4, 8, 32, 32)}).double()
    assert torch.equal(net(x=x)["y"], x)  # TEST: identity
    net = layer_net("Dropout", "dropout_param { dropout_ratio: 0.25 }", {"x": (4, 8, 32, 32)}, phase="TRAIN").double()
    torch.manual_seed(0)
    y = net(x=x)["y"].detach().numpy()
    vals = np.unique(y)
    np.testing.assert_allclose(vals, [0.0, 1 / 0.75])  # kept values scaled by 1/(1-r)
    assert abs((y != 0).mean() - 0.75) < 0.01
    net = layer_net("Dropout", "dropout_param { dropout_ratio: 0 }", {"x": (4, 8, 32, 32)}, phase="TRAIN").double()
    assert torch.equal(net(x=x)["y"], x)
    net = layer_net("Dropout", "dropout_param { dropout_ratio: 0.25 scale_train: false }", {"x": (4, 8, 32, 32)}).double()
    np.testing.assert_allclose(net(x=x)["y"].detach().numpy(), 0.75)


def test_softmax_axis():
    x = rnd(2, 3, 4, 5)
    for axis in (1, -1):
        net = layer_net("Softmax", f"softmax_param {{ axis: {axis} }}", {"x": (2, 3, 4, 5)}).double()
        e = np.exp(x.numpy() - x.numpy().max(axis, keepdims=True))
        np.testing.assert_allclose(net(x=x)["y"].detach().numpy(), e / e.sum(axis, keepdims=True), rtol=1e-12)


# ----------------------------------------------------------- SoftmaxWithLoss

def ref_softmax_loss(x, label, ignore, mode):
    """(loss, dloss/dx) of Caffe's SoftmaxWithLoss, in float64 numpy."""
    n, c = x.shape[:2]
    e = np.exp(x - x.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    lab = label.reshape(n, *x.shape[2:]).astype(np.int64)
    valid = np.ones_like(lab, bool) if ignore is None else lab != ignore
    safe = np.where(valid, lab, 0)
    picked = np.take_along_axis(p, safe[:, None], 1)[:, 0]
    total = -(np.log(np.maximum(picked, np.finfo(np.float32).tiny)) * valid).sum()
    inner = int(np.prod(x.shape[2:]))
    norm = {"FULL": n * inner, "VALID": valid.sum(), "BATCH_SIZE": n, "NONE": 1}[mode]
    norm = max(1.0, float(norm))
    g = p.copy()
    onehot = np.zeros_like(p)
    np.put_along_axis(onehot, safe[:, None], 1.0, 1)
    g = (g - onehot) * valid[:, None] / norm
    return total / norm, g


@pytest.mark.parametrize("spec,mode", [
    ("normalization: FULL", "FULL"), ("normalization: VALID", "VALID"),
    ("normalization: BATCH_SIZE", "BATCH_SIZE"), ("normalization: NONE", "NONE"),
    ("normalize: false", "BATCH_SIZE"), ("normalize: true", "VALID"), ("", "VALID"),
    ("normalize: false normalization: FULL", "FULL"),  # normalization wins over the legacy field
])
def test_softmax_with_loss_normalization(spec, mode):
    x = rnd(2, 5, 3, 4).requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    label = torch.randint(0, 5, (2, 1, 3, 4), generator=g).double()
    label[0, 0, 0, :] = 255
    net = layer_net("SoftmaxWithLoss", f"loss_param {{ ignore_label: 255 {spec} }}",
                    {"x": (2, 5, 3, 4), "label": (2, 1, 3, 4)}, tops=("loss",)).double()
    out = net(x=x, label=label)
    loss_ref, g_ref = ref_softmax_loss(x.detach().numpy(), label.numpy(), 255, mode)
    assert out["loss"].shape == ()
    np.testing.assert_allclose(out["loss"].item(), loss_ref, rtol=1e-12)
    assert net.loss is not None and net.loss.item() == out["loss"].item()  # loss_weight 1 by default
    net.loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), g_ref, rtol=1e-10, atol=1e-15)


def test_softmax_with_loss_weight_prob_top_and_label_errors():
    x = rnd(1, 3, 2, 2).requires_grad_(True)
    label = torch.tensor([[[[0.0, 1.9], [2.0, 1.0]]]], dtype=torch.float64)  # 1.9 truncates to 1, as Caffe's cast
    net = layer_net("SoftmaxWithLoss", "loss_weight: 2.5 loss_weight: 0", {"x": (1, 3, 2, 2), "label": (1, 1, 2, 2)},
                    tops=("loss", "prob")).double()
    out = net(x=x, label=label)
    loss_ref, g_ref = ref_softmax_loss(x.detach().numpy(), np.trunc(label.numpy()), None, "VALID")
    np.testing.assert_allclose(out["loss"].item(), loss_ref, rtol=1e-12)
    np.testing.assert_allclose(out["prob"].sum(1).detach().numpy(), 1.0)
    np.testing.assert_allclose(net.loss.item(), 2.5 * loss_ref, rtol=1e-12)
    net.loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2.5 * g_ref, rtol=1e-10)
    with pytest.raises(LayerError, match="outside \\[0, 3\\)"):
        net(x=x, label=torch.full((1, 1, 2, 2), 3.0, dtype=torch.float64))
    with pytest.raises(LayerError, match="need 4"):
        net(x=x, label=torch.zeros(1, 1, 2, 3, dtype=torch.float64))


def test_softmax_with_loss_float32_sum_is_sequential_like_caffe():
    """Caffe sums the per-pixel losses one by one in float32; the reported loss must match that."""
    x = rnd(1, 21, 100, 120, seed=7, dtype=torch.float32) * 4
    label = torch.randint(0, 21, (1, 1, 100, 120), generator=torch.Generator().manual_seed(3)).float()
    net = layer_net("SoftmaxWithLoss", "loss_param { normalize: false }",
                    {"x": (1, 21, 100, 120), "label": (1, 1, 100, 120)}, tops=("loss",))
    loss = net(x=x, label=label)["loss"].item()
    p = torch.softmax(x, 1).reshape(21, -1)
    nll = (-torch.log(p.gather(0, label.long().reshape(1, -1)))).numpy().ravel()
    seq = np.float32(0)
    for v in nll:  # Caffe's loop
        seq = np.float32(seq + v)
    assert abs(loss - float(seq)) <= 2e-7 * abs(float(seq))


# ------------------------------------------------------------------- others

def test_split_silence_flatten_reshape_accuracy():
    x = rnd(2, 3, 4, 5)
    net = layer_net("Split", "", {"x": (2, 3, 4, 5)}, tops=("y1", "y2")).double()
    out = net(x=x)
    assert torch.equal(out["y1"], x) and torch.equal(out["y2"], x)
    net = layer_net("Silence", "", {"x": (2, 3, 4, 5)}, tops=()).double()
    assert net.outputs == [] and net(x=x) == {}
    net = layer_net("Flatten", "flatten_param { axis: 1 end_axis: 2 }", {"x": (2, 3, 4, 5)}).double()
    assert net(x=x)["y"].shape == (2, 12, 5)
    net = layer_net("Reshape", "reshape_param { shape { dim: 0 dim: -1 dim: 10 } }", {"x": (2, 3, 4, 5)}).double()
    assert net(x=x)["y"].shape == (2, 6, 10)
    net = layer_net("Reshape", "reshape_param { shape { dim: 2 dim: 2 } axis: 2 num_axes: 1 }",
                    {"x": (2, 3, 4, 5)}).double()
    assert net(x=x)["y"].shape == (2, 3, 2, 2, 5)

    scores = torch.tensor([[[[0.1]], [[0.7]], [[0.2]]], [[[0.5]], [[0.1]], [[0.4]]]], dtype=torch.float64)
    label = torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1).double()
    net = layer_net("Accuracy", "", {"s": (2, 3, 1, 1), "label": (2, 1, 1, 1)}, tops=("acc", "per_class")).double()
    out = net(s=scores, label=label)
    assert out["acc"].item() == 0.5
    np.testing.assert_allclose(out["per_class"].numpy(), [0.0, 1.0, 0.0])
    net = layer_net("Accuracy", "accuracy_param { top_k: 2 }", {"s": (2, 3, 1, 1), "label": (2, 1, 1, 1)},
                    tops=("acc",)).double()
    assert net(s=scores, label=label)["acc"].item() == 1.0
