"""fcn_repro.ops against real Caffe (the fixtures written by BVLC Caffe).

* The layer zoo's Deconvolution layers (deconv_g: group 4, pad 1, stride 2;
  deconv_full: no bias, k5 s3; deconv_dil: rectangular kernel/stride/pad,
  dilation 2, bias): top blobs; gradients for the top diffs Caffe was given
  (zoo.npz topdiff/<blob>) against autograd, and against Caffe's pgrad/ when
  the fixture has them (the current zoo.npz holds zeros: no loss, no
  force_backward, so Caffe skipped the backward; Caffe's gradients through
  deconv2d_crop and crop_sum are checked end to end by test_conformance's
  train-fixture test, which runs the fused net).
* The FCN fixture nets: every Deconvolution (upscore*), every Crop (alone and
  fused into deconv2d_crop) and every Eltwise SUM of a Crop (fused crop_sum),
  each from Caffe's own bottoms; then the whole skip head chained through our
  ops only, against Caffe's output.

Layer geometry is read from the prototxt, weights from the caffemodel.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fcn_repro.ops as ops
from conftest import caffe_fixture
from fcn_repro.caffe import load_weights, parse_prototxt
from fcn_repro.ops import _ext

pytestmark = pytest.mark.skipif(not _ext.AVAILABLE, reason=f"extension not built: {_ext.LOAD_ERROR}")

REL_TOL = 2e-6  # Caffe computes in float32 (GEMM + col2im); max |ours - caffe| / max |caffe|


def pair_param(p, name, default):
    """A Caffe ConvolutionParameter pair: <name>_h/<name>_w, else the repeated <name> (one value = both)."""
    short = {"kernel_size": "kernel"}.get(name, name)
    h, w = p.get(short + "_h", None), p.get(short + "_w", None)
    if h is not None or w is not None:
        return int(h), int(w)
    vals = [int(v) for v in p.getall(name)]
    if not vals:
        return default, default
    return (vals[0], vals[0]) if len(vals) == 1 else (vals[0], vals[1])


def deconv_args(layer):
    p = layer.sub("convolution_param")
    return dict(stride=pair_param(p, "stride", 1), pad=pair_param(p, "pad", 0),
                dilation=pair_param(p, "dilation", 1), groups=int(p.get("group", 1)))


def crop_offsets(layer):
    p = layer.sub("crop_param")
    assert int(p.get("axis", 2)) == 2, f"layer {layer.get('name')}: only axis 2 crops are fused"
    offs = [int(v) for v in p.getall("offset")] or [0]
    return (offs[0], offs[0]) if len(offs) == 1 else (offs[0], offs[1])


def rel_err(ours: torch.Tensor, caffe: np.ndarray) -> float:
    ref = torch.from_numpy(np.asarray(caffe)).double()
    assert tuple(ours.shape) == tuple(ref.shape), f"shape {tuple(ours.shape)} != Caffe's {tuple(ref.shape)}"
    return float((ours.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


# ---- layer zoo -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["deconv_g", "deconv_full", "deconv_dil"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zoo_deconvolution_against_caffe(name, dtype):
    net = parse_prototxt(caffe_fixture("zoo.prototxt"))
    z = np.load(caffe_fixture("zoo.npz"))
    weights = load_weights(caffe_fixture("zoo.caffemodel"))
    layer = next(l for l in net.getall("layer") if l.get("name") == name)
    assert layer.get("type") == "Deconvolution"
    (bottom,), (top,) = layer.getall("bottom"), layer.getall("top")
    blobs = [t(b).to(dtype).requires_grad_(True) for b in weights[name]]
    for i, b in enumerate(blobs):  # the caffemodel and the npz dump hold the same parameters
        assert np.array_equal(b.detach().float().numpy(), z[f"param/{name}/{i}"]), f"{name} blob {i}"
    args = deconv_args(layer)
    x = t(z[f"fwd/{bottom}"]).to(dtype).requires_grad_(True)
    bias = blobs[1] if len(blobs) > 1 else None
    y = ops.deconv2d(x, blobs[0], bias, **args)
    err = rel_err(y.detach(), z[f"fwd/{top}"])
    assert err < REL_TOL, f"zoo {name}: top {top} differs from Caffe by {err:.2e} (relative)"
    # Gradients for the top diff Caffe was given, against autograd through the
    # reference (Caffe's own gradients: test_zoo_deconvolution_gradients_against_caffe).
    gy = t(z[f"topdiff/{top}"]).to(dtype)
    y.backward(gy)
    leaves = [v.detach().clone().requires_grad_(True) for v in [x] + blobs]
    ops.deconv2d_ref(leaves[0], leaves[1], leaves[2] if bias is not None else None, **args).backward(gy)
    for what, ours, ref in zip(("bottom", "weight", "bias"), [x] + blobs, leaves):
        # float32: sums of hundreds of terms in different orders (ours vs oneDNN)
        scale = float(ref.grad.abs().max())
        tol = dict(rtol=1e-4, atol=1e-5 * scale) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12 * scale)
        torch.testing.assert_close(ours.grad, ref.grad, **tol, msg=lambda m: f"zoo {name} grad {what}: {m}")


@pytest.mark.parametrize("name", ["deconv_g", "deconv_full", "deconv_dil"])
def test_zoo_deconvolution_gradients_against_caffe(name):
    z = np.load(caffe_fixture("zoo.npz"))
    keys = [k for k in z.files if k.startswith(f"pgrad/{name}/")]
    assert keys, f"zoo.npz has no pgrad/{name}/*"
    if not any(np.any(z[k]) for k in keys):
        pytest.skip("zoo.npz holds all-zero parameter gradients (the zoo net has no loss layer and no "
                    "force_backward, so Caffe's Net::Backward skipped every layer); Caffe's gradients "
                    "through these ops are checked by the FCN train fixtures (test_conformance)")
    net = parse_prototxt(caffe_fixture("zoo.prototxt"))
    layer = next(l for l in net.getall("layer") if l.get("name") == name)
    (bottom,), (top,) = layer.getall("bottom"), layer.getall("top")
    blobs = [t(z[f"param/{name}/{i}"]).requires_grad_(True) for i in range(len(keys))]
    y = ops.deconv2d(t(z[f"fwd/{bottom}"]), blobs[0], blobs[1] if len(blobs) > 1 else None, **deconv_args(layer))
    y.backward(t(z[f"topdiff/{top}"]))
    for i, b in enumerate(blobs):
        err = rel_err(b.grad, z[f"pgrad/{name}/{i}"])
        assert err < 1e-5, f"zoo {name}: gradient of blob {i} differs from Caffe by {err:.2e}"


# ---- FCN nets ------------------------------------------------------------------------

NETS = ["fcn8s", "fcn16s", "fcn8s-atonce", "fcn32s", "fcn-alexnet", "pascalcontext-fcn8s", "siftflow-fcn8s",
        "nyud-fcn32s-color-hha"]


def load_net(net_name):
    net = parse_prototxt(caffe_fixture(f"{net_name}.prototxt"))
    io = np.load(caffe_fixture(f"{net_name}.io.npz"))
    weights = load_weights(caffe_fixture(f"{net_name}.caffemodel"))
    return net.getall("layer"), io, weights


@pytest.mark.parametrize("net_name", NETS)
def test_fcn_skip_layers_against_caffe(net_name):
    layers, io, weights = load_net(net_name)
    blob = lambda name: t(io[f"s0/{name}"])  # noqa: E731  Caffe's blob after the s0 forward
    by_top = {l.getall("top")[0]: l for l in layers if l.getall("top")}
    checked = {"Deconvolution": 0, "Crop": 0, "Eltwise": 0}
    for layer in layers:
        kind, name = layer.get("type"), layer.get("name")
        bottoms, tops = layer.getall("bottom"), layer.getall("top")
        if kind == "Deconvolution":
            w = [t(b) for b in weights[name]]
            y = ops.deconv2d(blob(bottoms[0]), w[0], w[1] if len(w) > 1 else None, **deconv_args(layer))
            err = rel_err(y, io[f"s0/{tops[0]}"])
            assert err < REL_TOL, f"{net_name} layer {name}: top {tops[0]} differs from Caffe by {err:.2e}"
            checked[kind] += 1
        elif kind == "Crop":
            offs = crop_offsets(layer)
            src, ref = blob(bottoms[0]), io[f"s0/{bottoms[1]}"]
            # the crop alone, through crop_sum with a zero first bottom: exact
            zeros = torch.zeros(src.shape[0], src.shape[1], ref.shape[2], ref.shape[3])
            assert torch.equal(ops.crop_sum(zeros, src, offs), blob(tops[0])), f"{net_name} layer {name}"
            producer = by_top.get(bottoms[0])
            if producer is not None and producer.get("type") == "Deconvolution":
                # Deconvolution -> Crop fused: only the kept window is computed
                w = [t(b) for b in weights[producer.get("name")]]
                y = ops.deconv2d_crop(blob(producer.getall("bottom")[0]), w[0], w[1] if len(w) > 1 else None,
                                      offsets=offs, out_size=ref.shape[2:], **deconv_args(producer))
                err = rel_err(y, io[f"s0/{tops[0]}"])
                assert err < REL_TOL, f"{net_name}: {producer.get('name')} + {name} fused differs by {err:.2e}"
            checked[kind] += 1
        elif kind == "Eltwise" and any(by_top.get(b) is not None and by_top[b].get("type") == "Crop"
                                       for b in bottoms):
            p = layer.sub("eltwise_param")
            assert str(p.get("operation", "SUM")) == "SUM"
            coeffs = [float(c) for c in p.getall("coeff")] or [1.0] * len(bottoms)
            assert len(bottoms) == 2, f"{net_name} layer {name}: fused crop+sum takes two bottoms"
            ci = 0 if by_top.get(bottoms[0]) is not None and by_top[bottoms[0]].get("type") == "Crop" else 1
            crop = by_top[bottoms[ci]]
            other = bottoms[1 - ci]
            y = ops.crop_sum(blob(other), blob(crop.getall("bottom")[0]), crop_offsets(crop),
                             (coeffs[1 - ci], coeffs[ci]))
            err = rel_err(y, io[f"s0/{tops[0]}"])
            assert err < 1e-6, f"{net_name} layer {name}: top {tops[0]} differs from Caffe by {err:.2e}"
            checked[kind] += 1
    assert checked["Deconvolution"] >= 1 and checked["Crop"] >= 1, f"{net_name}: nothing checked {checked}"


@pytest.mark.parametrize("net_name", ["fcn8s", "fcn16s", "fcn8s-atonce"])
def test_fcn_skip_head_chained_through_ops(net_name):
    """From Caffe's score layers to the net's output with our ops only (fused as the builder fuses)."""
    layers, io, weights = load_net(net_name)
    by_top = {l.getall("top")[0]: l for l in layers if l.getall("top")}
    consumers = {}
    for l in layers:
        for b in l.getall("bottom"):
            consumers.setdefault(b, []).append(l)
    ours: dict[str, torch.Tensor] = {}

    def get(name):
        return ours[name] if name in ours else t(io[f"s0/{name}"])

    for layer in layers:
        kind, name = layer.get("type"), layer.get("name")
        bottoms, tops = layer.getall("bottom"), layer.getall("top")
        if kind == "Deconvolution":
            w = [t(b) for b in weights[name]]
            nxt = consumers.get(tops[0], [])
            if len(nxt) == 1 and nxt[0].get("type") == "Crop" and nxt[0].getall("bottom")[0] == tops[0]:
                crop = nxt[0]
                ref = io[f"s0/{crop.getall('bottom')[1]}"]
                ours[crop.getall("top")[0]] = ops.deconv2d_crop(
                    get(bottoms[0]), w[0], w[1] if len(w) > 1 else None, offsets=crop_offsets(crop),
                    out_size=ref.shape[2:], **deconv_args(layer))
            else:
                ours[tops[0]] = ops.deconv2d(get(bottoms[0]), w[0], w[1] if len(w) > 1 else None,
                                             **deconv_args(layer))
        elif kind == "Eltwise" and by_top.get(bottoms[1]) is not None and by_top[bottoms[1]].get("type") == "Crop":
            crop = by_top[bottoms[1]]
            ours[tops[0]] = ops.crop_sum(get(bottoms[0]), get(crop.getall("bottom")[0]), crop_offsets(crop))
    out = "score"
    assert out in ours, f"{net_name}: the chain did not reach {out}"
    err = rel_err(ours[out], io[f"s0/{out}"])
    assert err < 1e-5, f"{net_name}: output {out} through our ops differs from Caffe by {err:.2e}"
